#!/usr/bin/env python3
"""A long live stream with a DVR window: edge memory stays flat.

Starts `dcdn up --relays 1 --edges 2` with the given binary and
`live.dvr_window_seconds` = WINDOW (through DCDN_LIVE_DVR_WINDOW_SECONDS),
then publishes MEDIA seconds of HLS (2 s segments of 500 KB, ~2 Mbit/s,
and the playlist after each) at SPEED times real time: with SPEED > 1 the
stream is faster than real time and the window, which counts wall-clock
seconds from the origin's signing time, holds SPEED times more media —
the bound scales with it, the shape (flat once full) does not. Every few
seconds it reads each edge's /metrics: process_resident_memory_bytes,
dcdn_store_bytes, dcdn_live_held_bytes{stream}.

Fails if, at any edge, in the second half of the run (the window long
full) the store or the held bytes exceed what the window can hold, or the
resident memory grows by more than 8 MB + 10 % over its value at the
half-way point. Prints the series' summary.

Usage: live_dvr.py DCDN_BINARY MEDIA_SECONDS WINDOW_SECONDS SPEED
"""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

BIN = sys.argv[1]
MEDIA, WINDOW, SPEED = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
SEGMENT, SEGMENT_BYTES = 2.0, 500_000


def request(base, method, path, body=None, token=None):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"} if token else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def metric(text, name, label=None):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and (label is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


work = tempfile.mkdtemp(prefix="dcdn-live-dvr-")
env = dict(os.environ, DCDN_LIVE_DVR_WINDOW_SECONDS=str(WINDOW))
up = subprocess.Popen(
    [BIN, "up", "--relays", "1", "--edges", "2", "--json", "--dir", f"{work}/cluster"],
    stdout=subprocess.PIPE,
    stderr=open(f"{work}/up.log", "w"),
    env=env,
)
try:
    info = json.loads(up.stdout.readline())
    ORIGIN = [n["ingest"] for n in info["nodes"] if n.get("ingest")][0]
    EDGES = [n["admin"] for n in info["nodes"] if n.get("serve")]
    SERVE = [n["serve"] for n in info["nodes"] if n.get("serve")]
    TOKEN = info["ingest_token"]
    # Random bytes: the store cannot hold less by compressing or deduplicating.
    blob = os.urandom(SEGMENT_BYTES + 4096)
    samples = []  # (seconds since start, edge, rss, store, held)
    segments = int(MEDIA / SEGMENT)
    start = time.monotonic()
    next_sample = start
    for n in range(segments):
        time.sleep(max(0.0, start + n * SEGMENT / SPEED - time.monotonic()))
        seg = blob[n % 4096 : n % 4096 + SEGMENT_BYTES]
        s1, _ = request(ORIGIN, "PUT", f"/live/dvr/seg{n}.ts", seg, TOKEN)
        first = max(0, n - 5)
        pl = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
        pl += f"#EXT-X-MEDIA-SEQUENCE:{first}\n"
        pl += "".join(f"#EXTINF:2.000,\nseg{i}.ts\n" for i in range(first, n + 1))
        s2, _ = request(ORIGIN, "PUT", "/live/dvr/index.m3u8", pl.encode(), TOKEN)
        if (s1, s2) != (201, 201):
            sys.exit(f"live_dvr: FAIL: publishing segment {n}: {s1} {s2}")
        if time.monotonic() >= next_sample:
            next_sample += 5.0
            for i, admin in enumerate(EDGES):
                _, text = request(admin, "GET", "/metrics")
                text = text.decode()
                samples.append((
                    time.monotonic() - start,
                    i,
                    metric(text, "process_resident_memory_bytes"),
                    metric(text, "dcdn_store_bytes"),
                    metric(text, "dcdn_live_held_bytes", 'stream="dvr"'),
                ))
    elapsed = time.monotonic() - start
    # A player at the edge still gets the newest segment whole.
    s, b = request(SERVE[0], "GET", f"/live/dvr/seg{segments - 1}.ts")
    if s != 200 or len(b) != SEGMENT_BYTES:
        sys.exit(f"live_dvr: FAIL: the newest segment answered {s}, {len(b)} bytes")
    # What the window may hold: the segments signed within it, plus the
    # expiry tick and a segment in flight, and two playlist versions.
    window_bytes = (WINDOW * SPEED / SEGMENT + 2) * SEGMENT_BYTES + 10_000
    half = elapsed / 2
    assert half > WINDOW, f"the run ({elapsed:.0f} s) must last over twice the window"
    failures = []
    print(
        f"live_dvr: {BIN}; {segments} segments ({MEDIA:.0f} s of media, {segments * SEGMENT_BYTES / 1e6:.0f} MB) "
        f"in {elapsed:.0f} s ({SPEED:g}x real time), window {WINDOW} s (holds <= {window_bytes / 1e6:.1f} MB)"
    )
    for i in range(len(EDGES)):
        mine = [s for s in samples if s[1] == i]
        at_half = min(mine, key=lambda s: abs(s[0] - half))
        second = [s for s in mine if s[0] >= half]
        rss_max = max(s[2] for s in second)
        store_max = max(s[3] for s in second)
        held_max = max(s[4] for s in second)
        growth = rss_max - at_half[2]
        print(
            f"  edge {i}: RSS at {at_half[0]:.0f} s {at_half[2] / 1e6:.1f} MB, most after it {rss_max / 1e6:.1f} MB "
            f"(+{growth / 1e6:.1f} MB), at the end {mine[-1][2] / 1e6:.1f} MB; store most in 2nd half "
            f"{store_max / 1e6:.1f} MB, held {held_max / 1e6:.1f} MB; RSS series (MB): "
            + " ".join(f"{s[2] / 1e6:.0f}" for s in mine)
        )
        if store_max > window_bytes or held_max > window_bytes:
            failures.append(f"edge {i} held {held_max:.0f} / stored {store_max:.0f} bytes, window {window_bytes:.0f}")
        if growth > 8e6 + 0.1 * at_half[2]:
            failures.append(f"edge {i} RSS grew {growth / 1e6:.1f} MB in the second half")
    if failures:
        sys.exit("live_dvr: FAIL: " + "; ".join(failures))
    print("live_dvr: edge memory flat in the second half")
finally:
    up.terminate()
    up.wait()
