#!/usr/bin/env bash
# MCP routing end to end with the official MCP Python SDK (issue #17): starts
# `flotilla up --governance` (two clusters; an MCP server with two replicas in one
# of them), then runs test_mcp.py against its gateways and `flotilla ctl`.
#
#   tests/mcp-python/run.sh [PATH/TO/flotilla]
#
# The virtual environment (pinned packages from PyPI) is made once under
# $CARGO_TARGET_DIR and reused; the federation lives in a temporary directory.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
flotilla="${1:-$target_dir/debug/flotilla}"
venv="$target_dir/mcp-python-venv"

# Pinned, with every dependency, so that a new release cannot change the test.
requirements=(
    mcp==2.3.0
    mcp-types==2.3.0
    annotated-types==0.8.0
    anyio==4.16.0
    attrs==26.1.0
    cffi==2.1.1
    click==8.5.1
    cryptography==51.0.1
    h11==0.16.0
    httpcore2==2.17.0
    httpx2==2.17.0
    idna==3.21
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    opentelemetry-api==1.45.3
    pycparser==3.12
    pydantic==2.14.4
    pydantic_core==2.50.5
    pyjwt==2.15.1
    python-multipart==0.0.34
    referencing==0.37.0
    rpds-py==2026.9.1
    sse-starlette==3.7.1
    starlette==1.10.0
    truststore==0.10.5
    typing-inspection==0.4.5
    typing_extensions==4.16.0
    uvicorn==0.55.0
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
start_up "$flotilla" "$repo/simulations/scenarios/e2e/mcp.toml" --governance

echo "== test_mcp.py"
"$venv/bin/python" "$here/test_mcp.py" "$flotilla" "$work/state"
