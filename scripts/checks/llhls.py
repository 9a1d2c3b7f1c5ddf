#!/usr/bin/env python3
"""A Low-Latency HLS publisher and player against a real dcdn cluster.

ffmpeg cannot publish LL-HLS parts, so this script does what an LL-HLS
packager does, with bytes ffmpeg made: it cuts a fragmented MP4 (one
moof+mdat per 0.5 s) into partial segments, PUTs each part to the origin as
its own file (`s{msn}.{i}.m4s`), then the playlist listing it with
EXT-X-PART and an EXT-X-PRELOAD-HINT for the next; each full segment (its
parts concatenated, `s{msn}.m4s`) follows its last part. Real time: one
part every 0.5 s.

At the same time a player at an edge does what an LL-HLS client does, with
a real HTTP client: blocking playlist reloads (`_HLS_msn`, `_HLS_part`) for
the next part, and a GET of the hinted part issued before it exists. It
checks that every reload returns a playlist listing what it asked for, that
no reload was answered empty-handed, that every hinted part arrives with
the publisher's bytes, and it reports how long after the origin
acknowledged a part the edge released the reload listing it. At the end:
a delta update (`_HLS_skip=YES`), a request too far ahead (400), and the
final playlist written for ffmpeg to play.

Usage: llhls.py ORIGIN TOKEN EDGE FRAG_MP4 OUT_DIR
"""
import http.client
import json
import struct
import sys
import threading
import time
import urllib.parse

ORIGIN, TOKEN, EDGE, FRAG, OUT = sys.argv[1:6]
STREAM = "ll"
PART = 0.5
PARTS_PER_SEGMENT = 2
TARGET = 1


def fail(msg):
    print(f"llhls: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)



def boxes(data):
    i = 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if size < 8:
            fail(f"bad MP4 box at {i}")
        yield kind.decode("latin1"), data[i : i + size]
        i += size


def conn(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def put(path, body):
    c = conn(ORIGIN)
    c.request("PUT", path, body=body, headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.getresponse()
    text = r.read()
    c.close()
    if r.status != 201:
        fail(f"PUT {path}: {r.status} {text[:200]!r}")
    return json.loads(text)


def get(path, timeout=30):
    u = urllib.parse.urlsplit(EDGE)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


data = open(FRAG, "rb").read()
init, parts, pending = b"", [], b""
for kind, box in boxes(data):
    if kind in ("ftyp", "moov"):
        init += box
    elif kind == "moof":
        pending = box
    elif kind == "mdat":
        parts.append(pending + box)
        pending = b""
if len(parts) % PARTS_PER_SEGMENT or not parts:
    fail(f"{len(parts)} fragments do not make whole {PARTS_PER_SEGMENT}-part segments")
segments = len(parts) // PARTS_PER_SEGMENT


def playlist(done_parts, ended=False):
    """The playlist once `done_parts` parts are published."""
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        f"#EXT-X-TARGETDURATION:{TARGET}",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,PART-HOLD-BACK=1.5",
        f"#EXT-X-PART-INF:PART-TARGET={PART}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        '#EXT-X-MAP:URI="init.mp4"',
    ]
    complete = done_parts // PARTS_PER_SEGMENT
    for msn in range(complete):
        # Parts are listed for the newest segments only, as packagers do.
        if msn >= complete - 3:
            for i in range(PARTS_PER_SEGMENT):
                ind = ",INDEPENDENT=YES" if i == 0 else ""
                lines.append(f'#EXT-X-PART:DURATION={PART},URI="s{msn}.{i}.m4s"{ind}')
        lines += [f"#EXTINF:{PART * PARTS_PER_SEGMENT:.3f},", f"s{msn}.m4s"]
    for i in range(done_parts % PARTS_PER_SEGMENT):
        ind = ",INDEPENDENT=YES" if i == 0 else ""
        lines.append(f'#EXT-X-PART:DURATION={PART},URI="s{complete}.{i}.m4s"{ind}')
    if ended:
        lines.append("#EXT-X-ENDLIST")
    else:
        nxt = done_parts % PARTS_PER_SEGMENT
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="s{complete}.{nxt}.m4s"')
    return ("\n".join(lines) + "\n").encode()


acked = {}  # (msn, part) -> monotonic time the origin acknowledged the part
errors = []


def publisher():
    put(f"/live/{STREAM}/init.mp4", init)
    start = time.monotonic()
    for n, part in enumerate(parts):
        # Real time: part n is whole 0.5 s after part n-1.
        time.sleep(max(0.0, start + n * PART - time.monotonic()))
        msn, i = divmod(n, PARTS_PER_SEGMENT)
        put(f"/live/{STREAM}/s{msn}.{i}.m4s", part)
        acked[(msn, i)] = time.monotonic()
        if i == PARTS_PER_SEGMENT - 1:
            whole = b"".join(parts[msn * PARTS_PER_SEGMENT : (msn + 1) * PARTS_PER_SEGMENT])
            put(f"/live/{STREAM}/s{msn}.m4s", whole)
        put(f"/live/{STREAM}/index.m3u8", playlist(n + 1))
    put(f"/live/{STREAM}/index.m3u8", playlist(len(parts), ended=True))


def lists(text, msn, part):
    complete = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
    return msn < complete or f'URI="s{msn}.{part}.m4s"' in text


def hinted_get(uri, want):
    status, body = get(f"/live/{STREAM}/{uri}")
    if status != 200 or body != want:
        errors.append(f"hinted {uri}: {status}, {len(body)} bytes")


released = []  # seconds from the origin's 201 for a part to the edge's answer


def player():
    try:
        play()
    except Exception as e:  # a crash is a failure, not a silent pass
        errors.append(f"player: {e!r}")


def play():
    # Join once the stream has a playlist, like a player starting late.
    deadline = time.monotonic() + 20
    while True:
        status, body = get(f"/live/{STREAM}/index.m3u8")
        if status == 200:
            break
        if time.monotonic() > deadline:
            errors.append(f"the edge never served the playlist ({status})")
            return
        time.sleep(0.05)
    text = body.decode()
    hinters = []
    while "#EXT-X-ENDLIST" not in text:
        hint = [l for l in text.splitlines() if l.startswith("#EXT-X-PRELOAD-HINT")][0]
        uri = hint.split('URI="')[1].rstrip('"')
        msn, part = (int(x) for x in uri[1:-4].split("."))
        # The hinted part, asked for before it exists, as hls.js does.
        n = msn * PARTS_PER_SEGMENT + part
        if n < len(parts):
            t = threading.Thread(target=hinted_get, args=(uri, parts[n]))
            t.start()
            hinters.append(t)
        asked = time.monotonic()
        status, body = get(f"/live/{STREAM}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
        if status != 200:
            errors.append(f"blocking reload for {msn}.{part}: {status} {body[:200]!r}")
            return
        text = body.decode()
        if "#EXT-X-ENDLIST" not in text:
            if not lists(text, msn, part):
                errors.append(f"reload for {msn}.{part} answered without it")
                return
            at = acked.get((msn, part))
            if at is None:
                errors.append(f"reload for {msn}.{part} answered before the origin acknowledged it")
                return
            if at > asked:
                released.append(time.monotonic() - at)
    for t in hinters:
        t.join()


def publish():
    try:
        publisher()
    except SystemExit as e:
        errors.append(f"publisher: {e}")


threads = [threading.Thread(target=publish), threading.Thread(target=player)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    fail("; ".join(errors))
# On a loaded machine the player can fall behind the publisher, and a
# reload for a part already listed answers at once; but the one asked
# before its part existed must have been held.
if not released:
    fail(f"none of the reloads was held until its part was published")

# A delta update: segments past the 6 s skip boundary are replaced by
# EXT-X-SKIP, and skipped + listed = all.
status, body = get(f"/live/{STREAM}/index.m3u8?_HLS_skip=YES")
text = body.decode()
skipped = [l for l in text.splitlines() if l.startswith("#EXT-X-SKIP:SKIPPED-SEGMENTS=")]
listed = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
if status != 200 or len(skipped) != 1:
    fail(f"delta update: {status} {text[:300]!r}")
n_skipped = int(skipped[0].split("=")[1])
if n_skipped + listed != segments or n_skipped < 1:
    fail(f"delta update skipped {n_skipped} and listed {listed} of {segments} segments")
# Ended: a reload for what will never come answers at once.
t0 = time.monotonic()
status, _ = get(f"/live/{STREAM}/index.m3u8?_HLS_msn={segments + 1}")
if status != 200 or time.monotonic() - t0 > 1.0:
    fail(f"a reload of an ended stream answered {status} after {time.monotonic() - t0:.2f} s")

open(f"{OUT}/ll.m3u8", "wb").write(get(f"/live/{STREAM}/index.m3u8")[1])
released.sort()
p = lambda q: released[min(len(released) - 1, int(len(released) * q))]
print(
    f"llhls: {len(parts)} parts, {segments} segments published in real time; "
    f"{len(released)} blocking reloads held until their part, every hinted part byte-identical; "
    f"part acknowledged at the origin -> reload answered at the edge: "
    f"p50 {p(0.5) * 1000:.0f} ms, max {released[-1] * 1000:.0f} ms; "
    f"delta update skipped {n_skipped} of {segments}"
)
