"""Many bots' exporters and healers from one process, for the fleet bench (no bot processes).

``python -m bench.synthetic_exporter SPEC.json`` reads ``{"bots": N, "exporter": TEXT, "healer":
TEXT}`` -- the real exposition of one bot's exporter and healer, captured from a running sandbox --
listens on two loopback ports per bot (the kernel picks them) and prints one JSON line
``[[exporter_port, healer_port], ...]``. Every ``*_timestamp_seconds`` sample is served with the
time of the scrape, as a live exporter whose checks run would (a frozen timestamp would make
every point stale and fire an alert per point per bot). Target labels (``bot``, ``env``, ``host``)
come from Prometheus' file_sd, as in production. Stops when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from typing import Any

TIMESTAMP = re.compile(r"^([a-z_:]+_timestamp_seconds(?:\{[^}]*\})?) \S+$", re.M)


class Exposition:
    """A captured exposition with its timestamp samples re-stamped at each scrape."""

    def __init__(self, text: str) -> None:
        self.parts: list[str] = []
        last = 0
        for m in TIMESTAMP.finditer(text):
            self.parts.append(text[last:m.end(1)] + " ")
            last = m.end()
        self.tail = text[last:]

    def render(self) -> bytes:
        now = f"{time.time():.3f}"
        return (now.join(self.parts) + (now if self.parts else "") + self.tail).encode()


async def serve(expo: Exposition, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # Prometheus keeps the connection open between scrapes
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            body = expo.render()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main_async(spec: dict[str, Any]) -> None:
    exporter, healer = Exposition(spec["exporter"]), Exposition(spec["healer"])
    ports = []
    for _ in range(int(spec["bots"])):
        pair = []
        for expo in (exporter, healer):
            server = await asyncio.start_server(lambda r, w, e=expo: serve(e, r, w), "127.0.0.1", 0)
            pair.append(server.sockets[0].getsockname()[1])
        ports.append(pair)
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    asyncio.run(main_async(spec))


if __name__ == "__main__":
    main()
