#!/usr/bin/env bash
# Serves the same objects (64 KiB, 1 MiB and 16 MiB, and a Range request
# across chunk boundaries of the 1 MiB one) from a warm DCDN edge and from
# nginx (Debian's nginx-light, sendfile on) and drives both with wrk under
# identical settings (threads, connections, duration), alternating runs.
# Prints each req/s ratio edge/nginx and, last, the smallest.
#
# Usage: testbed/bench/edge-vs-nginx.sh   (needs: apt-get install nginx-light wrk curl)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
# Large enough that a 16 MiB answer queued behind 31 others is not a timeout.
TIMEOUT=${TIMEOUT:-30s}

for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk curl" >&2; exit 2; }
done

work=$(mktemp -d)
# nginx workers run as an unprivileged user: let them read the files.
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# EDGE_BIN runs a binary built elsewhere (an A/B of two builds).
if [ -z "${EDGE_BIN:-}" ]; then
  cargo build --release -q -p dcdn-node
fi
"${EDGE_BIN:-./target/release/dcdn}" up --relays 1 --edges 1 --dir "$work/dcdn" > "$work/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "Press Ctrl-C" "$work/up.log" 2>/dev/null && break; sleep 0.2; done
grep -q "Press Ctrl-C" "$work/up.log" || { cat "$work/up.log"; exit 1; }

addr_of() { sed -n "s/^http_listen = \"\(.*\)\"/\1/p" "$work/dcdn/$1.toml"; }
origin=$(addr_of origin-0)
edge=$(addr_of edge-0)
token=$(cat "$work/dcdn/ingest-token")

mkdir -p "$work/www" && chmod 755 "$work/www"
head -c 65536 /dev/urandom > "$work/www/obj64k"
head -c 1048576 /dev/urandom > "$work/www/obj1m"
head -c 16777216 /dev/urandom > "$work/www/obj16m"
for f in obj64k obj1m obj16m; do
  curl -sf -T "$work/www/$f" -H "Authorization: Bearer $token" "http://$origin/v1/objects/$f" > /dev/null
  # Warm the edge, and check it serves the same bytes nginx will.
  curl -sf "http://$edge/v1/objects/$f" -o "$work/$f.edge"
  cmp "$work/$f.edge" "$work/www/$f"
done

nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $work/tmp;
  proxy_temp_path $work/tmp;
  fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp;
  scgi_temp_path $work/tmp;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
  }
}
CONF
mkdir -p "$work/tmp"
nginx -c "$work/nginx.conf"
sleep 0.3
curl -sf "http://127.0.0.1:$nginx_port/obj64k" -o /dev/null

# On a loaded machine req/s mostly says how the scheduler shared the cores;
# the server's own CPU time per request (user + system, from /proc) says
# what serving costs. The edge is the process listening on its port; nginx
# is its master and workers.
edge_pid=$(ss -ltnpH "sport = :${edge##*:}" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
nginx_pids="$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)

# Prints "req/s server-CPU-µs-per-request". $2, if given, is one extra
# request header (the Range case); the rest are the server's pids. A server
# answering errors fast must not count: any non-2xx/3xx answer or socket
# error fails the run.
rps() {
  local out url=$1 hdr=$2 before; shift 2
  before=$(cpu_ticks "$@")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout "$TIMEOUT" ${hdr:+-H "$hdr"} "$url")
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then echo "$url: $out" >&2; exit 1; fi
  awk -v t=$(( $(cpu_ticks "$@") - before )) -v hz="$hz" \
    '/requests in/ {n=$1} /Requests\/sec/ {r=$2} END {printf "%s %.1f\n", r, t * 1e6 / hz / n}' <<<"$out"
}

# Both servers must answer the Range case with the same 206 bytes.
RANGE="bytes=100000-900000"
curl -sf -H "Range: $RANGE" "http://$edge/v1/objects/obj1m" -o "$work/range.edge"
curl -sf -H "Range: $RANGE" "http://127.0.0.1:$nginx_port/obj1m" -o "$work/range.nginx"
cmp "$work/range.edge" "$work/range.nginx"
echo "wrk -t$THREADS -c$CONNS -d$DURATION --timeout $TIMEOUT, $ROUNDS alternating rounds, best round each; same settings for both"

min_ratio=""
for case in obj64k obj1m obj16m obj1m-range; do
  f=${case%-range}; hdr=""
  [ "$case" != "$f" ] && hdr="Range: $RANGE"
  best_edge=0; best_nginx=0; cpu_edge=1e18; cpu_nginx=1e18
  for _ in $(seq 1 "$ROUNDS"); do
    read -r e ce < <(rps "http://$edge/v1/objects/$f" "$hdr" "$edge_pid")
    read -r n cn < <(rps "http://127.0.0.1:$nginx_port/$f" "$hdr" $nginx_pids)
    best_edge=$(python3 -c "print(max($best_edge, $e))"); best_nginx=$(python3 -c "print(max($best_nginx, $n))")
    cpu_edge=$(python3 -c "print(min($cpu_edge, $ce))"); cpu_nginx=$(python3 -c "print(min($cpu_nginx, $cn))")
  done
  ratio=$(python3 -c "print(round($best_edge / $best_nginx, 3))")
  echo "$case: edge $best_edge req/s, nginx $best_nginx req/s, ratio $ratio;" \
    "server CPU per request: edge $cpu_edge µs, nginx $cpu_nginx µs, nginx/edge $(python3 -c "print(round($cpu_nginx / $cpu_edge, 3))")"
  min_ratio=$(python3 -c "print(min([x for x in [${min_ratio:-$ratio}, $ratio]]))")
done
echo "min ratio edge/nginx: $min_ratio"
