#!/usr/bin/env bash
# Serves the same objects (64 KiB and 1 MiB) from a warm DCDN edge and from
# nginx (Debian's nginx-light, sendfile on) and drives both with wrk under
# identical settings, alternating runs. Prints each req/s ratio edge/nginx
# and, last, the smaller of the two.
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
ROUNDS=${ROUNDS:-2}

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

cargo build --release -q -p dcdn-node
scheme=http; tls_flag=(); curl_ca=()
if [ "$HTTPS" = 1 ]; then
  command -v openssl >/dev/null || { echo "missing openssl" >&2; exit 2; }
  scheme=https; tls_flag=(--tls); curl_ca=(--cacert "$work/dcdn/https-ca.pem")
fi
# Stores large enough for the 256 MiB object of the HTTP/3 figure (nodes
# read DCDN_* overrides from the environment).
DCDN_STORAGE_RING_BUFFER_SIZE_MB=1024 ./target/release/dcdn up "${tls_flag[@]}" --relays 1 --edges 1 --dir "$work/dcdn" > "$work/up.log" 2>&1 &
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
for f in obj64k obj1m; do
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

rps() { wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'; }

min_ratio=""
for f in obj64k obj1m; do
  best_edge=0; best_nginx=0
  for _ in $(seq 1 "$ROUNDS"); do
    e=$(rps "$scheme://$edge/v1/objects/$f"); n=$(rps "$scheme://127.0.0.1:$nginx_port/$f")
    best_edge=$(python3 -c "print(max($best_edge, $e))"); best_nginx=$(python3 -c "print(max($best_nginx, $n))")
  done
  ratio=$(python3 -c "print(round($best_edge / $best_nginx, 3))")
  echo "$f: edge $best_edge req/s, nginx $best_nginx req/s, ratio $ratio"
  min_ratio=$(python3 -c "print(min([x for x in [${min_ratio:-$ratio}, $ratio]]))")
done
echo "min ratio edge/nginx ($scheme): $min_ratio"

if [ "$HTTPS" = 1 ]; then
  # HTTP/3 against HTTPS (HTTP/2) on the same edge: one 256 MiB object,
  # warmed first, then fetched and verified by `dcdn fetch` each way.
  big=$((256 << 20))
  head -c "$big" /dev/urandom > "$work/big.bin"
  ./target/release/dcdn publish "$work/big.bin" --name big.bin --origin "https://$origin" --token "$token" \
    --cacert "$work/dcdn/https-ca.pem" > /dev/null
  rm -f "$work/big.bin"
  # To /dev/null: the disk is not what is measured (the BLAKE3 check still runs).
  fetch() { ./target/release/dcdn fetch "https://$edge/v1/objects/big.bin" -o /dev/null \
    --cacert "$work/dcdn/https-ca.pem" "$@" > /dev/null; }
  fetch  # warm the edge
  best_h2=0; best_h3=0
  for _ in $(seq 1 "$ROUNDS"); do
    t0=$(date +%s.%N); fetch; t1=$(date +%s.%N); fetch --http3; t2=$(date +%s.%N)
    h2=$(python3 -c "print($big / ($t1 - $t0) / 1e6)"); h3=$(python3 -c "print($big / ($t2 - $t1) / 1e6)")
    best_h2=$(python3 -c "print(max($best_h2, $h2))"); best_h3=$(python3 -c "print(max($best_h3, $h3))")
  done
  echo "256 MiB object: HTTP/2 (TLS) $(python3 -c "print(round($best_h2))") MB/s, HTTP/3 $(python3 -c "print(round($best_h3))") MB/s, ratio h3/h2 $(python3 -c "print(round($best_h3 / $best_h2, 3))") (client: dcdn fetch, verifying BLAKE3)"
fi
