#!/usr/bin/env bash
# The whole test suite: format, lints, the clients against a sandbox gateway,
# then every Rust test. Installs what it needs itself; CI (.ci/run) runs
# exactly this. cargo test runs last so its summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== redis-server (the fleet tests start their own, on free loopback ports)"
if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null || true
  fi
  command -v redis-server >/dev/null || {
    echo "redis-server is not on PATH: install it (apt-get install redis-server, brew install redis) and run again" >&2
    exit 1
  }
fi
redis-server --version

echo "== nginx (tests/api/proxy.rs starts its own, grpc_pass on a free loopback port)"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) >/dev/null || true
  fi
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || {
    echo "nginx is not installed: install it (apt-get install nginx-light, brew install nginx) and run again" >&2
    exit 1
  }
fi
PATH="$PATH:/usr/sbin" nginx -v

echo "== promtool (tests/clients/run.py checks a live scrape with it; docs/alerts.yml below)"
if ! command -v promtool >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    # Debian's prometheus package carries promtool; its server is not started.
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null || true
  fi
fi
if command -v promtool >/dev/null; then
  promtool --version | head -1
  promtool check rules docs/alerts.yml
else
  # tests/clients/run.py falls back on prometheus_client's parser.
  echo "promtool not installed: docs/alerts.yml unchecked, scrapes checked with prometheus_client's parser" >&2
fi

echo "== deploy/kubernetes.yaml (kubernetes-validate --strict, yamllint; seconds)"
bash deploy/check.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== module graph (no room depends back on a room that depends on it)"
python3 scripts/module_cycles.py src

echo "== lean build (no simulator: cargo build --no-default-features)"
cargo build --locked --no-default-features
cargo clippy --locked --no-default-features -- -D warnings

echo "== clients (grpcurl, Python, Node, examples, command line, buf lint)"
bash scripts/clients-setup.sh
cargo build --locked --bin hailuo-gateway --examples
timeout 600 target/clients/venv/bin/python tests/clients/run.py

echo "== loadgen smoke"; cargo test --locked --bench loadgen -- smoke  # benchmark tool, seconds (issue 7)

echo "== cargo test"
# Not --all-targets: the examples (built above, linted by clippy) have no
# tests, and their empty "0 passed" summary would close the suite.
cargo test --locked --lib --bins --tests
