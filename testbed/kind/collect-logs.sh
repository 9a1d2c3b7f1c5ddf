#!/usr/bin/env bash
# Gathers what a bug report needs from the kind testbed into
# target/kind-logs/<time>/: kind's node logs, every object of the release
# and the DcdnCluster, events, each pod's logs (and the previous container's),
# each DCDN pod's /metrics, and the Helm release.
#
#   testbed/kind/collect-logs.sh [DIR]
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need kind kubectl
dir="${1:-$ROOT/target/kind-logs/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$dir/pods" "$dir/metrics"

say "kind export logs"
kind export logs --name "$KIND_CLUSTER" "$dir/kind" >/dev/null 2>&1 || echo "kind export logs failed" >&2

say "objects and events in $NS"
k get dcdn,all,configmaps,pdb,networkpolicies,leases,events -o wide >"$dir/overview.txt" 2>&1
k get dcdn -o yaml >"$dir/dcdnclusters.yaml" 2>&1
k describe dcdn >"$dir/dcdnclusters.describe.txt" 2>&1
k get statefulsets,deployments,services,pdb -o yaml >"$dir/workloads.yaml" 2>&1
k get events --sort-by=.lastTimestamp >"$dir/events.txt" 2>&1
kubectl --context "$CONTEXT" get nodes -o wide --show-labels >"$dir/nodes.txt" 2>&1

say "pod logs"
for pod in $(k get pods -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'); do
  k logs "$pod" --all-containers >"$dir/pods/$pod.log" 2>&1
  k logs "$pod" --all-containers --previous >"$dir/pods/$pod.previous.log" 2>/dev/null ||
    rm -f "$dir/pods/$pod.previous.log"
  k get pod "$pod" -o yaml >"$dir/pods/$pod.yaml" 2>&1
done

say "node metrics"
for tier in origin relay edge; do
  for pod in $(pods_of "$tier"); do
    fetch_pod "$pod" 9090 /metrics "$dir/metrics/$pod.txt" 2>/dev/null || echo "unreachable" >"$dir/metrics/$pod.txt"
  done
done

say "helm release"
if command -v helm >/dev/null; then
  helm --kube-context "$CONTEXT" status "$RELEASE" -n "$NS" >"$dir/helm-status.txt" 2>&1
  helm --kube-context "$CONTEXT" get values "$RELEASE" -n "$NS" --all >"$dir/helm-values.yaml" 2>&1
fi
echo "logs in $dir"
