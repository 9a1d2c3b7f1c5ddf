#!/usr/bin/env bash
# HTTPS, HTTP/2, HTTP/1.1 and HTTP/3 as clients meet them (issue #20), on a
# `dcdn up --tls` cluster (1 relay, 1 edge):
#  - publishing over HTTPS (`dcdn publish --cacert`, curl -T), and the
#    origin refusing clear text, so the token never crosses in clear;
#  - curl --http2 and --http1.1: whole objects, Range (206), If-None-Match
#    (304), errors, Alt-Svc; `dcdn fetch --cacert` verifies the ETag;
#  - a real HTTP/3 client (aioquic, scripts/checks/h3get.py): an object and
#    a Range, byte-identical;
#  - ffmpeg playing an HLS VOD (published as plain objects) from the
#    https:// edge URL, frame for frame what it plays from the local files.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl >/dev/null)
command -v ffmpeg >/dev/null || (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null)
# shellcheck source=scripts/lib-venv.sh
source scripts/lib-venv.sh
pip_need aioquic
py="$VENV/bin/python"

cargo build --locked -q --workspace --bins
dcdn="$root/target/debug/dcdn"

work=$(mktemp -d)
up_pid=""
cleanup() {
  [ -n "$up_pid" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
fail() { echo "FAIL: $*" >&2; [ -f "$work/up.err" ] && tail -20 "$work/up.err" >&2; exit 1; }

"$dcdn" up --tls --relays 1 --edges 1 --dir "$work/dcdn" --json > "$work/up.json" 2> "$work/up.err" &
up_pid=$!
for _ in $(seq 1 300); do [ -s "$work/up.json" ] && break; sleep 0.1; done
[ -s "$work/up.json" ] || fail "dcdn up --tls did not come up"
read -r origin edge token ca < <("$py" -c '
import json,sys
r=json.load(open(sys.argv[1]))
o=[n["ingest"] for n in r["nodes"] if "ingest" in n][0]
e=[n["serve"] for n in r["nodes"] if "serve" in n][0]
print(o, e, r["ingest_token"], r["ca_file"])' "$work/up.json")
case "$origin $edge" in https://*" "https://*) ;; *) fail "up --tls printed $origin $edge";; esac
[ -f "$ca" ] || fail "no CA file at $ca"
port=${edge##*:}

# Publishing: over HTTPS only.
head -c 3000000 /dev/urandom > "$work/obj.bin"
"$dcdn" publish "$work/obj.bin" --name obj.bin --origin "$origin" --token "$token" --cacert "$ca" > /dev/null \
  || fail "dcdn publish over HTTPS"
head -c 70000 /dev/urandom > "$work/small.bin"
curl -sf --cacert "$ca" -T "$work/small.bin" -H "Authorization: Bearer $token" "$origin/v1/objects/small.bin" > /dev/null \
  || fail "curl -T over HTTPS"
if curl -s -m 5 -T "$work/small.bin" -H "Authorization: Bearer $token" "http://${origin#https://}/v1/objects/clear.bin" > /dev/null 2>&1; then
  fail "the origin took a clear-text upload"
fi
echo "ok: uploads over HTTPS; clear text refused"

# The edge gets the object as the mesh delivers it.
for _ in $(seq 1 100); do
  curl -sf --cacert "$ca" -o /dev/null "$edge/v1/objects/obj.bin" && break; sleep 0.2
done
for v in --http2 --http1.1; do
  want=${v#--http}
  got=$(curl -sf --cacert "$ca" "$v" -o "$work/got$v" -w '%{http_version}' "$edge/v1/objects/obj.bin") || fail "curl $v"
  [ "$got" = "$want" ] || fail "curl $v spoke HTTP/$got"
  cmp -s "$work/got$v" "$work/obj.bin" || fail "curl $v: bytes differ"
  code=$(curl -sf --cacert "$ca" "$v" -r 1000000-1999999 -o "$work/range$v" -w '%{http_code}' "$edge/v1/objects/obj.bin")
  [ "$code" = 206 ] || fail "curl $v Range answered $code"
  cmp -s "$work/range$v" <(tail -c +1000001 "$work/obj.bin" | head -c 1000000) || fail "curl $v: Range bytes differ"
  etag=$(curl -sf --cacert "$ca" "$v" -I "$edge/v1/objects/obj.bin" | tr -d '\r' | sed -n 's/^etag: //Ip')
  [ -n "$etag" ] || fail "curl $v: no ETag"
  code=$(curl -s --cacert "$ca" "$v" -H "If-None-Match: $etag" -o /dev/null -w '%{http_code}' "$edge/v1/objects/obj.bin")
  [ "$code" = 304 ] || fail "curl $v If-None-Match answered $code"
  code=$(curl -s --cacert "$ca" "$v" -o "$work/err" -w '%{http_code}' "$edge/v1/objects/missing.bin")
  if [ "$code" != 404 ] || ! grep -q '"code"' "$work/err"; then
    fail "curl $v: a missing object answered $code $(cat "$work/err")"
  fi
  alt=$(curl -sf --cacert "$ca" "$v" -I "$edge/v1/objects/obj.bin" | tr -d '\r' | sed -n 's/^alt-svc: //Ip')
  [ "$alt" = "h3=\":$port\"; ma=86400" ] || fail "curl $v: Alt-Svc is '$alt'"
  echo "ok: curl $v: object, Range 206, If-None-Match 304, 404, Alt-Svc"
done
"$dcdn" fetch "$edge/v1/objects/obj.bin" -o "$work/fetched.bin" --cacert "$ca" > /dev/null || fail "dcdn fetch --cacert"
cmp -s "$work/fetched.bin" "$work/obj.bin" || fail "dcdn fetch: bytes differ"
echo "ok: dcdn fetch over HTTPS, verified"

# HTTP/3 with a real QUIC client.
"$py" scripts/checks/h3get.py "$edge/v1/objects/obj.bin" "$work/h3.bin" --cacert "$ca" > "$work/h3.json" \
  || fail "HTTP/3 GET"
grep -q '"status": 200' "$work/h3.json" || fail "HTTP/3 GET: $(cat "$work/h3.json")"
cmp -s "$work/h3.bin" "$work/obj.bin" || fail "HTTP/3: bytes differ"
"$py" scripts/checks/h3get.py "$edge/v1/objects/obj.bin" "$work/h3range.bin" --cacert "$ca" \
  --header "Range: bytes=1000000-1999999" > "$work/h3range.json" || fail "HTTP/3 Range GET"
grep -q '"status": 206' "$work/h3range.json" || fail "HTTP/3 Range: $(cat "$work/h3range.json")"
cmp -s "$work/h3range.bin" "$work/range--http2" || fail "HTTP/3 Range: bytes differ"
etag=$(curl -sf --cacert "$ca" -I "$edge/v1/objects/obj.bin" | tr -d '\r' | sed -n 's/^etag: //Ip')
"$py" scripts/checks/h3get.py "$edge/v1/objects/obj.bin" "$work/h3304.bin" --cacert "$ca" \
  --header "If-None-Match: $etag" > "$work/h3304.json" || fail "HTTP/3 conditional GET"
grep -q '"status": 304' "$work/h3304.json" || fail "HTTP/3 If-None-Match: $(cat "$work/h3304.json")"
"$py" scripts/checks/h3get.py "$edge/v1/objects/missing.bin" "$work/h3404.bin" --cacert "$ca" > "$work/h3404.json" \
  || fail "HTTP/3 GET of a missing object"
if ! grep -q '"status": 404' "$work/h3404.json" || ! grep -q '"code"' "$work/h3404.bin"; then
  fail "HTTP/3 404: $(cat "$work/h3404.json")"
fi
echo "ok: HTTP/3 (aioquic): object and Range byte-identical, 304, 404"

# HLS over HTTPS: a VOD cut by ffmpeg, each file published as an object,
# played by ffmpeg from the edge with certificate verification on.
mkdir -p "$work/hls"
ffmpeg -loglevel error -f lavfi -i testsrc=duration=4:size=320x240:rate=25 \
  -f lavfi -i sine=frequency=440:duration=4 -c:v libx264 -preset ultrafast -g 25 -c:a aac \
  -f hls -hls_time 1 -hls_playlist_type vod -hls_segment_filename "$work/hls/seg%d.ts" "$work/hls/index.m3u8"
for f in "$work"/hls/*; do
  "$dcdn" publish "$f" --name "hls/$(basename "$f")" --origin "$origin" --token "$token" --cacert "$ca" > /dev/null \
    || fail "publishing $(basename "$f")"
done
for _ in $(seq 1 100); do
  curl -sf --cacert "$ca" -o /dev/null "$edge/v1/objects/hls/index.m3u8" && break; sleep 0.2
done
ffmpeg -loglevel error -i "$work/hls/index.m3u8" -map 0:v -f framemd5 "$work/local.md5"
ffmpeg -loglevel error -tls_verify 1 -ca_file "$ca" -i "$edge/v1/objects/hls/index.m3u8" -map 0:v -f framemd5 "$work/edge.md5" \
  || fail "ffmpeg could not play the HLS stream from $edge"
if ffmpeg -loglevel quiet -tls_verify 1 -i "$edge/v1/objects/hls/index.m3u8" -map 0:v -f null - 2>/dev/null; then
  fail "ffmpeg played from the edge without trusting its CA: certificate verification is off"
fi
frames=$(grep -vc '^#' "$work/edge.md5")
[ "$frames" -ge 90 ] || fail "ffmpeg played $frames frames"
cmp -s "$work/local.md5" "$work/edge.md5" || fail "ffmpeg played different frames from the edge"
echo "ok: ffmpeg played the HLS VOD over HTTPS ($frames frames, identical)"
echo "https check passed"
