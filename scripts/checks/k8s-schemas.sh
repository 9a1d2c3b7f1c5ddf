#!/usr/bin/env bash
# Manifests the project ships, and what `dcdn-operator render` makes of every
# example, validate against the Kubernetes schemas, offline.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib-venv.sh
pip_need kubernetes-validate
"$VENV/bin/kubernetes-validate" --strict helm/dcdn/crds/*.yaml
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build -q --locked -p dcdn-operator
for example in deploy/examples/*.yaml; do
  rendered="$out/$(basename "$example")"
  "${CARGO_TARGET_DIR:-target}/debug/dcdn-operator" render -f "$example" >"$rendered"
  "$VENV/bin/kubernetes-validate" --strict "$rendered"
done
