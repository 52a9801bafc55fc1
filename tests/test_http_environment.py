"""The broker and UW clients honour the proxy environment as requests does, read once per client.

requests re-reads the process environment on every request; the clients resolve it when they
are built instead (for the one host each talks to). A proxy, NO_PROXY and the CA bundle must
still apply exactly as before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from exporter.bot.broker import Broker
from exporter.bot.uwclient import UWClient


class Recorder:
    """A loopback HTTP server that answers every GET with ``{"is_open": true, "by": name}`` and
    records each request line (a proxy receives the absolute URL) and its headers; with
    ``set_cookie`` its first answer sets a cookie."""

    def __init__(self, name: str, set_cookie: bool = False) -> None:
        self.lines: list[str] = []
        self.seen: list[tuple[str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                recorder.lines.append(self.requestline)
                recorder.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
                body = json.dumps({"is_open": True, "by": name, "data": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if set_cookie and len(recorder.seen) == 1:
                    self.send_header("Set-Cookie", "session=abc; Path=/")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    direct, proxy = Recorder("direct"), Recorder("proxy")
    yield direct, proxy
    direct.close()
    proxy.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_a_proxy_in_the_environment_carries_broker_and_uw_requests(servers: tuple[Recorder, Recorder],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    direct, proxy = servers
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    broker = Broker(direct.url, "key", "secret", timeout=5.0)
    uw = UWClient(direct.url, "token", timeout=5.0)
    assert broker.get("/clock")["by"] == "proxy"
    assert uw.get("/api/market/market-tide").data["by"] == "proxy"
    assert proxy.lines == [f"GET {direct.url}/v2/clock HTTP/1.1", f"GET {direct.url}/api/market/market-tide HTTP/1.1"]
    assert direct.lines == []


def test_no_proxy_exempts_the_host_and_no_proxy_at_all_goes_direct(servers: tuple[Recorder, Recorder],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    direct, proxy = servers
    assert Broker(direct.url, "key", "secret", timeout=5.0).get("/clock")["by"] == "direct"
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert Broker(direct.url, "key", "secret", timeout=5.0).get("/clock")["by"] == "direct"
    assert UWClient(direct.url, "token", timeout=5.0).get("/api/market/market-tide").data["by"] == "direct"
    assert proxy.lines == []
    assert direct.lines == ["GET /v2/clock HTTP/1.1", "GET /v2/clock HTTP/1.1", "GET /api/market/market-tide HTTP/1.1"]


def test_the_ca_bundle_of_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bot-ca.pem")
    assert Broker("https://paper-api.alpaca.markets", "key", "secret")._session.verify == "/etc/ssl/bot-ca.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/curl-ca.pem")
    assert UWClient("https://api.unusualwhales.com", "token")._session.verify == "/etc/ssl/curl-ca.pem"


def test_a_repeated_get_sends_what_requests_would_build_each_time() -> None:
    """A GET's prepared request is reused: the query and headers of each call still go out, and a
    cookie the server set is sent from then on, as ``Session.request`` would."""
    rec = Recorder("direct", set_cookie=True)
    try:
        broker = Broker(rec.url, "key", "secret", timeout=5.0)
        broker.get("/calendar", {"start": "2026-11-24", "end": "2026-11-24"})
        broker.get("/calendar", {"start": "2026-11-25", "end": "2026-11-25"})
        broker.get("/calendar", {"start": "2026-11-24", "end": "2026-11-24"})
        uw = UWClient(rec.url, "token", timeout=5.0)
        uw.get("/api/market/market-tide")
        uw.get("/api/market/market-tide")
    finally:
        rec.close()
    lines = [line for line, _ in rec.seen]
    assert lines == ["GET /v2/calendar?start=2026-11-24&end=2026-11-24 HTTP/1.1",
                     "GET /v2/calendar?start=2026-11-25&end=2026-11-25 HTTP/1.1",
                     "GET /v2/calendar?start=2026-11-24&end=2026-11-24 HTTP/1.1",
                     "GET /api/market/market-tide HTTP/1.1", "GET /api/market/market-tide HTTP/1.1"]
    broker_headers = [h for _, h in rec.seen[:3]]
    assert all(h["apca-api-key-id"] == "key" and h["apca-api-secret-key"] == "secret" for h in broker_headers)
    assert "cookie" not in broker_headers[0]
    assert broker_headers[1]["cookie"] == broker_headers[2]["cookie"] == "session=abc"
    assert all(h["authorization"] == "Bearer token" for _, h in rec.seen[3:])
