#!/usr/bin/env bash
# Fuzzes everything Flotilla parses from outside (fuzz/fuzz_targets/), each target for
# a bounded time, starting from the corpus kept outside the clone (so that each run
# goes further than the last). A crash fails the script and leaves the input that
# caused it under fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                   # every target, 15 s each (what CI runs)
#   FUZZ_SECONDS=300 fuzz/run.sh snapshot csr
#
# cargo-fuzz (crates.io) is installed when missing. A nightly toolchain is used when
# rustup has one; otherwise the stable compiler is allowed its unstable flags
# (RUSTC_BOOTSTRAP=1), which libFuzzer's instrumentation needs.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-15}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}/fuzz"
corpora="${FLOTILLA_FUZZ_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/fuzz-corpus}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi
# One build of every target, then the runs.
cargo "${toolchain[@]}" fuzz build --release --debug-assertions
logs="$CARGO_TARGET_DIR/logs"
mkdir -p "$logs"
for target in "${targets[@]}"; do
    corpus="$corpora/$target"
    mkdir -p "$corpus"
    # Seeds: files of the project that a target reads for real.
    case "$target" in
    scenario) seeds=(../simulations/scenarios/*.toml) ;;
    workload_file) seeds=(../deploy/examples/*.yaml) ;;
    federation_file) seeds=(../deploy/examples/*federation*.toml) ;;
    *) seeds=(seeds/"$target"/*) ;;
    esac
    for seed in "${seeds[@]}"; do
        [[ -f "$seed" ]] && cp -n "$seed" "$corpus/" 2>/dev/null || true
    done
    echo "== fuzzing $target for ${seconds} s (corpus: $corpus)" >&2
    if ! cargo "${toolchain[@]}" fuzz run --release --debug-assertions "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1; then
        tail -40 "$logs/$target.log" >&2
        echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$logs/$target.log" >&2 || true
done
