#!/usr/bin/env bash
# The NVML checks that need an NVIDIA GPU, in one command: the ignored NVML tests
# (conformance suite included) and a listing of the devices as the agent sees them.
# Usage: crates/flotilla-agent/scripts/nvml-check.sh   (from anywhere in the repo)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target-agent}"

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L
else
    echo "nvidia-smi not found; trying NVML anyway" >&2
fi

echo "== ignored NVML tests"
cargo test -q -p flotilla-agent --test agent -- --ignored --nocapture nvml

echo "== devices as the agent sees them"
cargo run -q -p flotilla-agent --example gpus
