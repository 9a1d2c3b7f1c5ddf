#!/usr/bin/env bash
# The container testbed: origin + 2 relays + 4 edges as containers of the
# dcdn/node image on a private Docker network, each with its own address,
# config from mounted files and fresh cluster credentials; then six checks.
#
#   testbed/docker/run.sh              # build images, run every check
#   TESTBED_NO_BUILD=1 testbed/docker/run.sh   # reuse built images/binary
#
# Prints one line per check and a summary; exits 0 only if all pass. On
# failure every container's log is kept under target/testbed-logs/. Whatever
# it created (containers, network, temporary files) is removed on exit, also
# when interrupted.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

if ! docker info >/dev/null 2>&1; then
  echo "!!! SKIPPED: no Docker engine answers (docker info failed); the container testbed did not run !!!" >&2
  exit 0
fi

TRIPLE="$(uname -m)-unknown-linux-gnu"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
IMAGE="dcdn/node:$VERSION"
DCDN="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")/$TRIPLE/dist/dcdn"
if [ -z "${TESTBED_NO_BUILD:-}" ] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  deploy/docker/build.sh
fi

RUN="dcdn-tb-$$"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/$RUN.XXXX")"
LOGS="$ROOT/target/testbed-logs/$RUN"
NODE_UID=65532
FAILED=0
PASSED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
    mkdir -p "$LOGS"
    for c in $(docker ps -aq --filter "label=dcdn.testbed=$RUN"); do
      name="$(docker inspect -f '{{.Name}}' "$c" | tr -d /)"
      docker logs "$c" >"$LOGS/$name.log" 2>&1 || true
    done
    cp -r "$WORK/out" "$LOGS/" 2>/dev/null || true
    echo "logs: $LOGS" >&2
  fi
  docker ps -aq --filter "label=dcdn.testbed=$RUN" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$RUN" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

result() { # result PASS|FAIL "what" "detail"
  printf '%s %-58s %s\n' "$1" "$2" "$3"
  if [ "$1" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

# A /24 no other network on this engine uses.
SUBNET=""
for third in $(seq 77 120); do
  if docker network create --subnet "10.231.$third.0/24" --label "dcdn.testbed=$RUN" "$RUN" >/dev/null 2>&1; then
    SUBNET="10.231.$third"
    break
  fi
done
[ -n "$SUBNET" ] || { echo "error: could not create a Docker network" >&2; exit 1; }

declare -A IP=(
  [origin-0]="$SUBNET.10" [relay-0]="$SUBNET.11" [relay-1]="$SUBNET.12"
  [edge-0]="$SUBNET.20" [edge-1]="$SUBNET.21" [edge-2]="$SUBNET.22" [edge-3]="$SUBNET.23"
  [stranger]="$SUBNET.5"
)
NODES=(origin-0 relay-0 relay-1 edge-0 edge-1 edge-2 edge-3)
EDGES=(edge-0 edge-1 edge-2 edge-3)
ADMIN_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
INGEST_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$WORK/out"

# Fresh credentials: a cluster CA, a signing key and trust bundle, one
# certificate per node.
"$DCDN" keygen --out "$WORK/pki" --cluster "$RUN" \
  --node origin-0:origin --node relay-0:relay --node relay-1:relay \
  --node edge-0:edge --node edge-1:edge --node edge-2:edge --node edge-3:edge >/dev/null

role_of() { case "$1" in stranger) echo edge ;; *) echo "${1%-*}" ;; esac; }

# node_dir NAME PKI_DIR UPSTREAM PEERS: the files mounted at /etc/dcdn.
node_dir() {
  local name="$1" pki="$2" upstream="$3" peers="$4" role
  role="$(role_of "$name")"
  local d="$WORK/nodes/$name"
  mkdir -p "$d/tls" "$d/keys" "$d/secrets"
  cp "$pki/ca.pem" "$d/tls/ca.pem"
  cp "$pki/$name.pem" "$d/tls/node.pem"
  cp "$pki/$name.key" "$d/tls/node.key"
  cp "$pki/trust-bundle.json" "$d/keys/trust-bundle.json"
  printf '%s' "$ADMIN_TOKEN" >"$d/secrets/admin-token"
  local signing="[]" ingest=""
  if [ "$role" = origin ]; then
    cp "$pki/signing.key" "$d/keys/signing.key"
    signing='["/etc/dcdn/keys/signing.key"]'
    printf '%s' "$INGEST_TOKEN" >"$d/secrets/ingest-token"
    ingest='ingest_token_file = "/etc/dcdn/secrets/ingest-token"'
  fi
  cat >"$d/dcdn.toml" <<EOF
[node]
role = "$role"
name = "$name"

[network]
mesh_listen = "0.0.0.0:7400"
http_listen = "0.0.0.0:8080"
admin_listen = "0.0.0.0:9090"

[discovery]
upstream = [$upstream]
peers = [$peers]
resolve_interval_seconds = 2

[storage]
ring_buffer_size_mb = 256

[crypto]
signing_keys = $signing
trust_bundle = "/etc/dcdn/keys/trust-bundle.json"

[tls]
ca_cert = "/etc/dcdn/tls/ca.pem"
node_cert = "/etc/dcdn/tls/node.pem"
node_key = "/etc/dcdn/tls/node.key"

[origin]
chunk_size_kb = 256
$ingest

[admin]
token_file = "/etc/dcdn/secrets/admin-token"
EOF
  "$DCDN" config check "$d/dcdn.toml" >/dev/null
  chown -R "$NODE_UID:$NODE_UID" "$d"
}

quoted() { local out="" x; for x in "$@"; do out+="${out:+, }\"$x:7400\""; done; echo "$out"; }

start_node() { # start_node NAME
  local name="$1"
  docker run -d --name "$RUN-$name" --hostname "$name" --label "dcdn.testbed=$RUN" \
    --network "$RUN" --ip "${IP[$name]}" --network-alias "$name" \
    -v "$WORK/nodes/$name:/etc/dcdn:ro" \
    "$IMAGE" run --config /etc/dcdn/dcdn.toml >/dev/null
}

wait_ready() { # wait_ready NAME [SECONDS]
  local name="$1" until=$((SECONDS + ${2:-60}))
  while [ $SECONDS -lt $until ]; do
    curl -fsS -o /dev/null --max-time 2 "http://${IP[$name]}:9090/readyz" && return 0
    sleep 0.5
  done
  return 1
}

admin() { # admin METHOD NAME PATH [JSON]
  curl -sS --fail-with-body --max-time 10 -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" \
    ${4:+-H 'Content-Type: application/json' --data "$4"} "http://${IP[$2]}:9090$3"
}

metric_sum() { # metric_sum NAME METRIC [LABEL_FILTER]: sum of a metric's samples on a node
  { curl -fsS --max-time 5 "http://${IP[$1]}:9090/metrics" || true; } |
    awk -v m="$2" -v f="${3:-}" '$1 ~ "^"m"[{ ]" || $1 == m { if (f == "" || index($0, f)) s += $NF } END { printf "%d\n", s }'
}

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

edge_urls() { local e; for e in "${EDGES[@]}"; do printf -- '--edge http://%s:8080 ' "${IP[$e]}"; done; }

live_check() { # live_check PIECES INTERVAL_MS LOGFILE: a live stream checked at every edge
  # shellcheck disable=SC2046
  "$DCDN" check --origin "http://${IP[origin-0]}:8080" --token "$INGEST_TOKEN" \
    $(edge_urls) --object-bytes 0 --live-pieces "$1" --live-piece-bytes 16384 \
    --live-interval-ms "$2" >"$3" 2>&1
}

checked() { # checked "what" LOGFILE EXTRA: turns a dcdn check log into a result line
  if grep -q ' 0 failed$' "$2"; then
    result PASS "$1" "$(grep -c '^PASS' "$2") steps passed$3"
  else
    result FAIL "$1" "$(grep '^FAIL' "$2" | head -3 | tr '\n' ' ')"
  fi
}

echo "==> testbed $RUN on $SUBNET.0/24, image $IMAGE"
for n in "${NODES[@]}"; do
  case "$(role_of "$n")" in
    origin) node_dir "$n" "$WORK/pki" "" "" ;;
    relay) node_dir "$n" "$WORK/pki" "$(quoted origin-0)" "" ;;
    edge)
      others=()
      for e in "${EDGES[@]}"; do [ "$e" = "$n" ] || others+=("$e"); done
      node_dir "$n" "$WORK/pki" "$(quoted relay-0 relay-1)" "$(quoted "${others[@]}")"
      ;;
  esac
  start_node "$n"
done
for n in "${NODES[@]}"; do
  wait_ready "$n" 60 || { result FAIL "$n ready" "no 200 from /readyz in 60 s"; exit 1; }
done
echo "all ${#NODES[@]} nodes ready"

# 1. An object and a live stream arrive byte-identical and verified at every edge.
head -c $((6 * 1024 * 1024 + 777)) /dev/urandom >"$WORK/out/obj.bin"
"$DCDN" publish "$WORK/out/obj.bin" --name tb/obj.bin --origin "http://${IP[origin-0]}:8080" \
  --token "$INGEST_TOKEN" >/dev/null 2>&1
# shellcheck disable=SC2046
"$DCDN" check --origin "http://${IP[origin-0]}:8080" --token "$INGEST_TOKEN" $(edge_urls) \
  --origin-admin "http://${IP[origin-0]}:9090" --object-bytes $((16 * 1024 * 1024)) \
  --live-pieces 60 >"$WORK/out/check1.log" 2>&1 || true
same=0
for e in "${EDGES[@]}"; do
  "$DCDN" fetch "http://${IP[$e]}:8080/v1/objects/tb/obj.bin" -o "$WORK/out/obj.$e" >/dev/null 2>&1 &&
    cmp -s "$WORK/out/obj.bin" "$WORK/out/obj.$e" && same=$((same + 1))
done
if [ "$same" -eq "${#EDGES[@]}" ]; then
  checked "1. object + live stream at every edge" "$WORK/out/check1.log" ", tb/obj.bin identical at $same edges"
else
  result FAIL "1. object + live stream at every edge" "tb/obj.bin identical at only $same of ${#EDGES[@]} edges"
fi
FIG_LAST="$(sed -n 's/^FIGURE publish_to_last_edge_ms //p' "$WORK/out/check1.log")"
FIG_OFFLOAD="$(sed -n 's/^FIGURE origin_offload //p' "$WORK/out/check1.log")"

# 2. A relay killed mid-stream: delivery continues, nothing lost. Kill the
#    relay most edges take their push from.
busiest=relay-0
most=-1
for r in relay-0 relay-1; do
  subs="$(admin GET "$r" /v1/peers | json "sum(1 for p in d['peers'] if p['subscribed'])")"
  if [ "$subs" -gt "$most" ]; then most="$subs" busiest="$r"; fi
done
live_check 150 40 "$WORK/out/check2.log" &
pid=$!
sleep 2
docker kill "$RUN-$busiest" >/dev/null
wait "$pid" || true
checked "2. $busiest (pushing to $most edges) killed mid-stream" "$WORK/out/check2.log" ""
docker start "$RUN-$busiest" >/dev/null
wait_ready "$busiest" 60 || result FAIL "$busiest restarted" "not ready again"

# 3. An edge cut off from the network for a few seconds catches up.
live_check 150 40 "$WORK/out/check3.log" &
pid=$!
sleep 1.5
docker network disconnect "$RUN" "$RUN-edge-3"
sleep 4
docker network connect --ip "${IP[edge-3]}" --alias edge-3 "$RUN" "$RUN-edge-3"
wait "$pid" || true
checked "3. edge-3 disconnected 4 s mid-stream, reconnected" "$WORK/out/check3.log" ""

# 4. An edge restarted with an empty store refills from peers and relays.
docker restart "$RUN-edge-2" >/dev/null
if wait_ready edge-2 60; then
  held="$(metric_sum edge-2 dcdn_store_chunks)"
  if "$DCDN" fetch "http://${IP[edge-2]}:8080/v1/objects/tb/obj.bin" -o "$WORK/out/obj.refill" >/dev/null 2>&1 &&
    cmp -s "$WORK/out/obj.bin" "$WORK/out/obj.refill"; then
    result PASS "4. edge-2 restarted empty, refilled" "$held chunks after restart; tb/obj.bin identical"
  else
    result FAIL "4. edge-2 restarted empty, refilled" "tb/obj.bin not served identical after restart"
  fi
else
  result FAIL "4. edge-2 restarted empty, refilled" "not ready after restart"
fi

# 5. A key rotation through the admin API during a live stream: new key
#    trusted everywhere, origin signs with it, old key revoked; zero
#    verification failures, zero gaps.
rejected_before=0
for n in "${NODES[@]}"; do rejected_before=$((rejected_before + $(metric_sum "$n" dcdn_chunks_rejected_total))); done
"$DCDN" keygen --out "$WORK/next" >/dev/null
new_pub="$(json "d['keys'][0]['public_key']" <"$WORK/next/trust-bundle.json")"
new_id="$(json "d['keys'][0]['id']" <"$WORK/next/trust-bundle.json")"
old_id="$(admin GET origin-0 /v1/keys | json "d['active']")"
install -o "$NODE_UID" -g "$NODE_UID" -m 600 "$WORK/next/signing.key" "$WORK/nodes/origin-0/keys/next.key"
sed -i 's|^signing_keys = .*|signing_keys = ["/etc/dcdn/keys/signing.key", "/etc/dcdn/keys/next.key"]|' \
  "$WORK/nodes/origin-0/dcdn.toml"
live_check 200 40 "$WORK/out/check5.log" &
pid=$!
sleep 1.5
rotation_ok=1
for n in "${NODES[@]}"; do
  admin POST "$n" /v1/keys "{\"public_key\":\"$new_pub\"}" >>"$WORK/out/rotation.log" || rotation_ok=0
done
admin POST origin-0 /v1/config/reload >>"$WORK/out/rotation.log" || rotation_ok=0
# The origin signs with it first; the others mark it active so the old key,
# no longer active anywhere, can be revoked.
for n in "${NODES[@]}"; do
  admin POST "$n" "/v1/keys/$new_id/activate" >>"$WORK/out/rotation.log" || rotation_ok=0
done
sleep 2 # chunks signed with the old key drain before it is revoked
for n in "${NODES[@]}"; do
  admin POST "$n" "/v1/keys/$old_id/revoke" >>"$WORK/out/rotation.log" || rotation_ok=0
done
wait "$pid" || true
rejected_after=0
for n in "${NODES[@]}"; do rejected_after=$((rejected_after + $(metric_sum "$n" dcdn_chunks_rejected_total))); done
active_now="$(admin GET origin-0 /v1/keys | json "d['active']")"
rejected=$((rejected_after - rejected_before))
if [ "$rotation_ok" = 1 ] && [ "$rejected" -eq 0 ] && [ "$active_now" = "$new_id" ]; then
  checked "5. key rotation $old_id -> $new_id during live" "$WORK/out/check5.log" ", 0 chunks rejected"
else
  result FAIL "5. key rotation $old_id -> $new_id during live" \
    "admin calls ok=$rotation_ok, $rejected chunks rejected, active $active_now; $(grep '^FAIL' "$WORK/out/check5.log" | head -2 | tr '\n' ' ')"
fi

# 6. A container without cluster credentials is refused by every node. Its
#    address sorts below every node's, so it dials edges as well as upstreams.
"$DCDN" keygen --out "$WORK/stranger-pki" --cluster elsewhere --node stranger:edge >/dev/null
refused_before=()
for n in "${NODES[@]}"; do refused_before+=("$(metric_sum "$n" dcdn_handshakes_refused_total)"); done
node_dir stranger "$WORK/stranger-pki" "$(quoted origin-0 relay-0 relay-1)" "$(quoted "${EDGES[@]}")"
start_node stranger
sleep 8
refusers=0
i=0
for n in "${NODES[@]}"; do
  [ "$(metric_sum "$n" dcdn_handshakes_refused_total)" -gt "${refused_before[$i]}" ] && refusers=$((refusers + 1))
  i=$((i + 1))
done
stranger_peers="$(metric_sum stranger dcdn_peers)"
if [ "$refusers" -eq "${#NODES[@]}" ] && [ "$stranger_peers" -eq 0 ] &&
  ! curl -fsS -o /dev/null --max-time 2 "http://${IP[stranger]}:9090/readyz"; then
  result PASS "6. stranger without cluster credentials" "refused by all $refusers nodes, 0 peers, not ready"
else
  result FAIL "6. stranger without cluster credentials" "refused by $refusers of ${#NODES[@]} nodes, stranger has $stranger_peers peers"
fi

echo
echo "figures (check 1): publish_to_last_edge_ms ${FIG_LAST:-n/a}; origin_offload ${FIG_OFFLOAD:-n/a}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
