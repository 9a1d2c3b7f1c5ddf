#!/usr/bin/env bash
# Chaos on the kind testbed: while an object is fetched through the edge
# Service every 0.5 s, take away, one at a time, an edge pod, a relay pod,
# the origin pod, a whole edge worker (kubectl drain), and the operator's
# pods in the middle of a rolling config change. After each step the
# DcdnCluster must be Ready again, fetches must work again, and delivery must
# never have stopped for longer than MAX_GAP seconds (default 10): the time
# the edge Service may take to drop a deleted pod's endpoint.
#
#   testbed/kind/chaos.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_testbed
setup_tmp
max_gap="${MAX_GAP:-10}"
wait_ready 2m || die "DcdnCluster $DCDN is not Ready; start from a healthy cluster"

# Publishes a fresh object (the origin is up now), makes every edge hold it
# (so it survives losing the origin and relays), and points the loop at it.
fresh_object() {
  local name pod
  name="chaos-$1-$(date +%s)-$$"
  random_file "$TMP/object" $((1024 * 1024 + 7))
  publish "$TMP/object" "$name" || return 1
  for pod in $(pods_of edge); do
    fetch_pod "$pod" 8080 "/v1/objects/$name" "$TMP/prime" 2>/dev/null || true
  done
  set_target "$TMP/target" "$name" "$TMP/object"
}

# step NAME COMMAND...: runs one disruption under the fetch loop and checks
# that the cluster recovers and delivery never paused longer than max_gap.
step() {
  local label="$1" t0 t1 gap ok bad
  shift
  say "$label"
  fresh_object "$(echo "$label" | tr -c 'a-z0-9' '-' | cut -c1-20)" || {
    fail "$label: could not publish a fresh object before the step"
    return 0
  }
  : >"$TMP/fetches"
  sleep 2
  t0="$(date +%s.%N)"
  if ! "$@"; then
    fail "$label: the disruption itself failed"
  fi
  if ! wait_ready 10m; then
    fail "$label: DcdnCluster $DCDN not Ready again within 10 minutes"
  fi
  sleep 5
  # Ready is the operator's view; also wait for a fetch that works again, so
  # an outage still going on is measured, not cut short.
  delivery_resumed "$TMP/fetches" "$(date +%s.%N)" 120 || true
  t1="$(date +%s.%N)"
  gap="$(longest_gap "$TMP/fetches" "$t0" "$t1")"
  ok="$(count ok "$TMP/fetches")"
  bad="$(count fail "$TMP/fetches")"
  if awk -v g="$gap" -v m="$max_gap" 'BEGIN { exit !(g <= m) }' && [ "$ok" -gt 0 ]; then
    pass "$label: delivery continued (longest pause ${gap} s; $ok fetches ok, $bad failed)"
  else
    fail "$label: delivery paused ${gap} s (> $max_gap s; $ok fetches ok, $bad failed)"
  fi
}

delete_pod() { k delete pod "$1" --wait=false >/dev/null; sleep 3; }

drain_edge_worker() {
  local node
  node="$(k get pod "$DCDN-edge-0" -o jsonpath='{.spec.nodeName}')"
  [ -n "$node" ] || return 1
  echo "     draining $node"
  # The edge PodDisruptionBudget lets one edge go at a time.
  kubectl --context "$CONTEXT" drain "$node" --ignore-daemonsets --delete-emptydir-data \
    --force --timeout=5m >/dev/null || return 1
  kubectl --context "$CONTEXT" uncordon "$node" >/dev/null
}

kill_operator_mid_rollout() {
  local ttl
  # A config change rolls the edge tier (its config hash changes).
  ttl="$(k get dcdn "$DCDN" -o jsonpath='{.spec.edge.config.storage.chunk_ttl_seconds}')"
  ttl=$(( ${ttl:-300} == 300 ? 301 : 300 ))
  k patch dcdn "$DCDN" --type=merge \
    -p "{\"spec\":{\"edge\":{\"config\":{\"storage\":{\"chunk_ttl_seconds\":$ttl}}}}}" >/dev/null
  # Wait until the rollout is under way, then kill every operator pod at once.
  for _ in $(seq 1 30); do
    [ "$(k get dcdn "$DCDN" -o jsonpath='{.status.conditions[?(@.type=="Progressing")].status}')" = True ] && break
    sleep 1
  done
  echo "     rollout in progress; killing the operator"
  k delete pod -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/name=dcdn-operator" \
    --grace-period=0 --force >/dev/null 2>&1
  k rollout status "deploy/$RELEASE-operator" --timeout=3m >/dev/null
  # Ready alone could be the old state: wait for every edge to be updated.
  local want updated
  want="$(k get dcdn "$DCDN" -o jsonpath='{.spec.edge.replicas}')"
  for _ in $(seq 1 300); do
    updated="$(k get dcdn "$DCDN" -o jsonpath='{.status.tiers.edge.updated}')"
    [ "${updated:-0}" = "$want" ] && return 0
    sleep 2
  done
  echo "     only ${updated:-0} of $want edges updated after the operator came back" >&2
  return 1
}

echo "none none" >"$TMP/target"
: >"$TMP/fetches"
fetch_loop "$TMP/target" "$TMP/fetches" &
BG_PIDS+=("$!")

step "1. delete an edge pod" delete_pod "$DCDN-edge-0"
step "2. delete a relay pod" delete_pod "$DCDN-relay-0"
step "3. delete the origin pod" delete_pod "$DCDN-origin-0"
step "4. drain an edge worker" drain_edge_worker
step "5. kill the operator mid-rollout" kill_operator_mid_rollout
touch "$TMP/stop"
finish
