#!/usr/bin/env bash
# Installs what the client tests and examples need, each part only when its
# inputs changed (a stamp file named after their hash):
#   target/clients/venv     Python venv from tests/clients/requirements.txt
#                           (grpcio, grpcio-status, grpcio-tools, grpcurl 1.8.6)
#   target/clients/python   Python stubs generated from proto/ by grpcio-tools
#   node_modules/           `npm ci` from package-lock.json (grpc-js,
#                           proto-loader, protobufjs, buf)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/clients
mkdir -p "$out"
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

requirements=tests/clients/requirements.txt
venv_stamp="$out/venv/.installed-$(hash_of "$requirements")"
if [ ! -f "$venv_stamp" ]; then
  echo "clients-setup: creating $out/venv"
  rm -rf "$out/venv"
  python3 -m venv "$out/venv"
  timeout 600 "$out/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input -r "$requirements"
  touch "$venv_stamp"
fi

mapfile -t protos < <(find proto -name '*.proto' | sort)
stubs_stamp="$out/python/.generated-$(hash_of "$requirements" "${protos[@]}")"
if [ ! -f "$stubs_stamp" ]; then
  echo "clients-setup: generating Python stubs in $out/python"
  rm -rf "$out/python"
  mkdir -p "$out/python"
  "$out/venv/bin/python" -m grpc_tools.protoc -Iproto \
    --python_out="$out/python" --pyi_out="$out/python" --grpc_python_out="$out/python" \
    "${protos[@]}"
  touch "$stubs_stamp"
fi

node_stamp="node_modules/.installed-$(hash_of package-lock.json)"
if [ ! -f "$node_stamp" ]; then
  echo "clients-setup: npm ci"
  # No install scripts: buf's binary comes as an optional dependency and
  # nothing else needs one.
  timeout 600 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  touch "$node_stamp"
fi
