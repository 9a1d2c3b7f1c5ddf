#!/usr/bin/env python3
"""The live-video figures of issue #16, measured as players see them.

Starts `dcdn up --relays 1 --edges 2` with the given binary and publishes
two streams at once, in real time:

- LL-HLS ("ll"): a 40 KB part every 0.5 s, then the playlist listing it
  with a preload hint for the next. Before each part is PUT, every edge is
  sent the hinted GET for it and a blocking reload (`_HLS_msn`/`_HLS_part`)
  for it, as hls.js does. Measured, from the origin's 201:
    part uploaded      -> the hinted GET's whole body at every edge
    playlist uploaded  -> the blocking reload answered at every edge
  (the slowest edge of each round: "at every edge").
- Plain HLS ("hls"): a 150 KB segment every 2 s, then the playlist. A
  player at each edge reloads the playlist every half target duration
  (what HLS clients do while the playlist is unchanged) and fetches each
  new segment at once (at a random phase each time; see hls_player).

Publish -> player latency, the nearest honest proxy without a camera: the
first frame of a unit (part or segment) exists when the encoder starts it,
one unit duration before its upload ends; the player has it when its body
arrived. LL-HLS: 0.5 s + part 201 -> body at the edge. HLS: 2 s + segment
201 -> the polling player holds the segment. Encoding and upload time are
the same for both and left out; the player's own buffer (HOLD-BACK) too.

Usage: live_figures.py DCDN_BINARY [SECONDS]
"""
import http.client
import json
import random
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BIN = sys.argv[1]
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
PART, PART_BYTES = 0.5, 40_000
SEGMENT, SEGMENT_BYTES = 2.0, 150_000


def request(base, method, path, body=None, token=None, timeout=30):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def ll_playlist(done, ended=False):
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5",
        f"#EXT-X-PART-INF:PART-TARGET={PART}",
    ]
    first = max(0, done // 2 - 6)
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{first}")
    for msn in range(first, done // 2):
        for i in range(2):
            lines.append(f'#EXT-X-PART:DURATION={PART},URI="s{msn}.{i}.m4s"')
        lines += ["#EXTINF:1.000,", f"s{msn}.{0}.m4s"]
    if done % 2:
        lines.append(f'#EXT-X-PART:DURATION={PART},URI="s{done // 2}.0.m4s"')
    if ended:
        lines.append("#EXT-X-ENDLIST")
    else:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="s{done // 2}.{done % 2}.m4s"')
    return ("\n".join(lines) + "\n").encode()


def hls_playlist(done, ended=False):
    first = max(0, done - 6)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    for n in range(first, done):
        lines += ["#EXTINF:2.000,", f"seg{n}.ts"]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


def body(seed, n):
    return bytes((i * 2654435761 + seed * 40503) >> 8 & 0xFF for i in range(n))


work = tempfile.mkdtemp(prefix="dcdn-live-figures-")
up = subprocess.Popen(
    [BIN, "up", "--relays", "1", "--edges", "2", "--json", "--dir", f"{work}/cluster"],
    stdout=subprocess.PIPE,
    stderr=open(f"{work}/up.log", "w"),
)
try:
    info = json.loads(up.stdout.readline())
    ORIGIN = [n["ingest"] for n in info["nodes"] if n.get("ingest")][0]
    EDGES = [n["serve"] for n in info["nodes"] if n.get("serve")]
    TOKEN = info["ingest_token"]
    errors = []
    part_lat, playlist_lat = [], []
    hls_seen = []  # segment 201 -> a polling player holds it (each edge's player)

    def ll_publisher():
        request(ORIGIN, "PUT", "/live/ll/index.m3u8", ll_playlist(0), TOKEN)
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < SECONDS:
            msn, i = divmod(n, 2)
            part = body(n, PART_BYTES + n)
            done = {}

            def hinted(edge):
                s, b = request(edge, "GET", f"/live/ll/s{msn}.{i}.m4s")
                done[("get", edge)] = time.monotonic()
                if s != 200 or b != part:
                    errors.append(f"hinted s{msn}.{i} at {edge}: {s}, {len(b)} bytes")

            def reload(edge):
                s, b = request(edge, "GET", f"/live/ll/index.m3u8?_HLS_msn={msn}&_HLS_part={i}")
                done[("reload", edge)] = time.monotonic()
                if s != 200 or f"s{msn}.{i}.m4s".encode() not in b:
                    errors.append(f"reload {msn}.{i} at {edge}: {s}")

            waiters = [threading.Thread(target=f, args=(e,)) for e in EDGES for f in (hinted, reload)]
            for t in waiters:
                t.start()
            time.sleep(max(0.05, start + (n + 1) * PART - time.monotonic()))
            s, _ = request(ORIGIN, "PUT", f"/live/ll/s{msn}.{i}.m4s", part, TOKEN)
            part_acked = time.monotonic()
            s2, _ = request(ORIGIN, "PUT", "/live/ll/index.m3u8", ll_playlist(n + 1), TOKEN)
            playlist_acked = time.monotonic()
            if s != 201 or s2 != 201:
                errors.append(f"publishing part {n}: {s} {s2}")
            for t in waiters:
                t.join()
            if n >= 4:  # past the start-up
                part_lat.append(max(done[("get", e)] for e in EDGES) - part_acked)
                playlist_lat.append(max(done[("reload", e)] for e in EDGES) - playlist_acked)
            n += 1
        request(ORIGIN, "PUT", "/live/ll/index.m3u8", ll_playlist(n, ended=True), TOKEN)

    acked_seg = {}

    def hls_publisher():
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < SECONDS:
            time.sleep(max(0.0, start + (n + 1) * SEGMENT - time.monotonic()))
            s, _ = request(ORIGIN, "PUT", f"/live/hls/seg{n}.ts", body(1000 + n, SEGMENT_BYTES + n), TOKEN)
            acked_seg[n] = time.monotonic()
            s2, _ = request(ORIGIN, "PUT", "/live/hls/index.m3u8", hls_playlist(n + 1), TOKEN)
            if s != 201 or s2 != 201:
                errors.append(f"publishing segment {n}: {s} {s2}")
            n += 1
        request(ORIGIN, "PUT", "/live/hls/index.m3u8", hls_playlist(n, ended=True), TOKEN)

    held = {e: {} for e in EDGES}  # edge -> segment -> when the player held it

    def hls_player(edge):
        have = set()
        while True:
            s, b = request(edge, "GET", "/live/hls/index.m3u8")
            text = b.decode() if s == 200 else ""
            for line in text.splitlines():
                if line.startswith("seg") and line not in have:
                    have.add(line)
                    s3, _ = request(edge, "GET", f"/live/hls/{line}")
                    if s3 == 200:
                        held[edge][int(line[3:-3])] = time.monotonic()
            if "#EXT-X-ENDLIST" in text:
                return
            # Half a target duration on average, at a random phase each
            # time: a fixed phase would lock to the publisher's cadence
            # and report one lucky (or unlucky) offset.
            time.sleep(random.uniform(0.0, SEGMENT))

    threads = [threading.Thread(target=ll_publisher), threading.Thread(target=hls_publisher)]
    threads += [threading.Thread(target=hls_player, args=(e,)) for e in EDGES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("live_figures: FAIL: " + "; ".join(errors[:5]))
    for n, at in acked_seg.items():
        hls_seen += [held[e][n] - at for e in EDGES if n >= 2 and n in held[e]]
    ms = lambda x: f"{x * 1000:.1f} ms"
    print(f"live_figures: {BIN}; {SECONDS:.0f} s in real time; 1 relay, 2 edges; load {os.getloadavg()[0]:.1f}")
    print(
        f"  LL-HLS part (40 KB) 201 -> hinted GET whole at every edge: n={len(part_lat)} "
        f"p50 {ms(pct(part_lat, 0.5))} p99 {ms(pct(part_lat, 0.99))} max {ms(max(part_lat))}"
    )
    print(
        f"  LL-HLS playlist 201 -> blocking reload answered at every edge: n={len(playlist_lat)} "
        f"p50 {ms(pct(playlist_lat, 0.5))} p99 {ms(pct(playlist_lat, 0.99))} max {ms(max(playlist_lat))}"
    )
    print(
        f"  HLS segment (150 KB) 201 -> a player polling every {SEGMENT / 2:.0f} s on average holds it: "
        f"n={len(hls_seen)} p50 {ms(pct(hls_seen, 0.5))} p99 {ms(pct(hls_seen, 0.99))}"
    )
    ll = [PART + x for x in part_lat]
    hls = [SEGMENT + x for x in hls_seen]
    print(
        f"  first frame of a unit encoded -> player holds it (unit duration + the above): "
        f"LL-HLS p50 {ms(pct(ll, 0.5))} p99 {ms(pct(ll, 0.99))}; HLS p50 {ms(pct(hls, 0.5))} "
        f"p99 {ms(pct(hls, 0.99))}; HLS/LL-HLS p50 {pct(hls, 0.5) / pct(ll, 0.5):.1f}x"
    )
finally:
    up.terminate()
    up.wait()
