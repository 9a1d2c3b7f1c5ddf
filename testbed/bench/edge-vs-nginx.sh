#!/usr/bin/env bash
# Serves the same objects (64 KiB, 1 MiB and 16 MiB, and a Range request
# across chunk boundaries of the 1 MiB one) from a warm DCDN edge and from
# nginx (Debian's nginx-light, sendfile on) and drives both with wrk under
# identical settings (threads, connections, duration), alternating runs.
# Prints each req/s ratio edge/nginx and, last, the smallest.
#
# Usage: testbed/bench/edge-vs-nginx.sh   (needs: apt-get install nginx-light wrk curl)
#
# --https: the same over TLS. `dcdn up --tls` makes the certificate; nginx
# serves that same certificate and key, both sides held to TLS 1.3 with
# TLS_AES_256_GCM_SHA384 (checked with openssl s_client, printed), wrk over
# https:// (HTTP/1.1 on TLS, keep-alive). Then one 256 MiB object fetched
# from the same edge by `dcdn fetch`, once over HTTP/2 and once over HTTP/3
# (--http3), alternating: the same Rust client code on both, so the ratio
# compares the transports, not a Python client against a Rust one.
set -euo pipefail
HTTPS=0
[ "${1:-}" = "--https" ] && HTTPS=1
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
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
scheme=http; tls_flag=(); curl_ca=()
if [ "$HTTPS" = 1 ]; then
  command -v openssl >/dev/null || { echo "missing openssl" >&2; exit 2; }
  scheme=https; tls_flag=(--tls); curl_ca=(--cacert "$work/dcdn/https-ca.pem")
fi
# Stores large enough for the 256 MiB object of the HTTP/3 figure (nodes
# read DCDN_* overrides from the environment).
DCDN_STORAGE_RING_BUFFER_SIZE_MB=1024 "${EDGE_BIN:-./target/release/dcdn}" up "${tls_flag[@]}" --relays 1 --edges 1 --dir "$work/dcdn" > "$work/up.log" 2>&1 &
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
  curl -sf "${curl_ca[@]}" -T "$work/www/$f" -H "Authorization: Bearer $token" "$scheme://$origin/v1/objects/$f" > /dev/null
  # Warm the edge, and check it serves the same bytes nginx will.
  curl -sf "${curl_ca[@]}" "$scheme://$edge/v1/objects/$f" -o "$work/$f.edge"
  cmp "$work/$f.edge" "$work/www/$f"
done

nginx_ssl=""; nginx_tls=""
if [ "$HTTPS" = 1 ]; then
  # The edge's own certificate and key (`dcdn up --tls` wrote them).
  nginx_ssl=" ssl"
  nginx_tls="    ssl_certificate $work/dcdn/https/tls.crt;
    ssl_certificate_key $work/dcdn/https/tls.key;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
    ssl_session_cache shared:SSL:10m;"
  chmod 644 "$work/dcdn/https/tls.key"
fi
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
    listen 127.0.0.1:$nginx_port$nginx_ssl;
    root $work/www;
$nginx_tls
  }
}
CONF
mkdir -p "$work/tmp"
nginx -c "$work/nginx.conf"
sleep 0.3
curl -sf -k "$scheme://127.0.0.1:$nginx_port/obj64k" -o /dev/null
if [ "$HTTPS" = 1 ]; then
  # Same protocol and cipher on both sides, or the ratio compares ciphers.
  for target in "$edge" "127.0.0.1:$nginx_port"; do
    cipher=$(openssl s_client -connect "$target" -servername localhost </dev/null 2>/dev/null \
      | sed -n 's/^ *Cipher *: //p; s/^New, \(TLSv1.3\), Cipher is \(.*\)/\1 \2/p' | head -1)
    echo "TLS at $target: $cipher"
  done
fi

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
curl -sf "${curl_ca[@]}" -H "Range: $RANGE" "$scheme://$edge/v1/objects/obj1m" -o "$work/range.edge"
curl -sf -k -H "Range: $RANGE" "$scheme://127.0.0.1:$nginx_port/obj1m" -o "$work/range.nginx"
cmp "$work/range.edge" "$work/range.nginx"
# The machine is shared: a neighbour's burst lands on whichever server runs
# then, so rounds alternate (the first server of a round alternates too) and
# each figure is the median round, not the best. The load average is printed
# with every case, since absolute req/s mean little without it.
echo "wrk -t$THREADS -c$CONNS -d$DURATION --timeout $TIMEOUT, $ROUNDS alternating rounds, median round each; same settings for both"
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

min_ratio=""
for case in obj64k obj1m obj16m obj1m-range; do
  f=${case%-range}; hdr=""
  [ "$case" != "$f" ] && hdr="Range: $RANGE"
  es=(); ns=(); ces=(); cns=()
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      read -r e ce < <(rps "$scheme://$edge/v1/objects/$f" "$hdr" "$edge_pid")
      read -r n cn < <(rps "$scheme://127.0.0.1:$nginx_port/$f" "$hdr" $nginx_pids)
    else
      read -r n cn < <(rps "$scheme://127.0.0.1:$nginx_port/$f" "$hdr" $nginx_pids)
      read -r e ce < <(rps "$scheme://$edge/v1/objects/$f" "$hdr" "$edge_pid")
    fi
    es+=("$e"); ns+=("$n"); ces+=("$ce"); cns+=("$cn")
  done
  med_edge=$(median "${es[@]}"); med_nginx=$(median "${ns[@]}")
  cpu_edge=$(median "${ces[@]}"); cpu_nginx=$(median "${cns[@]}")
  ratio=$(python3 -c "print(round($med_edge / $med_nginx, 3))")
  echo "$case: edge $med_edge req/s, nginx $med_nginx req/s, ratio $ratio;" \
    "server CPU per request: edge $cpu_edge µs, nginx $cpu_nginx µs, nginx/edge $(python3 -c "print(round($cpu_nginx / $cpu_edge, 3))");" \
    "rounds edge ${es[*]} nginx ${ns[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  min_ratio=$(python3 -c "print(min([x for x in [${min_ratio:-$ratio}, $ratio]]))")
done
echo "min ratio edge/nginx ($scheme): $min_ratio"

if [ "$HTTPS" = 1 ]; then
  # HTTP/3 against HTTPS (HTTP/2) on the same edge: one 256 MiB object,
  # warmed first, then fetched and verified by `dcdn fetch` each way.
  big=$((256 << 20))
  head -c "$big" /dev/urandom > "$work/big.bin"
  "${EDGE_BIN:-./target/release/dcdn}" publish "$work/big.bin" --name big.bin --origin "https://$origin" --token "$token" \
    --cacert "$work/dcdn/https-ca.pem" > /dev/null
  rm -f "$work/big.bin"
  # To /dev/null: the disk is not what is measured (the BLAKE3 check still runs).
  fetch() { "${EDGE_BIN:-./target/release/dcdn}" fetch "https://$edge/v1/objects/big.bin" -o /dev/null \
    --cacert "$work/dcdn/https-ca.pem" "$@" > /dev/null; }
  fetch  # warm the edge
  h2s=(); h3s=()
  for _ in $(seq 1 "$ROUNDS"); do
    t0=$(date +%s.%N); fetch; t1=$(date +%s.%N); fetch --http3; t2=$(date +%s.%N)
    h2s+=("$(python3 -c "print($big / ($t1 - $t0) / 1e6)")"); h3s+=("$(python3 -c "print($big / ($t2 - $t1) / 1e6)")")
  done
  med_h2=$(median "${h2s[@]}"); med_h3=$(median "${h3s[@]}")
  echo "256 MiB object: HTTP/2 (TLS) $(python3 -c "print(round($med_h2))") MB/s, HTTP/3 $(python3 -c "print(round($med_h3))") MB/s, ratio h3/h2 $(python3 -c "print(round($med_h3 / $med_h2, 3))") (median rounds; client: dcdn fetch, verifying BLAKE3)"
fi
