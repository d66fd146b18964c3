#!/usr/bin/env bash
# The whole test suite: format, lints, then every test. Installs what it
# needs itself; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== loadgen smoke"; cargo test --locked --bench loadgen -- smoke  # benchmark tool, seconds (issue 7)

echo "== cargo test"
cargo test --locked --all-targets
