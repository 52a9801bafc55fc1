"""A small bounded HTTP/1.1 server: one asyncio event-loop thread and a fixed pool of handler threads.

``http.server.ThreadingHTTPServer`` starts a thread per connection, so a few thousand idle or
slow clients (a scanner, a stalled proxy, a slowloris) become a few thousand threads, and every
answer waits its turn for the GIL behind them. Here a connection is an asyncio protocol
(``exporter.serve.httpconn``) whose requests are parsed as their bytes arrive (no coroutine, task or
stream per request; a request that arrives in one read is sliced out of that read's bytes): the thread
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

import uvloop

from .httpconn import MAX_HEAD_BYTES, Connection
from .httpwire import LATER, ON_POOL, Handler, Later, OnPool, Precheck, Request, Response

#: the messages are httpwire's; handlers and servers import them from here too
__all__ = ["LATER", "MAX_HEAD_BYTES", "ON_POOL", "SWITCH_INTERVAL", "BoundedHTTPServer", "Handler", "Later", "OnPool",
           "Precheck", "Request", "Response"]

#: the GIL switch interval a process serving with this server sets (``sys.setswitchinterval``):
#: its event loop shares the GIL with worker threads, and a thread waiting for it gets it within
#: this long (5 ms by default, which a request needing it a few times pays several times over)
SWITCH_INTERVAL = 0.001


class BoundedHTTPServer:
    """``server_address``, ``serve_forever()``, ``shutdown()`` and ``server_close()`` as in
    ``socketserver``, so it replaces ``ThreadingHTTPServer`` where those are used. Binding
    happens in the constructor (an ``OSError`` there names a busy or forbidden address)."""

    def __init__(self, addr: tuple[str, int], handler: Handler, *, precheck: Precheck | None = None,
                 workers: int = 4, max_body: int = 1024 * 1024, read_timeout: float = 10.0,
                 max_connections: int = 512, backlog: int = 512, name: str = "httpd",
                 tls: ssl.SSLContext | None = None, listen: bool = True, precheck_on_loop: bool = False,
                 inline: Callable[[Request], Response | Future[Response] | Later | None] | None = None,
                 connection: type[Connection] = Connection) -> None:
        self.handler = handler
        #: the protocol class of each client connection (a subclass may take a server's own
        #: requests on a shorter path, and hand everything else to this one)
        self.connection = connection
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
        self._conns: OrderedDict[int, Connection] = OrderedDict()
        #: connections closed by us that still write out an answer (bounded by the read timeout too)
        self._closing: dict[int, Connection] = {}
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
        server = await loop.create_server(lambda: self.connection(self, loop), sock=self.socket, backlog=self.backlog,
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

    def _admit(self, conn: Connection) -> bool:
        if len(self._conns) >= self.max_connections:
            idle = next((c for c in self._conns.values() if c.waiting), None)
            if idle is None:
                return False
            self._conns.pop(id(idle), None)
            idle.close()  # the longest wait for a request head gives way
            self.dropped += 1
        self._conns[id(conn)] = conn
        return True
