# Sourced by the kind testbed scripts: names, kubectl in the testbed's
# context, waiting, publishing through the origin and reading node metrics.
# shellcheck shell=bash disable=SC2034  # its variables are for the scripts that source it

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIND_CLUSTER="${KIND_CLUSTER:-dcdn}"        # kind cluster name
NS="${DCDN_NAMESPACE:-dcdn}"                # namespace of the release and the DcdnCluster
RELEASE="${DCDN_RELEASE:-dcdn}"             # Helm release
EXAMPLE="${DCDN_EXAMPLE:-$ROOT/deploy/examples/kind.yaml}"
DCDN="${DCDN_CLUSTER:-kind}"                # DcdnCluster name in $EXAMPLE
EDGE_NODE_PORT=30080                        # kind-config.yaml maps it to 127.0.0.1
EDGE_URL="${DCDN_EDGE_URL:-http://127.0.0.1:$EDGE_NODE_PORT}"  # where the edges answer
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
CONTEXT="kind-$KIND_CLUSTER"

PASSED=0
FAILED=0
BG_PIDS=()

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS %s\n' "$*"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL %s\n' "$*"
}
# Prints the closing line and exits non-zero if anything failed.
finish() {
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  [ "$FAILED" -eq 0 ]
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see testbed/kind/README.md)"
  done
}

# kubectl in the testbed's context and namespace.
k() { kubectl --context "$CONTEXT" -n "$NS" "$@"; }

# Stops what this script started in the background (port-forwards, loops).
cleanup() {
  local pid
  [ -n "${TMP:-}" ] && touch "$TMP/stop" 2>/dev/null
  for pid in "${BG_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  BG_PIDS=()
  [ -n "${TMP:-}" ] && rm -rf "$TMP"
}

# Makes $TMP and arranges cleanup on exit, Ctrl-C and SIGTERM.
setup_tmp() {
  TMP="$(mktemp -d)"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

require_testbed() {
  need kubectl curl sha256sum
  kubectl config get-contexts "$CONTEXT" >/dev/null 2>&1 ||
    die "no kubectl context $CONTEXT: run testbed/kind/up.sh first"
  k get dcdn "$DCDN" >/dev/null || die "no DcdnCluster $DCDN in $NS: run testbed/kind/up.sh first"
}

wait_ready() {
  local timeout="${1:-10m}"
  k wait "dcdn/$DCDN" --for=condition=Ready --timeout="$timeout" >/dev/null
}

# The token the origin takes for ingest, from the cluster's admin Secret.
ingest_token() {
  k get secret "$DCDN-admin-token" -o jsonpath='{.data.ingest-token}' | base64 -d
}

# port_forward TARGET REMOTE_PORT: forwards a free local port to TARGET and
# sets PF_PORT and PF_PID (not run in a subshell, so cleanup sees the pid).
port_forward() {
  local target="$1" remote="$2" log _
  log="$(mktemp)"
  # kubectl itself, not the `k` function: $! must be kubectl's pid.
  kubectl --context "$CONTEXT" -n "$NS" port-forward "$target" ":$remote" >"$log" 2>&1 &
  PF_PID=$!
  BG_PIDS+=("$PF_PID")
  PF_PORT=""
  for _ in $(seq 1 50); do
    PF_PORT="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$log" | head -1)"
    [ -n "$PF_PORT" ] && break
    sleep 0.2
  done
  [ -n "$PF_PORT" ] || cat "$log" >&2
  rm -f "$log"
  [ -n "$PF_PORT" ]
}

stop_port_forward() {
  kill "$PF_PID" 2>/dev/null || true
  wait "$PF_PID" 2>/dev/null || true
}

# publish FILE NAME: PUTs FILE as object NAME at the origin, through a
# port-forward to the origin pod that lasts only for the upload.
publish() {
  local file="$1" name="$2" token rc=0
  token="$(ingest_token)"
  port_forward "pod/$DCDN-origin-0" 8080 || return 1
  curl -fsS --max-time 120 -T "$file" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$PF_PORT/v1/objects/$name" >/dev/null || rc=$?
  stop_port_forward
  return "$rc"
}

# fetch_edge NAME OUT: GETs object NAME through the edge Service (NodePort).
fetch_edge() {
  curl -fsS --max-time 30 -o "$2" "$EDGE_URL/v1/objects/$1"
}

# fetch_pod POD PORT PATH OUT: an HTTP GET on a pod through the API server's
# pod proxy (no port-forward per pod).
fetch_pod() {
  kubectl --context "$CONTEXT" get --raw "/api/v1/namespaces/$NS/pods/$1:$2/proxy$3" >"$4"
}

pods_of() {
  k get pods -l "app.kubernetes.io/instance=$DCDN,app.kubernetes.io/component=$1" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

# Prints "POD RESTARTS REJECTED" for every DCDN pod: chunks rejected, summed
# over reasons, read from each pod's /metrics.
rejections() {
  local tier pod restarts metrics
  metrics="$(mktemp)"
  for tier in origin relay edge; do
    for pod in $(pods_of "$tier"); do
      restarts="$(k get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')" ||
        restarts="?"
      if fetch_pod "$pod" 9090 /metrics "$metrics"; then
        awk -v pod="$pod" -v r="$restarts" \
          '/^dcdn_chunks_rejected_total[{ ]/ { n += $NF } END { printf "%s %s %d\n", pod, r, n }' "$metrics"
      else
        echo "$pod $restarts unreachable"
      fi
    done
  done
  rm -f "$metrics"
}

# random_file PATH BYTES
random_file() {
  head -c "$2" /dev/urandom >"$1"
}

digest() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_loop TARGET_FILE LOG: until $TMP/stop exists, every 0.5 s fetches
# through the edge Service the object named in TARGET_FILE ("NAME SHA256",
# re-read each round and replaced atomically, so the object can change
# under it) and appends "ok|fail EPOCH" to LOG.
fetch_loop() {
  local target="$1" log="$2" out name want
  out="$(mktemp)"
  while [ ! -e "$TMP/stop" ]; do
    read -r name want <"$target"
    if fetch_edge "$name" "$out" 2>/dev/null && [ "$(digest "$out")" = "$want" ]; then
      echo "ok $(date +%s.%N)" >>"$log"
    else
      echo "fail $(date +%s.%N)" >>"$log"
    fi
    sleep 0.5
  done
  rm -f "$out"
}

# set_target TARGET_FILE NAME FILE: points fetch_loop at object NAME (FILE's bytes).
set_target() {
  echo "$2 $(digest "$3")" >"$1.new"
  mv "$1.new" "$1"
}

# delivery_resumed LOG SINCE TIMEOUT: waits until LOG has an "ok" after SINCE.
delivery_resumed() {
  local _
  for _ in $(seq 1 $(($3 * 2))); do
    awk -v since="$2" '$1 == "ok" && $2 > since { found = 1 } END { exit !found }' "$1" && return 0
    sleep 0.5
  done
  return 1
}

# live_follow STREAM LOG: until $TMP/stop exists, follows a live stream at
# the edges like a player: polls its head every second and fetches every new
# chunk once, appending "ok|fail SEQ" to LOG.
live_follow() {
  local stream="$1" log="$2" head next=-1
  while [ ! -e "$TMP/stop" ]; do
    # No head yet is not an error (set -e would end the loop).
    head="$(curl -fsS --max-time 5 "$EDGE_URL/v1/streams/$stream" 2>/dev/null |
      sed -n 's/.*"head":\([0-9]*\).*/\1/p')" || head=""
    if [ -n "$head" ]; then
      [ "$next" -ge 0 ] || next="$head"
      while [ "$next" -le "$head" ]; do
        if curl -fsS --max-time 10 -o /dev/null "$EDGE_URL/v1/streams/$stream/$next"; then
          echo "ok $next" >>"$log"
        else
          echo "fail $next" >>"$log"
        fi
        next=$((next + 1))
      done
    fi
    sleep 1
  done
}

# longest_gap LOG START END: the longest time, in seconds, without an "ok"
# line between START and END (epoch seconds).
longest_gap() {
  awk -v start="$2" -v end="$3" '
    $1 == "ok" && $2 >= start { if ($2 - last > gap) gap = $2 - last; last = $2 }
    BEGIN { last = start; gap = 0 }
    END { if (end - last > gap) gap = end - last; printf "%.1f\n", gap }' "$1"
}

# count WORD LOG: lines of LOG starting with WORD (0 if LOG does not exist).
count() {
  if [ -f "$2" ]; then grep -c "^$1 " "$2" || true; else echo 0; fi
}

# The DcdnCluster's rotation phase and active key; empty if the API did not
# answer this time (callers poll).
phase() { k get dcdn "$DCDN" -o jsonpath='{.status.rotationPhase}' 2>/dev/null || true; }
active_key() { k get dcdn "$DCDN" -o jsonpath='{.status.activeKeyId}' 2>/dev/null || true; }
