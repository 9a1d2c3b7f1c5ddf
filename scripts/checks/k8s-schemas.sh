#!/usr/bin/env bash
# Manifests the project ships validate against the Kubernetes schemas, offline.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib-venv.sh
pip_need kubernetes-validate
"$VENV/bin/kubernetes-validate" --strict helm/dcdn/crds/*.yaml
