"""The bounded HTTP server both servers stand on (exporter/serve/httpd.py), over real loopback
sockets: requests split across packets or pipelined in one, half-closed clients, every refusal,
handlers that answer later or fail, and every wait for the client bounded by the read timeout."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from exporter.serve.httpd import BoundedHTTPServer, Request, Response

from .conftest import wait_for


class Served:
    def __init__(self, server: BoundedHTTPServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])
        self.seen: list[Request] = []


@contextlib.contextmanager
def serving(**kw: Any) -> Iterator[Served]:
    served: Served

    def handler(req: Request) -> Response | Future[Response]:
        served.seen.append(req)
        if req.path == "/boom":
            raise RuntimeError("handler failure")
        if req.path == "/later":  # answered from another thread, a moment later
            fut: Future[Response] = Future()
            threading.Timer(0.05, lambda: fut.set_result(Response(200, b"later\n"))).start()
            return fut
        if req.path == "/big":
            return Response(200, b"x" * (8 * 1024 * 1024))
        return Response(200, f"{req.method} {req.path} {len(req.body)}\n".encode())

    server = BoundedHTTPServer(("127.0.0.1", 0), handler, **kw)
    served = Served(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send ``data``, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def exchange_on(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def statuses(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSE = b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_pipelined_requests_are_answered_in_order() -> None:
    post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    with serving() as srv:
        raw = exchange(srv.port, GET + post + b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n" + CLOSE)
    assert statuses(raw) == [200, 200, 200, 200]
    bodies = [part.split(b"\r\n\r\n", 1)[1][:20] for part in raw.split(b"HTTP/1.1 ")[1:]]
    assert [b.split(b"\n")[0] for b in bodies] == [b"GET /a 0", b"POST /p 5", b"later", b"GET /last 0"]
    assert [r.path for r in srv.seen] == ["/a", "/p", "/later", "/last"]


def test_a_request_split_into_single_bytes_is_read_whole() -> None:
    request = b"POST /split HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"
    with serving() as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            s.sendall(request[i:i + 1])
        raw = s.recv(65536)
    assert statuses(raw) == [200] and raw.endswith(b"POST /split 11\n")
    assert srv.seen[0].body == b"hello world"


def test_a_half_closed_client_still_gets_its_answers() -> None:
    with serving() as srv:
        raw = exchange(srv.port, GET + b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert statuses(raw) == [200, 200] and raw.endswith(b"later\n")


@pytest.mark.parametrize(("data", "status"), [
    (b"PUT /a HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET /a HTTP/2.0\r\n\r\n", 400),
    (b"GET /a\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST /a HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
    # a digit to str.isdigit (ISO-8859-1 superscript two), not to int()
    (b"POST /a HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
    # more digits than int() reads (4,300)
    (b"POST /a HTTP/1.1\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n", 400),
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    (b"POST /a HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /a HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /a HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n", 431),
])
def test_refusals_answer_once_and_close(data: bytes, status: int) -> None:
    with serving(max_body=1000) as srv:
        raw = exchange(srv.port, data + GET)
        assert statuses(raw) == [status], raw[:200]
        assert b"Connection: close" in raw
        assert srv.seen == []  # the handler never saw it, nor the request behind it
        assert statuses(exchange(srv.port, CLOSE)) == [200]


def test_head_has_the_get_answers_length_without_its_body() -> None:
    with serving() as srv:
        raw = exchange(srv.port, b"HEAD /abc HTTP/1.1\r\nHost: x\r\n\r\n" + CLOSE)
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 12" in head  # of "HEAD /abc 0\n"
    assert rest.startswith(b"HTTP/1.1 200 ")


def test_a_failing_handler_is_a_500_and_the_server_keeps_serving() -> None:
    with serving() as srv:
        assert statuses(exchange(srv.port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n" + CLOSE)) == [500, 200]


def test_a_failing_precheck_is_a_500_never_a_request_let_in() -> None:
    def precheck(req: Request) -> Response | None:
        raise RuntimeError("auth backend down")

    for on_loop in (False, True):
        with serving(precheck=precheck, precheck_on_loop=on_loop) as srv:
            assert statuses(exchange(srv.port, GET)) == [500]
            assert srv.seen == []


def test_a_precheck_answer_skips_the_body() -> None:
    def precheck(req: Request) -> Response | None:
        return Response(401, b"no\n") if "authorization" not in req.headers else None

    with serving(precheck=precheck) as srv:
        raw = exchange(srv.port, b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + GET)
        assert statuses(raw) == [401] and b"Connection: close" in raw  # the unread body ends the connection
        ok = exchange(srv.port, b"POST /a HTTP/1.1\r\nAuthorization: x\r\nContent-Length: 5\r\n\r\nhello"
                      b"GET /b HTTP/1.1\r\nAuthorization: x\r\nConnection: close\r\n\r\n")
        assert statuses(ok) == [200, 200]


def test_silent_and_trickling_clients_are_cut_off_after_the_read_timeout() -> None:
    with serving(read_timeout=0.3) as srv:
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        half_head = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        half_head.sendall(b"GET /a HTTP/1.1\r\nHost")
        half_body = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        half_body.sendall(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        try:
            for s in (silent, half_head, half_body):
                assert s.recv(65536) == b""  # closed by the server, without an answer
            wait_for(lambda: not srv.server._conns, timeout=5, what="the connections to be released")
            assert srv.seen == []
        finally:
            for s in (silent, half_head, half_body):
                s.close()


def test_a_client_that_never_reads_its_answer_is_cut_off() -> None:
    with serving(read_timeout=0.5) as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: len(srv.seen) == 1, timeout=5, what="the request")
        # the answer does not fit the client's window: the server waits the read timeout for it
        # to read, then lets the connection go (what the kernel already holds it delivers alone)
        wait_for(lambda: not srv.server._conns, timeout=10, what="the stalled reader to be dropped")
        assert srv.server.dropped == 0 and statuses(exchange(srv.port, CLOSE)) == [200]


def test_at_the_cap_an_idle_connection_gives_way_and_busy_ones_refuse() -> None:
    gate = threading.Event()

    def precheck(req: Request) -> Response | None:
        if req.path == "/hold":
            gate.wait(10)
        return None

    with serving(max_connections=2, precheck=precheck) as srv:
        oldest = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        wait_for(lambda: len(srv.server._conns) == 1, timeout=5, what="the first idle connection")
        younger = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        wait_for(lambda: len(srv.server._conns) == 2, timeout=5, what="the second idle connection")
        newcomer = exchange(srv.port, CLOSE)
        assert statuses(newcomer) == [200]
        assert oldest.recv(100) == b""  # it was the one waiting longest for a request head
        assert statuses(exchange_on(younger, CLOSE)) == [200]  # the other one is still served
        oldest.close()
        busy = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
        try:
            for s in busy:
                s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: len(srv.server._conns) == 2 and not any(c.waiting for c in srv.server._conns.values()),
                     timeout=5, what="both connections busy")
            assert statuses(exchange(srv.port, CLOSE)) == [503]
        finally:
            gate.set()
            for s in busy:
                assert statuses(s.recv(65536)) == [200]
                s.close()
        assert srv.server.dropped == 2


def test_threads_stay_fixed_whatever_the_clients_do() -> None:
    with serving(workers=2) as srv:
        before = threading.active_count()
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(200)]
        try:
            for s in held[::2]:
                s.sendall(b"GET /a HTTP/1.1\r\nHo")
            assert statuses(exchange(srv.port, CLOSE)) == [200]
            assert threading.active_count() <= before + 2  # the pool's workers, started on demand
        finally:
            for s in held:
                s.close()


def test_keep_alive_rules_by_version() -> None:
    with serving() as srv:
        # HTTP/1.0 closes unless asked; HTTP/1.1 stays open unless asked to close
        assert statuses(exchange(srv.port, b"GET /a HTTP/1.0\r\n\r\n" + GET)) == [200]
        raw = exchange(srv.port, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + CLOSE)
        assert statuses(raw) == [200, 200]
        assert statuses(exchange(srv.port, GET + CLOSE)) == [200, 200]


def test_a_precheck_on_the_loop_can_hand_itself_to_the_pool() -> None:
    from exporter.serve.httpd import ON_POOL

    threads: list[str] = []

    def precheck(req: Request) -> Response | object | None:
        name = threading.current_thread().name
        threads.append(name)
        if req.path != "/slow":
            return None
        return Response(403, b"no\n") if name.startswith("t-worker") else ON_POOL  # it would block the loop

    with serving(precheck=precheck, precheck_on_loop=True, name="t") as srv:
        assert statuses(exchange(srv.port, CLOSE)) == [200]
        assert statuses(exchange(srv.port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == [403]
    assert threads[0] == threads[1] and not threads[0].startswith("t-worker")  # the loop's thread
    assert threads[2].startswith("t-worker")  # the second call, on the pool


def test_answers_leave_without_waiting_for_a_delayed_ack() -> None:
    """Nagle's algorithm is off on every connection the server accepts (uvloop's own setting), so
    an answer after a client's second request never waits for the client's delayed ACK."""
    with serving() as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(GET)
        assert statuses(s.recv(65536)) == [200]
        conns = list(srv.server._conns.values())
        assert len(conns) == 1 and conns[0].transport is not None
        sock = conns[0].transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
