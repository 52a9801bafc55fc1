"""A small bounded HTTP/1.1 server: one asyncio event-loop thread and a fixed pool of handler threads.

``http.server.ThreadingHTTPServer`` starts a thread per connection, so a few thousand idle or
slow clients (a scanner, a stalled proxy, a slowloris) become a few thousand threads, and every
answer waits its turn for the GIL behind them. Here a connection is an asyncio (buffered) protocol
whose requests are parsed as their bytes arrive (no coroutine, task or stream per request): the thread
count is the event loop plus ``workers``, whatever the clients do. What it enforces, so a handler never
has to:

- HTTP/1.1 keep-alive (and HTTP/1.0 with ``Connection: keep-alive``); bodies by
  ``Content-Length`` only (``Transfer-Encoding`` is refused with 411 before anything is read);
- a body cap (413 before the body is read), a header cap (431: too large or too many lines), a
  request-line cap (414) and 501 for a method it does not implement (only GET, HEAD and POST);
- a read timeout per request: the request head and the body must each arrive within it, and a
  client must take our answer within it too, so a client sending or reading a byte at a time
  holds its connection for at most that long (plus a quarter: one sweep checks every deadline);
- a connection cap: at the cap, the connection waiting longest for its request head is dropped
  for the new one (a flood of idle sockets cannot lock out a real client), and only when every
  connection is busy is the new one refused with 503;
- an optional ``precheck`` that answers from the request head alone (authentication, length),
  so an unauthenticated client's body is never read;
- optional TLS (an ``ssl.SSLContext``): the handshake is bounded by the read timeout too, and a
  client that fails it (plain HTTP on the TLS port) costs one closed connection;
- ``HEAD`` answers carry the headers of the ``GET`` answer (its Content-Length) without its body.

Handlers are plain functions ``(Request) -> Response`` run on the pool; they may block. A handler
may instead return a ``concurrent.futures.Future`` of its Response, or LATER and answer through
``Request.reply``: the connection waits without holding a pool thread (a group commit's shared
fsync, say), so a burst of such requests is not limited to ``workers`` in flight.
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
from typing import Any, cast

import uvloop

from .httpwire import (
    LATER,
    ON_POOL,
    Handler,
    Later,
    OnPool,
    Precheck,
    Request,
    Response,
    encode_response,
    parse_head,
)

#: the messages are httpwire's; handlers and servers import them from here too
__all__ = ["LATER", "MAX_HEAD_BYTES", "ON_POOL", "SWITCH_INTERVAL", "BoundedHTTPServer", "Handler", "Later", "OnPool",
           "Precheck", "Request", "Response"]

MAX_HEAD_BYTES = 64 * 1024
#: the GIL switch interval a process serving with this server sets (``sys.setswitchinterval``):
#: its event loop shares the GIL with worker threads, and a thread waiting for it gets it within
#: this long (5 ms by default, which a request needing it a few times pays several times over)
SWITCH_INTERVAL = 0.001
#: a request line longer than this is refused with 414 (http.server's limit), more header lines with 431
MAX_LINE_BYTES = 65536
MAX_HEADERS = 100
#: the methods served; any other (PUT, an unknown word, a lower-case "get") is 501 Not Implemented
METHODS = frozenset({"GET", "HEAD", "POST"})

class BoundedHTTPServer:
    """``server_address``, ``serve_forever()``, ``shutdown()`` and ``server_close()`` as in
    ``socketserver``, so it replaces ``ThreadingHTTPServer`` where those are used. Binding
    happens in the constructor (an ``OSError`` there names a busy or forbidden address)."""

    def __init__(self, addr: tuple[str, int], handler: Handler, *, precheck: Precheck | None = None,
                 workers: int = 4, max_body: int = 1024 * 1024, read_timeout: float = 10.0,
                 max_connections: int = 512, backlog: int = 512, name: str = "httpd",
                 tls: ssl.SSLContext | None = None, listen: bool = True, precheck_on_loop: bool = False,
                 inline: Callable[[Request], Response | Future[Response] | Later | None] | None = None) -> None:
        self.handler = handler
        #: the precheck and ``inline`` run on the event loop itself (they must never block): a cheap
        #: answer skips two hand-offs to the pool; ``inline`` returning None passes the request on,
        #: and a precheck returning ON_POOL is run again on the pool (a password hash, say)
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
        self._loop_thread: int | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._conns: OrderedDict[int, _Connection] = OrderedDict()
        #: connections closed by us that still write out an answer (bounded by the read timeout too)
        self._closing: dict[int, _Connection] = {}
        self.dropped = 0  # connections closed at the cap (idle ones dropped, busy-cap refusals)

    # lifecycle ---------------------------------------------------------------------------------
    def server_activate(self) -> None:
        """Start listening when the constructor was told not to (the port is held meanwhile, so a
        busy one fails at once, while clients are refused until now)."""
        self.socket.listen(self.backlog)

    def serve_forever(self, poll_interval: float = 0.5) -> None:  # noqa: ARG002  (socketserver's signature)
        try:
            # libuv's loop: its transports read, write and schedule in C, about a fifth of the CPU
            # a request costs on asyncio's own loop (bench_healer, bench_scrape)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._serve())
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
        """Run ``fn`` on the event loop's thread (from any thread: after the callbacks already due
        when called from it); at once when the loop is not running."""
        loop = self._loop
        if loop is not None and threading.get_ident() == self._loop_thread and loop.is_running():
            loop.call_soon(fn)
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(fn)
                return
        fn()

    def server_close(self) -> None:
        self.socket.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop = asyncio.Event()
        # asyncio listens again on the socket with its own backlog (100 unless told): keep ours
        server = await loop.create_server(lambda: _Connection(self, loop), sock=self.socket, backlog=self.backlog,
                                          ssl=self.tls,
                                          ssl_handshake_timeout=self.read_timeout if self.tls else None)
        self._started.set()
        self._sweeper = loop.call_later(self._sweep_every(), self._sweep)
        try:
            await self._stop.wait()
        finally:
            self._sweeper.cancel()
            server.close()
            for conn in list(self._conns.values()):
                conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    # connections -------------------------------------------------------------------------------
    def _sweep_every(self) -> float:
        return max(0.05, min(1.0, self.read_timeout / 4))

    def _sweep(self) -> None:
        """Cut off every connection whose client let its read timeout pass (checked a few times per
        timeout: a deadline is kept to within a quarter of it)."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for conn in [*self._conns.values(), *self._closing.values()]:
            if conn.deadline is not None and conn.deadline <= now:
                conn._expired()
        self._sweeper = loop.call_later(self._sweep_every(), self._sweep)

    def _admit(self, conn: _Connection) -> bool:
        if len(self._conns) >= self.max_connections:
            idle = next((c for c in self._conns.values() if c.waiting), None)
            if idle is None:
                return False
            self._conns.pop(id(idle), None)
            idle.close()  # the longest wait for a request head gives way
            self.dropped += 1
        self._conns[id(conn)] = conn
        return True


#: where a connection is: reading a request head, reading its body, or answering it
_HEAD, _BODY, _BUSY, _CLOSED = range(4)


class _Connection(asyncio.Protocol):
    """One client connection, parsed as its bytes arrive: no coroutine, task or stream per
    request. A request is answered before the next one on the connection is looked at
    (pipelined requests wait in the buffer), and every wait for the client (its request head,
    its body, its reading of our answer) is bounded by the server's read timeout."""

    def __init__(self, server: BoundedHTTPServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        #: what the client sent that is not yet taken: the bytes of the last read as they came (a
        #: request that arrives in one read is sliced out of them, never copied into a buffer
        #: first), a bytearray once a request spans reads
        self.buf: bytes | bytearray = b""
        self.state = _HEAD
        #: when (event-loop time) the client's turn runs out, or None while it is not awaited
        self.deadline: float | None = None
        self.req: Request | None = None
        self.keep_alive = False
        self.length = 0
        self.eof = False
        self.write_paused = False
        self.read_paused = False
        self.reply = self._reply  # given to every request (one bound method, not one per request)

    @property
    def waiting(self) -> bool:
        """Waiting for a request head (droppable at the cap) rather than inside a request."""
        return self.state == _HEAD

    # asyncio.Protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        if not server._admit(self):
            server.dropped += 1
            self.state = _CLOSED
            transport.write(encode_response(Response(503, b"busy\n"), keep_alive=False))
            transport.close()
            self._close_within_timeout()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:  # headers and body in one write anyway; never wait for a delayed ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self._disarm()
        self.server._conns.pop(id(self), None)
        self.server._closing.pop(id(self), None)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if not buf:
            self.buf = data
        elif isinstance(buf, bytearray):
            buf += data
        else:
            self.buf = bytearray(buf) + data
        if self.state == _HEAD or self.state == _BODY:
            self._advance()
        elif self.state == _BUSY and len(self.buf) > MAX_HEAD_BYTES + self.server.max_body:
            assert self.transport is not None
            self.read_paused = True
            self.transport.pause_reading()  # a client pipelining more than one request's worth waits

    def _take(self, n: int) -> bytes:
        """The first ``n`` bytes of what the client sent, taken out of the buffer."""
        buf = self.buf
        if len(buf) == n and isinstance(buf, bytes):
            self.buf = b""
            return buf
        out = bytes(buf[:n])
        self.buf = buf[n:]
        return out

    def eof_received(self) -> bool:
        # a client may half-close after its request and still read the answer
        self.eof = True
        if self.state in (_HEAD, _BODY):
            self.loop.call_soon(self._advance)  # what is buffered is served; an incomplete request ends
        return True

    def pause_writing(self) -> None:
        # the client does not read our answer: it has the read timeout to catch up
        self.write_paused = True
        self._arm()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._disarm()
        if self.state == _HEAD:
            self._arm()
            self.loop.call_soon(self._advance)

    # parsing ------------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Take the next request head, or its body, from the buffer once it is complete."""
        if self.write_paused or self.state == _CLOSED:
            return
        if self.state == _HEAD:
            if self.eof and not self.buf:
                self.close()
                return
            self._take_head()
        if self.state == _BODY:
            if len(self.buf) >= self.length:
                req = self.req
                assert req is not None
                req.body = self._take(self.length)
                self._disarm()
                self.state = _BUSY
                self._dispatch(req)
            elif self.eof:
                self.close()

    def _take_head(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            first = buf.find(b"\r\n")
            if (first < 0 and len(buf) > MAX_LINE_BYTES) or first + 2 > MAX_LINE_BYTES:
                self._refuse(Response(414, b"request line too long\n", close=True))
            elif len(buf) > MAX_HEAD_BYTES or buf.count(b"\r\n") > MAX_HEADERS:
                self._refuse(Response(431, b"request head too large\n", close=True))
            elif self.eof:
                self.close()
            return
        if buf.find(b"\r\n") + 2 > MAX_LINE_BYTES:
            self._refuse(Response(414, b"request line too long\n", close=True))
            return
        # a head of fewer than 2 * MAX_HEADERS bytes cannot hold more lines than that
        if end + 4 > MAX_HEAD_BYTES or (end >= 2 * MAX_HEADERS and buf.count(b"\r\n", 0, end) > MAX_HEADERS):
            self._refuse(Response(431, b"request head too large\n", close=True))
            return
        head = self._take(end + 4)
        self._disarm()
        self.state = _BUSY
        req, version = parse_head(head)
        if req is None:
            self._refuse(Response(400, b"malformed request\n", close=True))
            return
        if req.method not in METHODS:
            self._refuse(Response(501, b"not implemented\n", close=True))
            return
        connection = req.headers.get("connection", "").lower()
        self.keep_alive = (version == "HTTP/1.1" and "close" not in connection) or (
            version == "HTTP/1.0" and "keep-alive" in connection)
        self.req = req
        raw_len = req.headers.get("content-length")
        self.length = 0
        if raw_len is not None:
            self.length = int(raw_len) if raw_len.strip().isdigit() else -1
        if self.server.precheck is None:
            self._prechecked(None)
            return
        if self.server.precheck_on_loop:
            early = _safe_precheck(self.server.precheck, req)
            if not isinstance(early, OnPool):
                self._prechecked(early)
                return
        self._when_done(self.server.pool.submit(_safe_precheck, self.server.precheck, req, True), self._prechecked)

    def _prechecked(self, early: Response | None) -> None:
        """The precheck's answer (None: go on and read the body)."""
        if self.state == _CLOSED:
            return
        req = self.req
        assert req is not None
        if "transfer-encoding" in req.headers:
            # bodies by Content-Length only: a chunked body is never read, so the connection ends
            self._refuse(early or Response(411, b"Content-Length is required\n"))
            return
        if early is not None:
            # the body (if any) is unread: say so, or a keep-alive client reuses a dirty socket
            self._respond(early, self.keep_alive and self.length == 0)
            return
        if self.length < 0:
            self._refuse(Response(400, b"bad Content-Length\n"))
        elif self.length > self.server.max_body:
            self._refuse(Response(413, b"body too large\n"))
        else:
            self.state = _BODY
            if len(self.buf) < self.length:  # the client has the read timeout to send the rest
                self._arm()
            if self.buf or self.length == 0:
                self._advance()

    # answering ------------------------------------------------------------------------------------
    def _dispatch(self, req: Request) -> None:
        server = self.server
        answer: Response | Future[Response] | Future[Response | Future[Response] | Later] | Later | None
        try:
            req.reply = self.reply
            answer = server.inline(req) if server.inline is not None else None
            if isinstance(answer, Later):
                return
            if answer is None:
                answer = server.pool.submit(server.handler, req)
        except Exception:  # the handler's own fault: 500, and the server keeps serving
            answer = Response(500, b"internal error\n")
        if isinstance(answer, Future):
            self._when_done(answer, self._answered)
        else:
            self._answered(answer)

    def _reply(self, resp: Response) -> None:
        if threading.get_ident() == self.server._loop_thread:
            self._answered(resp)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self._answered, resp)

    def _answered(self, resp: Response | Future[Response] | Later | None) -> None:
        if self.state == _CLOSED:
            return
        if isinstance(resp, Later):  # a handler on the pool answers through Request.reply
            return
        if isinstance(resp, Future):  # a handler on the pool answered with a future of its answer
            self._when_done(resp, self._answered)
            return
        if not isinstance(resp, Response):
            resp = Response(500, b"internal error\n")
        self._respond(resp, self.keep_alive)

    def _when_done(self, fut: Future[Any], then: Callable[[Any], None]) -> None:
        """Call ``then(result)`` on the event loop once ``fut`` is done (None if it raised)."""

        def done(f: Future[Any]) -> None:
            try:
                result: Any = f.result()
            except BaseException:  # noqa: BLE001  (a handler's failure or a cancelled job: answered 500)
                result = None
            if threading.get_ident() == self.server._loop_thread:
                then(result)
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self.loop.call_soon_threadsafe(then, result)

        fut.add_done_callback(done)

    def _refuse(self, resp: Response) -> None:
        self._respond(resp, False)

    def _respond(self, resp: Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.state == _CLOSED:
            return
        req = self.req
        keep = keep_alive and not resp.close
        transport.write(encode_response(resp, keep, head_only=req is not None and req.method == "HEAD"))
        self.req = None
        if not keep:
            self.state = _CLOSED
            transport.close()
            self._close_within_timeout()
            return
        self.state = _HEAD
        conns = self.server._conns
        if id(self) in conns:
            conns.move_to_end(id(self))
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if self.eof and not self.buf:
            self.close()
            return
        self._arm()
        if self.buf:
            self.loop.call_soon(self._advance)

    # timers -----------------------------------------------------------------------------------------
    def _arm(self) -> None:
        """The client has the read timeout from now (checked by the server's sweep: a float per
        request, not a timer scheduled and cancelled twice)."""
        self.deadline = self.loop.time() + self.server.read_timeout

    def _disarm(self) -> None:
        self.deadline = None

    def _expired(self) -> None:
        self.deadline = None
        if self.transport is not None:
            self.state = _CLOSED
            self.transport.abort()

    def _close_within_timeout(self) -> None:
        """A closing transport still writes its buffer out: a client that never reads it is cut off."""
        if self.transport is not None and self.transport.get_write_buffer_size():
            self._arm()
            self.server._closing[id(self)] = self

    def close(self) -> None:
        if self.transport is not None and self.state != _CLOSED:
            self.state = _CLOSED
            self.transport.close()
            self._close_within_timeout()


def _safe_precheck(precheck: Precheck, req: Request, on_pool: bool = False) -> Response | OnPool | None:
    try:
        early = precheck(req)
        if on_pool and isinstance(early, OnPool):  # asked for the pool, and on it: its own mistake
            raise TypeError("a precheck returned ON_POOL on the pool")
        return early
    except Exception:  # the precheck's own fault: 500 (never a request let in), and the server keeps serving
        return Response(500, b"internal error\n", close=True)
