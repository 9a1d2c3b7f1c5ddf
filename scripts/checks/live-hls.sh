#!/usr/bin/env bash
# Live video with the real encoder and player: `dcdn up` runs an origin, a
# relay and two edges, and three streams are published at once, in real
# time:
# - HLS: ffmpeg publishes a 20 s stream (2 s segments) to the origin with
#   -method PUT; another ffmpeg plays it from an edge while it is published.
#   Passes only if the player decoded every frame the publisher sent, in
#   order and bit-identical (framemd5 against the source), if every segment
#   the other edge serves is byte-identical to the same muxing done
#   locally, and if both edges answer the right Content-Type and
#   Cache-Control.
# - DASH: ffmpeg's dash muxer publishes the same source (-method PUT, the
#   token through -http_opts); the edge serves a dynamic MPD while it runs,
#   and ffmpeg reading the final MPD from the other edge decodes every frame
#   bit-identical.
# - LL-HLS: scripts/checks/llhls.py cuts an ffmpeg-made fragmented MP4 into
#   0.5 s parts and publishes them with an LL-HLS playlist while it drives
#   blocking reloads and preload-hinted GETs at an edge (see there); then
#   ffmpeg plays the final playlist from the other edge, every frame
#   bit-identical.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v ffmpeg >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
# The workspace's feature set, so the binary nextest already built is reused.
cargo build --locked -q --workspace --bins

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "live-hls: FAIL: $*" >&2; tail -n 20 "$work"/*.log >&2 || true; exit 1; }

target/debug/dcdn up --relays 1 --edges 2 --json --dir "$work/cluster" >"$work/up.json" 2>"$work/up.log" &
pids+=($!)
for _ in $(seq 600); do [ -s "$work/up.json" ] && break; sleep 0.1; done
[ -s "$work/up.json" ] || fail "dcdn up did not report ready in 60 s"
read -r ORIGIN TOKEN EDGE1 EDGE2 < <(python3 - "$work/up.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).readline())
edges = [n["serve"] for n in r["nodes"] if n.get("serve")]
origin = [n["ingest"] for n in r["nodes"] if n.get("ingest")][0]
print(origin, r["ingest_token"], edges[0], edges[1])
PY
)

# The source, encoded once: a keyframe every 2 s so hls_time 2 cuts 10
# segments; its decoded frames are what the player must show.
ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc=size=320x240:rate=25 -t 20 \
  -c:v libx264 -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p "$work/src.ts"
ffmpeg -hide_banner -loglevel error -i "$work/src.ts" -f framemd5 "$work/ref.md5"
mkdir "$work/local"
ffmpeg -hide_banner -loglevel error -i "$work/src.ts" -c copy -f hls -hls_time 2 \
  -hls_list_size 0 "$work/local/index.m3u8"

# LL-HLS source: 1 s GOPs, one MP4 fragment (a part) per 0.5 s.
ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc=size=320x240:rate=24 -t 10 \
  -c:v libx264 -g 24 -keyint_min 24 -sc_threshold 0 -pix_fmt yuv420p -f mp4 \
  -movflags +empty_moov+default_base_moof+frag_keyframe -frag_duration 500000 "$work/frag.mp4"
ffmpeg -hide_banner -loglevel error -i "$work/frag.mp4" -f framemd5 "$work/llref.md5"

start=$(date +%s)
python3 scripts/checks/llhls.py "$ORIGIN" "$TOKEN" "$EDGE1" "$work/frag.mp4" "$work" \
  >"$work/llhls.log" 2>&1 &
llhls=$!
pids+=("$llhls")
# ffmpeg's -http_opts is a dictionary: the header goes quoted, CRLF inside.
ffmpeg -hide_banner -loglevel error -re -i "$work/src.ts" -c copy -tag:v avc1 -f dash \
  -seg_duration 2 -window_size 0 -method PUT \
  -http_opts "headers='Authorization: Bearer $TOKEN"$'\r\n'"'" \
  "$ORIGIN/live/dash/manifest.mpd" >"$work/dash.log" 2>&1 &
dash=$!
pids+=("$dash")
ffmpeg -hide_banner -loglevel error -re -i "$work/src.ts" -c copy -f hls -hls_time 2 \
  -hls_list_size 6 -hls_flags delete_segments -method PUT \
  -headers "Authorization: Bearer $TOKEN"$'\r\n' \
  "$ORIGIN/live/cam/index.m3u8" >"$work/publish.log" 2>&1 &
publisher=$!
pids+=("$publisher")

# The player joins as soon as the edge has a playlist, and starts from its
# first segment (a live player would start 3 from the end).
for _ in $(seq 200); do
  curl -fsS -o /dev/null "$EDGE1/live/cam/index.m3u8" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "$EDGE1/live/cam/index.m3u8" || fail "edge 1 never served the playlist"
timeout 90 ffmpeg -hide_banner -loglevel error -live_start_index 0 \
  -i "$EDGE1/live/cam/index.m3u8" -f framemd5 "$work/play.md5" >"$work/player.log" 2>&1 &
player=$!
pids+=("$player")

# While DASH is live, the edge serves the publisher's dynamic MPD.
dynamic=no
for _ in $(seq 100); do
  if curl -fsS "$EDGE2/live/dash/manifest.mpd" 2>/dev/null | grep -q 'type="dynamic"'; then
    dynamic=yes
    break
  fi
  sleep 0.1
done
[ "$dynamic" = yes ] || fail "edge 2 never served a dynamic (live) MPD"

wait "$publisher" || fail "the publisher failed"
wait "$player" || fail "the player failed"
wait "$dash" || fail "the DASH publisher failed: $(cat "$work/dash.log")"
wait "$llhls" || fail "LL-HLS: $(cat "$work/llhls.log")"
cat "$work/llhls.log"
echo "live-hls: published and played in $(( $(date +%s) - start )) s"

same_frames() { # reference, played, what
  python3 - "$1" "$2" "$3" <<'PY'
import sys
def hashes(path):
    return [l.rsplit(",", 1)[1].strip() for l in open(path) if l.strip() and not l.startswith("#")]
ref, play = hashes(sys.argv[1]), hashes(sys.argv[2])
if ref != play:
    first = next((i for i, (a, b) in enumerate(zip(ref, play)) if a != b), min(len(ref), len(play)))
    sys.exit(f"live-hls: FAIL: {sys.argv[3]}: the player decoded {len(play)} frames, source has {len(ref)}; first difference at frame {first}")
print(f"live-hls: {sys.argv[3]}: the player decoded all {len(play)} frames, in order, bit-identical")
PY
}
# The DASH stream and the LL-HLS stream, each played whole from edge 2.
timeout 60 ffmpeg -hide_banner -loglevel error -i "$EDGE2/live/dash/manifest.mpd" \
  -f framemd5 "$work/dash.md5" >"$work/dashplay.log" 2>&1 || fail "DASH player: $(cat "$work/dashplay.log")"
same_frames "$work/ref.md5" "$work/dash.md5" DASH
timeout 60 ffmpeg -hide_banner -loglevel error -live_start_index 0 -i "$EDGE2/live/ll/index.m3u8" \
  -f framemd5 "$work/ll.md5" >"$work/llplay.log" 2>&1 || fail "LL-HLS player: $(cat "$work/llplay.log")"
same_frames "$work/llref.md5" "$work/ll.md5" LL-HLS

python3 - "$work/ref.md5" "$work/play.md5" <<'PY'
import sys
def hashes(path):
    return [l.rsplit(",", 1)[1].strip() for l in open(path) if l.strip() and not l.startswith("#")]
ref, play = hashes(sys.argv[1]), hashes(sys.argv[2])
if ref != play:
    first = next((i for i, (a, b) in enumerate(zip(ref, play)) if a != b), min(len(ref), len(play)))
    sys.exit(f"live-hls: FAIL: player decoded {len(play)} frames, source has {len(ref)}; first difference at frame {first}")
print(f"live-hls: the player decoded all {len(play)} frames, in order, bit-identical")
PY

# Every segment the final playlist names, from the other edge, is the bytes
# the publisher muxed (the same muxing done locally), with its headers.
curl -fsS -D "$work/pl.h" -o "$work/final.m3u8" "$EDGE2/live/cam/index.m3u8" || fail "edge 2 playlist"
grep -q '#EXT-X-ENDLIST' "$work/final.m3u8" || fail "edge 2 serves a stale playlist (no ENDLIST): $(cat "$work/final.m3u8")"
grep -qi '^content-type: application/vnd.apple.mpegurl' "$work/pl.h" || fail "playlist content type"
grep -qi '^cache-control: no-cache' "$work/pl.h" || fail "playlist cache-control"
segments=0
for seg in $(grep -v '^#' "$work/final.m3u8"); do
  curl -fsS -D "$work/seg.h" -o "$work/seg.ts" "$EDGE2/live/cam/$seg" || fail "edge 2 $seg"
  cmp -s "$work/seg.ts" "$work/local/$seg" || fail "$seg from edge 2 differs from what was published"
  grep -qi '^content-type: video/mp2t' "$work/seg.h" || fail "$seg content type"
  grep -qi '^cache-control: .*immutable' "$work/seg.h" || fail "$seg cache-control"
  segments=$((segments + 1))
done
[ "$segments" -ge 5 ] || fail "the final playlist names only $segments segments"
code=$(curl -s -o /dev/null -w '%{http_code}' "$EDGE2/live/cam/nope.ts")
[ "$code" = 404 ] || fail "an unpublished segment answered $code"
echo "live-hls: $segments segments byte-identical at edge 2; headers right"
