#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60), one after
# the other, and prints each run's figures. Not part of CI: see
# docs/FUZZING.md.
#
#   scripts/fuzz.sh [seconds] [target...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes -Z flags (sanitizer, coverage instrumentation) to rustc;
# this lets the stable toolchain accept them, so no nightly is needed.
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build
mkdir -p logs
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    # The first directory is the working corpus (grows, gitignored); the
    # second holds the committed seeds.
    if ! cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"logs/$target.log" 2>&1; then
        echo "!! $target failed: see fuzz/logs/$target.log and fuzz/artifacts/$target/"
        grep -E "panicked|ERROR|SUMMARY" "logs/$target.log" | head -5 || true
        exit 1
    fi
    grep -E "^#[0-9]+.*DONE" "logs/$target.log" | tail -1
    grep -E "stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" \
        "logs/$target.log"
done
