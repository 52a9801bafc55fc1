"""The exporter's HTTP side under clients it must shrug off: thousands of silent or slow
connections cost no thread each, and a real scrape among them is still answered."""

from __future__ import annotations

import socket
from pathlib import Path

from sandbox.botroot import BotRoot

from .conftest import flood_slow_clients, wait_for
from .test_exporter import Exporter, sample


def test_3000_slow_clients_do_not_grow_threads_and_a_scrape_is_answered(bot: BotRoot, tmp_path: Path) -> None:
    exp = Exporter(bot.path, tmp_path / "serve.log")  # default intervals: few check threads come and go
    socks: list[socket.socket] = []
    try:
        wait_for(exp.up, timeout=60, what="exporter up")
        before, most = flood_slow_clients(exp.port, exp.proc.pid, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", socks)
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
