"""One client connection of the bounded HTTP server (``exporter.serve.httpd``): an asyncio protocol
that parses requests as their bytes arrive, enforces the server's caps and read timeout, and
hands each complete request to the server's precheck, ``inline`` function or pool."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, cast

from ..core.fields import decimal
from .httpwire import Handler, Later, OnPool, Precheck, Request, Response, encode_response, parse_head

#: a request head larger than this is refused with 431, a request line longer than MAX_LINE_BYTES
#: with 414 (http.server's limit), more header lines than MAX_HEADERS with 431
MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 65536
MAX_HEADERS = 100
#: the methods served; any other (PUT, an unknown word, a lower-case "get") is 501 Not Implemented
METHODS = frozenset({"GET", "HEAD", "POST"})


class Host(Protocol):
    """What a connection uses of its server (``exporter.serve.httpd.BoundedHTTPServer``)."""

    handler: Handler
    precheck: Precheck | None
    precheck_on_loop: bool
    inline: Callable[[Request], Response | Future[Response] | Later | None] | None
    max_body: int
    read_timeout: float
    pool: ThreadPoolExecutor
    dropped: int
    _loop_thread: int | None
    _conns: OrderedDict[int, Connection]
    _closing: dict[int, Connection]

    def _admit(self, conn: Connection) -> bool: ...


#: where a connection is: reading a request head, reading its body, or answering it
_HEAD, _BODY, _BUSY, _CLOSED = range(4)


class Connection(asyncio.Protocol):
    """One client connection, parsed as its bytes arrive: no coroutine, task or stream per
    request. A request is answered before the next one on the connection is looked at
    (pipelined requests wait in the buffer), and every wait for the client (its request head,
    its body, its reading of our answer) is bounded by the server's read timeout."""

    def __init__(self, server: Host, loop: asyncio.AbstractEventLoop) -> None:
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
        # uvloop turns Nagle's algorithm off on every TCP connection it accepts (an answer never
        # waits for a delayed ACK; tests/test_httpd.py checks it): no socket object is made here
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self._disarm()
        self.server._conns.pop(id(self), None)
        self.server._closing.pop(id(self), None)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        if self.state == _HEAD and not self.buf and not self.write_paused and self.shortcut(data):
            return
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

    def shortcut(self, data: bytes) -> bool:
        """A subclass's shorter path for a request that arrived whole in one read (``data`` starts
        with its request line): True when it took the request and called ``taken`` (the answer
        then comes through ``reply``); False leaves ``data`` to the general parser, which is the
        one that refuses anything wrong or unusual."""
        return False

    def taken(self, keep_alive: bool) -> None:
        """``shortcut`` took a whole request: the connection waits for its answer."""
        self._disarm()
        self.state = _BUSY
        self.keep_alive = keep_alive
        self.req = None

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
            length = decimal(raw_len.strip())  # 0-9 only, at most 18 of them
            self.length = -1 if length is None else length
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
        self._on_loop(self._answered, resp)

    def _on_loop(self, fn: Callable[[Any], None], arg: Any) -> None:
        """``fn(arg)`` on the event loop's thread: at once when called there, else handed to it."""
        if threading.get_ident() == self.server._loop_thread:
            fn(arg)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(fn, arg)

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
            self._on_loop(then, result)

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
        self._sent(transport, keep)

    def answer_raw(self, raw: bytes) -> None:
        """Answer the request ``shortcut`` took (keep-alive) with ``raw``, a whole HTTP/1.1
        answer the subclass wrote itself (from any thread)."""
        self._on_loop(self._write_raw, raw)

    def _write_raw(self, raw: bytes) -> None:
        transport = self.transport
        if transport is None or self.state == _CLOSED:
            return
        transport.write(raw)
        self._sent(transport, True)

    def _sent(self, transport: asyncio.Transport, keep: bool) -> None:
        """An answer is written: the connection closes, or waits for the next request."""
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
