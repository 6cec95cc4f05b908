#!/usr/bin/env bash
# Flotilla's gRPC API from a Python client that grpcio-tools generates from proto/
# (issue #4): starts a one-server federation over mTLS and runs test_api.py against it.
#
#   tests/grpc-python/run.sh [PATH/TO/flotilla]
#
# The virtual environment (pinned grpcio packages from PyPI) is made once under
# $CARGO_TARGET_DIR and reused; everything else lives in a temporary directory.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
flotilla="${1:-$target_dir/debug/flotilla}"
venv="$target_dir/grpc-python-venv"

# Pinned; all have manylinux wheels for CPython 3.9–3.13 on x86_64 and aarch64.
requirements=(
    grpcio==1.71.0
    grpcio-tools==1.71.0
    grpcio-health-checking==1.71.0
    grpcio-reflection==1.71.0
    grpcio-status==1.71.0
    googleapis-common-protos==1.66.0
    protobuf==5.29.3
)

if [[ ! -x "$flotilla" ]]; then
    echo "run.sh: no flotilla binary at $flotilla (cargo build -p flotilla, or pass its path)" >&2
    exit 2
fi

# shellcheck source=../python-venv.sh
. "$here/../python-venv.sh"
python_venv "$venv" -- "${requirements[@]}"
py="$venv/bin/python"

work="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-grpc-python.XXXXXX")"
server_pid=""
cleanup() {
    local rc=$?
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -f "$work/server.log" ]]; then
        echo "== server log (last 30 lines)" >&2
        tail -n 30 "$work/server.log" >&2 || true
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- stubs from proto/ -----------------------------------------------------------------
echo "== generating Python stubs from proto/"
mkdir -p "$work/stubs"
mapfile -t protos < <(cd "$repo/proto" && find flotilla -name '*.proto' | sort)
(cd "$repo/proto" && "$py" -m grpc_tools.protoc -I. \
    --python_out="$work/stubs" --grpc_python_out="$work/stubs" "${protos[@]}")

# --- a one-server federation over mTLS ----------------------------------------------
echo "== flotilla federation init"
"$flotilla" federation init --federation pytest --cluster c1 \
    --data-dir "$work/data" --config-dir "$work/cfg" >"$work/init.log"

foreign=()
if command -v openssl >/dev/null 2>&1; then
    # A client identity from a CA the federation does not trust.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=foreign-ca -keyout "$work/foreign-ca-key.pem" -out "$work/foreign-ca.pem" \
        2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=admin -keyout "$work/foreign-key.pem" -out "$work/foreign.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://pytest/cluster/admin/admin\nextendedKeyUsage=clientAuth\n' \
        >"$work/foreign.ext"
    openssl x509 -req -in "$work/foreign.csr" -CA "$work/foreign-ca.pem" \
        -CAkey "$work/foreign-ca-key.pem" -CAcreateserial -days 1 \
        -extfile "$work/foreign.ext" -out "$work/foreign.pem" 2>/dev/null
    foreign=(--foreign-cert "$work/foreign.pem" --foreign-key "$work/foreign-key.pem")
fi

port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
echo "== flotilla server --init on $addr"
"$flotilla" server --init --data-dir "$work/data" --listen "$addr" >"$work/server.log" 2>&1 &
server_pid=$!

deadline=$((SECONDS + 30))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run.sh: the server exited before answering" >&2
        exit 1
    fi
    if ((SECONDS > deadline)); then
        echo "run.sh: the server did not answer on $addr within 30 s" >&2
        exit 1
    fi
    sleep 0.1
done

echo "== test_api.py"
# gRPC C-core logs the refused handshakes the test provokes; GRPC_VERBOSITY=INFO shows them.
export GRPC_VERBOSITY="${GRPC_VERBOSITY:-NONE}"
"$py" "$here/test_api.py" --target "$addr" --stubs "$work/stubs" \
    --ca "$work/cfg/ca.pem" --cert "$work/cfg/admin.pem" --key "$work/cfg/admin-key.pem" \
    --federation pytest "${foreign[@]}"
