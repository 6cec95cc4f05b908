#!/usr/bin/env bash
# Governance end to end with the official OpenAI Python SDK (issue #17): starts
# `flotilla up --governance` (three clusters, two models), then runs
# test_governance.py against its gateways and `flotilla ctl`.
#
#   tests/openai-python/run.sh [PATH/TO/flotilla]
#
# The virtual environment (pinned packages from PyPI) is made once under
# $CARGO_TARGET_DIR and reused; the federation lives in a temporary directory.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
flotilla="${1:-$target_dir/debug/flotilla}"
venv="$target_dir/openai-python-venv"

# Pinned, with every dependency, so that a new release cannot change the test.
requirements=(
    openai==3.63.0
    annotated-types==0.8.0
    anyio==4.16.0
    h11==0.16.0
    httpcore2==2.17.0
    httpx2==2.17.0
    idna==3.21
    jiter==0.19.0
    pydantic==2.14.4
    pydantic_core==2.50.5
    sniffio==1.3.1
    truststore==0.10.5
    typing-inspection==0.4.5
    typing_extensions==4.16.0
)

if [[ ! -x "$flotilla" ]]; then
    echo "run.sh: no flotilla binary at $flotilla (cargo build -p flotilla, or pass its path)" >&2
    exit 2
fi

# shellcheck source=../python-venv.sh
. "$here/../python-venv.sh"
python_venv "$venv" --no-deps -- "${requirements[@]}"

work="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-openai-python.XXXXXX")"
up_pid=""
cleanup() {
    local rc=$?
    if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
        # The test thaws what it froze; this is for a test that died mid-way.
        pkill -CONT -f "$work/state" 2>/dev/null || true
        kill "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 ]]; then
        echo "== flotilla up (last 30 lines)" >&2
        tail -n 30 "$work/up.log" >&2 || true
        for log in "$work"/state/logs/*gateway.log; do
            [[ -f "$log" ]] || continue
            echo "== $log (last 10 lines)" >&2
            tail -n 10 "$log" >&2 || true
        done
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT

echo "== flotilla up --governance"
"$flotilla" up --governance --headless --speed 1 --rate 2 --duration 600s \
    --scenario "$repo/simulations/scenarios/e2e/governance.toml" \
    --state-dir "$work/state" >"$work/up.log" 2>&1 &
up_pid=$!
deadline=$((SECONDS + 180))
until grep -q '^ready\.' "$work/up.log" 2>/dev/null; do
    if ! kill -0 "$up_pid" 2>/dev/null; then
        echo "run.sh: flotilla up exited before it was ready" >&2
        exit 1
    fi
    if ((SECONDS > deadline)); then
        echo "run.sh: flotilla up was not ready within 180 s" >&2
        exit 1
    fi
    sleep 0.5
done

echo "== test_governance.py"
"$venv/bin/python" "$here/test_governance.py" "$flotilla" "$work/state"
