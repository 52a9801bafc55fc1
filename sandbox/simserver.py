"""The HTTP stand-in server both fakes share: loopback only, fault injection (status codes,
hangs, non-JSON bodies), request counts and the ``/_admin/`` API.

Why: the exporter, its tests, ``trading-readiness sandbox`` and the benchmarks need real HTTP
against something that answers like the real API and fails on demand the ways it really fails,
without the network. Stdlib only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, unquote, urlsplit

from .factories import utcnow

_log = logging.getLogger(__name__)


MAX_BODY = 1 << 20


FAULT_MODES = frozenset({"401", "403", "429", "500", "nonjson"})


NONJSON_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Service Temporarily Unavailable</title></head>"
    b"<body><h1>We'll be back soon</h1><p>Scheduled maintenance in progress.</p></body></html>\n"
)


@dataclass
class SimResponse:
    """One HTTP answer, built by route code and written by the request handler."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> SimResponse:
        """Serialise ``payload`` compactly, like the real APIs."""
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), headers=dict(headers or {}))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _HTTPServer(ThreadingHTTPServer):
    """Knows its owning fake, whether it is closing, and its live sockets (to cut them on stop)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: SimServer) -> None:
        self.sim = sim
        self.closing = False
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        """Remember open connections so stop() can unblock idle keep-alive readers."""
        with self.connections_lock:
            if alive:
                self.connections.add(conn)
            else:
                self.connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients vanishing mid-answer (timeouts, hang tests) are normal here, not errors."""
        _log.debug("sim connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: reads the request, asks the fake for an answer, writes it."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "sim"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are dropped after this many seconds
    #: an answer's head and body leave in one write (the stdlib default writes them separately)
    wbufsize = 1 << 16
    #: TCP_NODELAY, as real API servers set it: with Nagle's algorithm on, a body written after its
    #: head waited for the client's delayed ACK, about 40 ms per answer on a keep-alive connection
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        if self.server.closing:
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(SimResponse.of_json(400, {"message": "bad Content-Length"}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        client = self.client_address[0]
        answer = self.server.sim._answer(method, self.path, self.headers, body, client, self.server)
        if answer is None:  # server stopping: drop the connection without an answer
            self.close_connection = True
            return
        self._send(answer)

    def _send(self, answer: SimResponse) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


def parse_mode(mode: str, extra: frozenset[str]) -> tuple[str, float]:
    """Validate a fault mode; returns ``(kind, delay_seconds)``."""
    if mode.startswith("slow:"):
        try:
            delay = float(mode[5:])
        except ValueError:
            raise ValueError(f"bad slow mode {mode!r}: expected slow:<seconds>") from None
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"bad slow mode {mode!r}: delay must be a finite number >= 0")
        return "slow", delay
    if mode in {"ok", "hang"} | FAULT_MODES | extra:
        return mode, 0.0
    known = sorted({"ok", "hang", "slow:<seconds>"} | FAULT_MODES | extra)
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(known)}")


class SimServer:
    """Loopback HTTP server with fault modes, per-path request counters and an ``/_admin/`` API.

    Subclasses provide authentication, fault bodies, quota accounting and the routes. State is
    guarded by ``lock`` (re-entrant) so tests can mutate it while requests are in flight.
    """

    #: Extra modes a subclass understands besides ok/hang/slow and the generic faults.
    extra_modes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.lock = threading.RLock()
        self.time_source: Callable[[], datetime] = utcnow
        self._cond = threading.Condition(self.lock)
        self._mode = "ok"
        self._mode_kind = "ok"
        self._mode_delay = 0.0
        self._mode_paths: tuple[str, ...] | None = None
        self._counts: Counter[str] = Counter()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 picks a free port) and serve in a daemon thread."""
        with self.lock:
            if self._httpd is not None:
                raise RuntimeError(f"{type(self).__name__} already started on {self.url}")
            httpd = _HTTPServer((self.host, self.port), self)
            self._httpd = httpd
            self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; returns promptly even while requests hang (they are dropped)."""
        with self._cond:
            httpd = self._httpd
            if httpd is None:
                return
            self._httpd = None
            httpd.closing = True
            self._cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        with httpd.connections_lock:
            live = list(httpd.connections)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43211`` (no trailing slash, no API version)."""
        if self.port == 0:
            raise RuntimeError(f"{type(self).__name__} has no port yet: call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- fault injection and counters -------------------------------------------------------

    def set_mode(self, mode: str, paths: list[str] | None = None) -> None:
        """Switch fault mode for requests whose path starts with one of ``paths`` (None: all)."""
        kind, delay = parse_mode(mode, self.extra_modes)
        if paths is not None and (
            isinstance(paths, str) or not all(isinstance(p, str) and p.startswith("/") for p in paths)
        ):
            raise ValueError("paths must be a list of path prefixes starting with '/'")
        with self._cond:
            self._mode, self._mode_kind, self._mode_delay = mode, kind, delay
            self._mode_paths = None if paths is None else tuple(paths)
            self._cond.notify_all()  # release hanging requests the new mode no longer covers

    @property
    def mode(self) -> str:
        """The current mode string as last passed to set_mode()."""
        return self._mode

    def request_count(self, path_prefix: str = "") -> int:
        """API requests received (admin calls excluded) whose path starts with ``path_prefix``."""
        with self.lock:
            return sum(n for path, n in self._counts.items() if path.startswith(path_prefix))

    def _mode_for(self, path: str) -> tuple[str, float]:
        with self.lock:
            paths = self._mode_paths
            if paths is None or any(path.startswith(p) for p in paths):
                return self._mode_kind, self._mode_delay
            return "ok", 0.0

    def _wait(self, httpd: _HTTPServer, done: Callable[[], bool] | None, timeout: float | None) -> bool:
        """Block until ``done()`` or ``timeout``; False when the server is stopping meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not httpd.closing:
                if done is not None and done():
                    return True
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(min(remaining, 1.0))
            return False

    # -- request pipeline -------------------------------------------------------------------

    def _answer(
        self, method: str, raw_path: str, headers: Message, body: bytes, client: str, httpd: _HTTPServer
    ) -> SimResponse | None:
        """Admin routing, counting, fault modes, auth, quota, then the subclass routes."""
        split = urlsplit(raw_path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if path.startswith("/_admin/"):
            if not _is_loopback(client):
                return SimResponse.of_json(403, {"message": "admin API is loopback only"})
            return self._admin(method, path, body)
        with self.lock:
            self._counts[path] += 1
            quota_headers, over_quota = self._consume_quota()
        kind, delay = self._mode_for(path)
        while kind in ("hang", "slow"):
            if kind == "hang":
                ok = self._wait(httpd, lambda: self._mode_for(path)[0] != "hang", None)
            else:
                ok = self._wait(httpd, None, delay)
            if not ok:
                return None
            kind, delay = self._mode_for(path) if kind == "hang" else ("ok", 0.0)
        if kind in FAULT_MODES:
            answer = self._fault(kind)
        elif not self._authorized(headers):
            answer = self._unauthorized()
        elif over_quota is not None:
            answer = over_quota
        else:
            try:
                answer = self._route(method, path, query, body, kind)
            except Exception:
                _log.exception("%s: error answering %s %s", type(self).__name__, method, raw_path)
                answer = self._fault("500")
        answer.headers = {**quota_headers, **answer.headers}
        return answer

    def _admin(self, method: str, path: str, body: bytes) -> SimResponse:
        try:
            payload = json.loads(body) if body else {}
            if method == "GET" and path == "/_admin/state":
                return SimResponse.of_json(200, self.state())
            if method == "POST" and path == "/_admin/mode":
                if not isinstance(payload, dict) or not isinstance(payload.get("mode"), str):
                    raise ValueError('expected {"mode": "...", "paths": [...]|null}')
                self.set_mode(payload["mode"], payload.get("paths"))
                return SimResponse.of_json(200, {"mode": self._mode, "paths": payload.get("paths")})
            if method == "POST" and path == "/_admin/state":
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object")
                self.apply_state(payload)
                return SimResponse.of_json(200, self.state())
        except (ValueError, TypeError, KeyError) as exc:
            return SimResponse.of_json(400, {"message": str(exc)})
        return SimResponse.of_json(404, {"message": f"no admin route {method} {path}"})

    def state(self) -> dict[str, Any]:
        """Snapshot for ``GET /_admin/state``; subclasses add their own state."""
        with self.lock:
            return {
                "mode": self._mode,
                "paths": None if self._mode_paths is None else list(self._mode_paths),
                "request_counts": dict(self._counts),
            }

    # -- subclass hooks ---------------------------------------------------------------------

    def apply_state(self, payload: Mapping[str, Any]) -> None:
        """Apply ``POST /_admin/state``; the base has no mutable state of its own."""
        raise ValueError(f"{type(self).__name__} has no settable state")

    def _consume_quota(self) -> tuple[dict[str, str], SimResponse | None]:
        """Count one request against the quota: headers for every answer, and a rejection if over."""
        return {}, None

    def _authorized(self, headers: Message) -> bool:
        raise NotImplementedError

    def _unauthorized(self) -> SimResponse:
        return self._fault("401")

    def _fault(self, kind: str) -> SimResponse:
        raise NotImplementedError

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, mode: str) -> SimResponse:
        raise NotImplementedError
