"""A small bounded HTTP/1.1 server: one asyncio acceptor thread and a fixed pool of handler threads.

``http.server.ThreadingHTTPServer`` starts a thread per connection, so a few thousand idle or
slow clients (a scanner, a stalled proxy, a slowloris) become a few thousand threads, and every
answer waits its turn for the GIL behind them. Here connections are coroutines: the thread count
is the acceptor plus ``workers``, whatever the clients do. What it enforces, so a handler never
has to:

- HTTP/1.1 keep-alive (and HTTP/1.0 with ``Connection: keep-alive``); bodies by
  ``Content-Length`` only (``Transfer-Encoding`` is refused with 411 before anything is read);
- a body cap (413 before the body is read), a header cap (431: too large or too many lines), a
  request-line cap (414) and 501 for a method it does not implement (only GET, HEAD and POST);
- a read timeout per request: the request head and the body must each arrive within it, so a
  client sending a byte at a time holds a coroutine for at most that long;
- a connection cap: at the cap, the connection waiting longest for its request head is dropped
  for the new one (a flood of idle sockets cannot lock out a real client), and only when every
  connection is busy is the new one refused with 503;
- an optional ``precheck`` that answers from the request head alone (authentication, length),
  so an unauthenticated client's body is never read;
- optional TLS (an ``ssl.SSLContext``): the handshake is bounded by the read timeout too, and a
  client that fails it (plain HTTP on the TLS port) costs one closed connection;
- ``HEAD`` answers carry the headers of the ``GET`` answer (its Content-Length) without its body.

Handlers are plain functions ``(Request) -> Response`` run on the pool; they may block. A handler
may instead return a ``concurrent.futures.Future`` of its Response: the connection waits for it
without holding a pool thread (a group commit's shared fsync, say), so a burst of such requests
is not limited to ``workers`` in flight.
The exporter must not import ``healers``; this module imports nothing of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
#: a request line longer than this is refused with 414 (http.server's limit), more header lines with 431
MAX_LINE_BYTES = 65536
MAX_HEADERS = 100
#: the methods served; any other (PUT, an unknown word, a lower-case "get") is 501 Not Implemented
METHODS = frozenset({"GET", "HEAD", "POST"})


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: str
    #: header names lower-cased; values decoded as ISO-8859-1 (what HTTP/1.1 allows on the wire)
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    #: close the connection after this answer (e.g. an unread body is still on the wire)
    close: bool = False


_T = TypeVar("_T")
Handler = Callable[[Request], "Response | Future[Response]"]
Precheck = Callable[[Request], Response | None]


class _Conn:
    __slots__ = ("writer", "waiting")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting = True  # for a request head (droppable at the cap) rather than inside a request


class BoundedHTTPServer:
    """``server_address``, ``serve_forever()``, ``shutdown()`` and ``server_close()`` as in
    ``socketserver``, so it replaces ``ThreadingHTTPServer`` where those are used. Binding
    happens in the constructor (an ``OSError`` there names a busy or forbidden address)."""

    def __init__(self, addr: tuple[str, int], handler: Handler, *, precheck: Precheck | None = None,
                 workers: int = 4, max_body: int = 1024 * 1024, read_timeout: float = 10.0,
                 max_connections: int = 512, backlog: int = 512, name: str = "httpd",
                 tls: ssl.SSLContext | None = None, listen: bool = True, precheck_on_loop: bool = False,
                 inline: Callable[[Request], Response | Future[Response] | None] | None = None) -> None:
        self.handler = handler
        #: the precheck and ``inline`` run on the event loop itself (they must never block): a cheap
        #: answer skips two hand-offs to the pool; ``inline`` returning None passes the request on
        self.precheck_on_loop = precheck_on_loop
        self.inline = inline
        self.tls = tls
        self.precheck = precheck
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.backlog = backlog
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        # not socket.create_server: its errors append the address to strerror, and callers print strerror
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(addr)
            if listen:
                self.socket.listen(backlog)
        except OSError:
            self.socket.close()
            raise
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._conns: OrderedDict[int, _Conn] = OrderedDict()
        self.dropped = 0  # connections closed at the cap (idle ones dropped, busy-cap refusals)

    # lifecycle ---------------------------------------------------------------------------------
    def server_activate(self) -> None:
        """Start listening when the constructor was told not to (the port is held meanwhile, so a
        busy one fails at once, while clients are refused until now)."""
        self.socket.listen(self.backlog)

    def serve_forever(self, poll_interval: float = 0.5) -> None:  # noqa: ARG002  (socketserver's signature)
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving and wait until serve_forever has returned (from any other thread)."""
        self._started.wait()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)
        self._done.wait()

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the event loop's thread (from any thread); at once when it is not running."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(fn)
                return
        fn()

    def server_close(self) -> None:
        self.socket.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # asyncio listens again on the socket with its own backlog (100 unless told): keep ours
        server = await asyncio.start_server(self._client, sock=self.socket, limit=MAX_HEAD_BYTES, backlog=self.backlog,
                                            ssl=self.tls, ssl_handshake_timeout=self.read_timeout if self.tls else None)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(self._conns.values()):
                conn.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    # connections -------------------------------------------------------------------------------
    def _admit(self, key: int, conn: _Conn) -> bool:
        if len(self._conns) >= self.max_connections:
            idle = next((k for k, c in self._conns.items() if c.waiting), None)
            if idle is None:
                return False
            self._conns.pop(idle).writer.close()  # the longest wait for a request head gives way
            self.dropped += 1
        self._conns[key] = conn
        return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        key = id(conn)
        if not self._admit(key, conn):
            self.dropped += 1
            with contextlib.suppress(Exception):
                writer.write(_encode(Response(503, b"busy\n"), keep_alive=False))
                await asyncio.wait_for(writer.drain(), 1)
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:  # headers and body in one write anyway; never wait for a delayed ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._one(reader, writer, conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self._conns.pop(key, None)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn) -> bool:
        """Serve one request; False when the connection is to be closed."""
        conn.waiting = True
        self._conns.move_to_end(id(conn))
        try:
            head = await asyncio.wait_for(_read_head(reader), self.read_timeout)
        except _HeadRefused as exc:
            await self._send(writer, exc.response, False)
            return False
        except (asyncio.IncompleteReadError, TimeoutError):
            return False
        conn.waiting = False
        req, version = _parse_head(head)
        if req is None:
            await self._send(writer, Response(400, b"malformed request\n", close=True), False)
            return False
        if req.method not in METHODS:
            await self._send(writer, Response(501, b"not implemented\n", close=True), False)
            return False
        connection = req.headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and "close" not in connection) or (
            version == "HTTP/1.0" and "keep-alive" in connection)
        if "transfer-encoding" in req.headers:
            # bodies by Content-Length only: a chunked body is never read, so the connection ends
            resp: Response | None = None
            if self.precheck is not None:
                resp = await self._prechecked(self.precheck, req)
            await self._send(writer, resp or Response(411, b"Content-Length is required\n"), False)
            return False
        raw_len = req.headers.get("content-length")
        length = 0
        if raw_len is not None:
            length = int(raw_len) if raw_len.strip().isdigit() else -1
        if self.precheck is not None:
            early = await self._prechecked(self.precheck, req)
            if early is not None:
                # the body (if any) is unread: say so, or a keep-alive client reuses a dirty socket
                unread = length != 0
                await self._send(writer, early, keep_alive and not early.close and not unread)
                return keep_alive and not early.close and not unread
        if length < 0:
            await self._send(writer, Response(400, b"bad Content-Length\n"), False)
            return False
        if length > self.max_body:
            await self._send(writer, Response(413, b"body too large\n"), False)
            return False
        if length:
            req.body = await asyncio.wait_for(reader.readexactly(length), self.read_timeout)
        try:
            answer = self.inline(req) if self.inline is not None else None
            if answer is None:
                answer = await self._run(self.handler, req)
            if isinstance(answer, Future):
                answer = await asyncio.wrap_future(answer)
            resp = answer
        except Exception:  # the handler's own fault: 500, and the server keeps serving
            resp = Response(500, b"internal error\n")
        assert isinstance(resp, Response)
        keep = keep_alive and not resp.close
        await self._send(writer, resp, keep, head_only=req.method == "HEAD")
        return keep

    async def _prechecked(self, fn: Precheck, req: Request) -> Response | None:
        return fn(req) if self.precheck_on_loop else await self._run(fn, req)

    async def _run(self, fn: Callable[[Request], _T], req: Request) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, fn, req)

    async def _send(self, writer: asyncio.StreamWriter, resp: Response, keep_alive: bool,
                    head_only: bool = False) -> None:
        writer.write(_encode(resp, keep_alive, head_only))
        await asyncio.wait_for(writer.drain(), self.read_timeout)


class _HeadRefused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request line and header lines up to the blank line, within the line, count and size caps."""
    try:
        lines = [await reader.readuntil(b"\r\n")]
    except asyncio.LimitOverrunError:
        raise _HeadRefused(Response(414, b"request line too long\n", close=True)) from None
    if len(lines[0]) > MAX_LINE_BYTES:
        raise _HeadRefused(Response(414, b"request line too long\n", close=True))
    size = len(lines[0])
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise _HeadRefused(Response(431, b"request head too large\n", close=True)) from None
        size += len(line)
        if size > MAX_HEAD_BYTES or len(lines) > MAX_HEADERS:
            raise _HeadRefused(Response(431, b"request head too large\n", close=True))
        lines.append(line)
        if line == b"\r\n":
            break
    return b"".join(lines)


def _parse_head(head: bytes) -> tuple[Request | None, str]:
    try:
        text = head.decode("iso-8859-1")
        lines = text.split("\r\n")
        method, target, version = lines[0].split(" ")
        if not version.startswith("HTTP/1."):
            return None, ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return None, ""
            name = name.lower()
            if name in headers and name in ("content-length", "authorization"):
                return None, ""  # two lengths or two credentials: a smuggling attempt, not a client
            headers[name] = value.strip()
        url = urlsplit(target)
        return Request(method, target, url.path, url.query, headers), version
    except ValueError:
        return None, ""


def _encode(resp: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Type: {resp.content_type}",
             f"Content-Length: {len(resp.body)}"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + (b"" if head_only else resp.body)
