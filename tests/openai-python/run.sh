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

# shellcheck source=../flotilla-up.sh
. "$here/../flotilla-up.sh"
start_up "$flotilla" "$repo/simulations/scenarios/e2e/governance.toml" --governance

echo "== test_governance.py"
"$venv/bin/python" "$here/test_governance.py" "$flotilla" "$work/state"
