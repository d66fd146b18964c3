#!/usr/bin/env bash
# Checks deploy/kubernetes.yaml offline: every object against the
# Kubernetes OpenAPI schemas (kubernetes-validate --strict, which also
# rejects unknown fields) for the newest and the oldest version the
# manifests are meant for, and the YAML itself (yamllint). Needs no
# cluster. Installs its tools, pinned, into target/deploy-check/venv.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-check/venv
want="kubernetes-validate==1.37.0 yamllint==1.38.0"
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $want
  echo "$want" > "$venv/.installed"
fi

for k8s in 1.37.0 1.30.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s" deploy/kubernetes.yaml
  echo "kubernetes-validate --strict -k $k8s: deploy/kubernetes.yaml passed"
done
"$venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 100}}}' \
  deploy/kubernetes.yaml
echo "yamllint --strict: deploy/kubernetes.yaml passed"
