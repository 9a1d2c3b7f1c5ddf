#!/usr/bin/env bash
# Brings up the kind testbed: a kind cluster (kind-config.yaml), the DCDN
# images built here and loaded into it (no registry), the chart installed
# with --wait, deploy/examples/kind.yaml applied, and waits until the
# DcdnCluster is Ready. Re-running it reuses what is already there.
#
#   testbed/kind/up.sh                  # everything
#   TESTBED_NO_BUILD=1 testbed/kind/up.sh   # reuse images already built
#
# Environment: KIND_CLUSTER (dcdn), DCDN_NAMESPACE (dcdn), DCDN_EXAMPLE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need docker kind kubectl helm
cd "$ROOT"

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  say "kind cluster $KIND_CLUSTER exists; reusing it"
else
  say "creating kind cluster $KIND_CLUSTER (1 control plane, 3 workers)"
  kind create cluster --name "$KIND_CLUSTER" --config testbed/kind/kind-config.yaml --wait 180s
fi

if [ "${TESTBED_NO_BUILD:-}" != 1 ]; then
  say "building dcdn/node:$VERSION and dcdn/operator:$VERSION"
  deploy/docker/build.sh
fi
say "loading the images into the kind nodes"
kind load docker-image --name "$KIND_CLUSTER" "dcdn/node:$VERSION" "dcdn/operator:$VERSION"

say "namespace $NS, Pod Security 'restricted' enforced"
kubectl --context "$CONTEXT" create namespace "$NS" --dry-run=client -o yaml |
  kubectl --context "$CONTEXT" apply -f - >/dev/null
kubectl --context "$CONTEXT" label namespace "$NS" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted >/dev/null

say "helm upgrade --install $RELEASE helm/dcdn"
# Helm installs crds/ only on first install; apply it every time so a re-run
# after a CRD change is current (the chart's documented upgrade step).
kubectl --context "$CONTEXT" apply --server-side -f helm/dcdn/crds/ >/dev/null
helm --kube-context "$CONTEXT" upgrade --install "$RELEASE" helm/dcdn -n "$NS" \
  -f testbed/kind/values.yaml --wait --timeout 5m

say "applying $(basename "$EXAMPLE")"
k apply -f "$EXAMPLE"

say "pinning the edge Service's NodePort to $EDGE_NODE_PORT (mapped to 127.0.0.1)"
for _ in $(seq 1 60); do
  k get service "$DCDN-edge" >/dev/null 2>&1 && break
  sleep 2
done
k patch service "$DCDN-edge" --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/spec/ports/0/nodePort\",\"value\":$EDGE_NODE_PORT}]" >/dev/null

say "waiting for DcdnCluster $DCDN to be Ready"
start=$SECONDS
if ! wait_ready 10m; then
  k get dcdn,pods -o wide >&2 || true
  die "DcdnCluster $DCDN is not Ready after 10 minutes; testbed/kind/collect-logs.sh gathers why"
fi
say "Ready after $((SECONDS - start)) s"

say "helm test $RELEASE"
helm --kube-context "$CONTEXT" test "$RELEASE" -n "$NS" --timeout 2m

k get dcdn "$DCDN"
k get pods -o wide
cat <<MSG

The testbed is up. Edges answer on $EDGE_URL (NodePort $EDGE_NODE_PORT, loopback only).
  testbed/kind/smoke.sh          publish through the origin, fetch through the edges
  testbed/kind/rotate.sh         key rotation under load, zero verification failures
  testbed/kind/chaos.sh          pods, a worker and the operator taken away mid-delivery
  testbed/kind/collect-logs.sh   everything for a bug report
  testbed/kind/down.sh           delete the cluster
MSG
