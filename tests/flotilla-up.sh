# Sourced by the end-to-end runners that test against `flotilla up` (tests/*/run.sh):
# starts it in the background, waits until it is ready, and stops it (showing its
# logs when the runner failed) when the runner exits.
#
#   start_up FLOTILLA SCENARIO [UP_ARGS…]
#
# Sets $work (a temporary directory; the federation's state is $work/state) and
# installs an EXIT trap.

up_pid=""
work=""

stop_up() {
    local rc=$?
    if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
        # Tests thaw what they froze; this is for a test that died mid-way.
        pkill -CONT -f "$work/state" 2>/dev/null || true
        kill "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -n "$work" ]]; then
        echo "== flotilla up (last 30 lines)" >&2
        tail -n 30 "$work/up.log" >&2 || true
        for log in "$work"/state/logs/*gateway.log; do
            [[ -f "$log" ]] || continue
            echo "== $log (last 10 lines)" >&2
            tail -n 10 "$log" >&2 || true
        done
    fi
    [[ -n "$work" ]] && rm -rf "$work"
    exit $rc
}

start_up() {
    local flotilla="$1" scenario="$2"
    shift 2
    work="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-e2e.XXXXXX")"
    trap stop_up EXIT
    echo "== flotilla up $*"
    "$flotilla" up "$@" --headless --speed 1 --rate 2 --duration 600s \
        --scenario "$scenario" --state-dir "$work/state" >"$work/up.log" 2>&1 &
    up_pid=$!
    local deadline=$((SECONDS + 180))
    until grep -q '^ready\.' "$work/up.log" 2>/dev/null; do
        if ! kill -0 "$up_pid" 2>/dev/null; then
            echo "flotilla up exited before it was ready" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "flotilla up was not ready within 180 s" >&2
            exit 1
        fi
        sleep 0.5
    done
}
