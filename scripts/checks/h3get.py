"""A small HTTP/3 client on aioquic's h3 API, for the HTTPS check and the
HTTP/3 figure: GET one URL over QUIC (ALPN h3), write the body to a file,
print one JSON line (status, headers, bytes, seconds, http version).

Usage: h3get.py URL OUT --cacert FILE [--header 'Name: value']... [--server-name NAME]
A stream reset by the server (a body cut short) fails with exit 1.
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.requests = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self.requests:
            req = self.requests.pop(event.stream_id)
            req["done"].set_exception(RuntimeError(f"stream reset by the server (code {event.error_code})"))
            return
        for ev in self.h3.handle_event(event):
            req = self.requests.get(ev.stream_id)
            if req is None:
                continue
            if isinstance(ev, HeadersReceived):
                if req["headers"] is None:
                    req["headers"] = ev.headers
            elif isinstance(ev, DataReceived):
                req["out"].write(ev.data)
                req["bytes"] += len(ev.data)
            if getattr(ev, "stream_ended", False):
                self.requests.pop(ev.stream_id)
                req["done"].set_result(None)

    async def get(self, authority, path, headers, out):
        stream_id = self._quic.get_next_available_stream_id()
        req = {"headers": None, "out": out, "bytes": 0,
               "done": asyncio.get_running_loop().create_future()}
        self.requests[stream_id] = req
        self.h3.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"),
             (b":authority", authority.encode()), (b":path", path.encode())]
            + [(k.lower().encode(), v.encode()) for k, v in headers],
            end_stream=True,
        )
        self.transmit()
        await req["done"]
        return req


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--cacert", required=True)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--window-mib", type=int, default=16)
    a = p.parse_args()
    u = urlparse(a.url)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_verify_locations(a.cacert)
    config.server_name = a.server_name
    # Larger flow-control windows than aioquic's 1 MiB default, or the
    # window, not the server, sets the pace.
    config.max_data = a.window_mib << 20
    config.max_stream_data = a.window_mib << 20
    headers = [tuple(s.strip() for s in h.split(":", 1)) for h in a.header]
    with open(a.out, "wb") as out:
        async with connect(u.hostname, u.port or 443, configuration=config,
                           create_protocol=H3Client) as client:
            start = time.monotonic()
            req = await asyncio.wait_for(
                client.get(u.netloc, u.path + (("?" + u.query) if u.query else ""), headers, out),
                timeout=600)
            seconds = time.monotonic() - start
    hdrs = {k.decode(): v.decode() for k, v in req["headers"] or []}
    print(json.dumps({"status": int(hdrs.get(":status", 0)), "headers": hdrs,
                      "bytes": req["bytes"], "seconds": seconds,
                      "http_version": "3", "alpn": "h3"}))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001 - one line for the calling script
        print(f"h3get: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
