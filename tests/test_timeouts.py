"""Every network call is bounded in total, not only per read.

requests' timeout bounds each socket operation: a server that accepts and then sends a byte
every half second never trips it. Such a broker held the shared /v2/clock lookup, and with it
every market-hours-aware check, until each hit its own check timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from exporter.bot.broker import Broker, BrokerError
from exporter.bot.uwclient import UWClient, UWError
from exporter.integration import ReadinessGate


class Trickle:
    """Accepts, reads the request, then sends a status line and one header byte every 0.2 s."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.open += 1
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ")
            while not self.stop.wait(0.2):
                conn.sendall(b"x")
        except OSError:
            pass
        finally:
            self.open -= 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    srv = Trickle()
    yield srv
    srv.close()


def _bounded(fn: Any, limit: float = 15.0) -> BaseException | None:
    """Run ``fn`` in a thread; fail the test (instead of hanging it) if it never returns."""
    box: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            fn()
            box["error"] = None
        except BaseException as exc:  # noqa: BLE001 (handed back to the test)
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"call still running after {limit:g} s: the timeout is per read, not total"
    return box["error"]


def test_broker_request_to_a_trickling_server_times_out(trickle: Trickle) -> None:
    broker = Broker(trickle.url, "PKTEST", "SECRETTEST", timeout=1.0)
    error = _bounded(lambda: broker.get("/clock"))
    assert isinstance(error, BrokerError) and error.kind == "timeout", error
    assert "did not answer /clock within 1 s" in str(error)
    # the abandoned connection is closed, not left trickling in a thread
    deadline = time.monotonic() + 5
    while trickle.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trickle.open == 0


def test_uw_request_to_a_trickling_server_times_out(trickle: Trickle) -> None:
    client = UWClient(trickle.url, "uw-test-token", timeout=1.0)
    error = _bounded(lambda: client.get("/api/market/market-tide"))
    assert isinstance(error, UWError) and error.kind == "timeout", error


def test_bot_gate_reading_a_trickling_exporter_times_out(trickle: Trickle) -> None:
    """The bot calls the gate inside its trading loop: a wedged exporter (or proxy) must not stall it."""
    gate = ReadinessGate(trickle.url, in_process=False, timeout_seconds=1.0)
    error = _bounded(gate.from_exporter)
    assert isinstance(error, LookupError) and "did not answer within 1 s" in str(error), error


@pytest.mark.parametrize("url", ["paper-api.alpaca.markets", "ftp://paper-api.alpaca.markets",
                                 f"http://{'leakuser'}:{'leakpass9'}@127.0.0.1:notaport"])
def test_a_base_url_that_is_not_http_is_named_not_called_a_bad_body(url: str) -> None:
    with pytest.raises(BrokerError) as info:
        Broker(url, "PKTEST", "SECRETTEST", timeout=1.0).get("/clock")
    assert info.value.kind == "connection" and "base URL is not a usable http(s) URL" in str(info.value)
    assert "not JSON" not in str(info.value) and "leakpass9" not in str(info.value)
