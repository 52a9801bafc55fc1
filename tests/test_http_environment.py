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
    records each request line (a proxy receives the absolute URL)."""

    def __init__(self, name: str) -> None:
        self.lines: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                recorder.lines.append(self.requestline)
                body = json.dumps({"is_open": True, "by": name, "data": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
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
