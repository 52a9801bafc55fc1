"""The exporter's HTTP side under clients it must shrug off: thousands of silent or slow
connections cost no thread each, and a real scrape among them is still answered."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from pathlib import Path

import pytest

from sandbox.botroot import BotRoot

from .conftest import wait_for
from .test_exporter import Exporter, sample

SLOW_CLIENTS = 3000


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_3000_slow_clients_do_not_grow_threads_and_a_scrape_is_answered(bot: BotRoot, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SLOW_CLIENTS + 200:
        pytest.skip(f"needs {SLOW_CLIENTS + 200} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, SLOW_CLIENTS + 200), hard))
    exp = Exporter(bot.path, tmp_path / "serve.log")  # default intervals: few check threads come and go
    socks: list[socket.socket] = []
    try:
        wait_for(exp.up, timeout=60, what="exporter up")
        before = threads(exp.proc.pid)
        most = before
        deadline = time.monotonic() + 60  # bounded in time as well as in count
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        for i in range(SLOW_CLIENTS):
            if time.monotonic() > deadline:
                break
            try:
                s = socket.create_connection(("127.0.0.1", exp.port), timeout=5)
            except OSError:
                continue  # refused or timed out under the flood: the server's choice, not a hang
            s.setblocking(False)
            socks.append(s)
            if i % 2:  # every other one sends its request head a byte at a time; the rest send nothing
                with contextlib.suppress(OSError):
                    s.send(head[:1])
            if i % 250 == 0:
                most = max(most, threads(exp.proc.pid))
        for k in range(1, 12):  # more bytes, slowly, from the talkative half
            for s in socks[1::2]:
                with contextlib.suppress(OSError):
                    s.send(head[k:k + 1])
            most = max(most, threads(exp.proc.pid))
        assert len(socks) >= SLOW_CLIENTS // 2
        # the acceptor, the fixed handler pool, the scheduler and its check batches: nothing per
        # client (a thread per connection would be thousands here)
        assert most <= before + 40, (before, most)
        # a real scrape in the middle of it all is answered, with every series
        code, body = exp.get("/metrics", timeout=15)
        assert code == 200 and sample(body, "trading_failure_point_info", fp="FP-1.1") == 1
        assert exp.get("/-/healthy", timeout=15)[0] == 200
        assert exp.proc.poll() is None
    finally:
        for s in socks:
            s.close()
        exp.stop()
