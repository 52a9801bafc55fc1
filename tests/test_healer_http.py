"""The receiver's HTTP side under load it must shrug off: thousands of slow or silent clients
(the thread count stays flat and a real delivery is still answered), a payload of a thousand
alerts (a bounded number of log lines), keep-alive, and repeated identical log lines."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from healers.server import MAX_PLAIN_HEADS

from .conftest import flood_slow_clients, wait_for
from .test_healer_helpers import TOKEN, HealBot, alert, deliver, free_port, payload, receiver, start_heal_cli, wait_idle
from .test_healer_helpers import decisions as delivered


def test_3000_slow_clients_do_not_grow_threads_and_a_real_delivery_is_answered(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    port = free_port()
    proc = start_heal_cli(hb, cfg, port)
    url = f"http://127.0.0.1:{port}"
    socks: list[socket.socket] = []
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return requests.get(url + "/-/healthy", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=20, what="the receiver")
        before, most = flood_slow_clients(port, proc.pid, b"POST /alertmanager HTTP/1.1\r\nHost: x\r\n", socks)
        # the acceptor, the fixed handler pool (one already started), the dispatcher, the action
        # workers and the log summariser: nothing per client
        assert most <= before + 3, (before, most)
        # a real delivery in the middle of it all is answered
        assert deliver(url, payload(alert("FP-1.1"))) == ["accepted"]
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def test_a_thousand_alert_payload_writes_a_bounded_number_of_log_lines(tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    with receiver(hb, cfg) as r:
        capfd.readouterr()
        alerts = [alert("FP-1.1", fingerprint=f"{i:016x}", starts_at=f"2026-11-25T10:{i % 60:02d}:00Z")
                  for i in range(1000)]
        resp = r.post(payload(*alerts))  # one answer for the thousand, before any of them is decided
        assert resp.status_code == 200 and resp.json() == {"delivery": resp.json()["delivery"], "alerts": 1000,
                                                           "state": "queued"}
        decisions = delivered(r.url, resp.json()["delivery"])
        assert decisions[0] == "accepted" and set(decisions[1:]) <= {"busy", "cooldown"}
        wait_idle(r)
        lines = capfd.readouterr().err.splitlines()
        assert 1 <= len(lines) <= 5, lines  # the action's start and outcome, not a line per alert
        r.healer.summarise()
        [summary] = capfd.readouterr().err.splitlines()
        assert "heal: skipped since the last summary: FP-1.1 " in summary
        for reason in ("busy", "cooldown"):
            n = decisions.count(reason)
            assert (f"FP-1.1 {reason} {n}" in summary) == (n > 0)
            assert r.metric("trading_healer_skipped_total", fp="FP-1.1", reason=reason) == n
    assert hb.run_count() == 1


def test_identical_lines_are_written_once_then_counted(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    hb = HealBot(tmp_path)
    with receiver(hb, hb.config({})) as r:
        capfd.readouterr()
        for _ in range(100):
            r.healer.log("internal error handling a delivery: OSError: [Errno 28] No space left on device")
        r.healer.log("something else")
        assert len(capfd.readouterr().err.splitlines()) == 2
        r.healer.summarise()
        [summary] = capfd.readouterr().err.splitlines()
        assert "repeated lines not written again: 99x internal error handling a delivery" in summary


def test_keep_alive_and_refusals_before_the_body(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    with receiver(hb, hb.config({})) as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.server.server_address[1], timeout=10)
        try:
            body = json.dumps(payload(alert("FP-9.9"))).encode()
            for _ in range(3):  # one connection, three deliveries
                conn.request("POST", "/alertmanager", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                assert resp.status == 200
                assert delivered(r.url, json.loads(resp.read())["delivery"]) == ["unknown_fp"]
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200 and b"trading_healer_stuck" in resp.read()
            # a wrong token is refused from the head: the body is never read and the connection ends
            conn.request("POST", "/alertmanager", body=body, headers={"Authorization": "Bearer nope"})
            resp = conn.getresponse()
            assert resp.status == 401 and resp.getheader("Connection") == "close"
            resp.read()
        finally:
            conn.close()


def _answers(port: int, data: bytes) -> list[tuple[bytes, bytes]]:
    """What the receiver answers to ``data`` sent on a fresh connection that the client then
    half-closes (the receiver answers what it has and closes the connection): (the answer's head,
    its body with delivery numbers blanked) for each answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        body, raw = rest[:length], rest[length:]
        out.append((head, re.sub(rb'"delivery": \d+', b'"delivery": N', body)))
    return out


def _delivery(headers: bytes, body: bytes) -> bytes:
    return b"POST /alertmanager HTTP/1.1\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


BODY = json.dumps(payload(alert("FP-9.9"))).encode()
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
#: (what is sent, whether it is a delivery the short path takes)
WIRE_CASES: list[tuple[bytes, bool]] = [
    (_delivery(b"Host: x\r\n" + AUTH + b"Content-Type: application/json\r\n", BODY), True),
    # what Alertmanager's client sends, header names in any case
    (_delivery(b"host: x\r\nuser-agent: Alertmanager/0.27.0\r\nauthorization: Bearer " + TOKEN.encode()
               + b"\r\naccept-encoding: gzip\r\n", BODY), True),
    (_delivery(b"Authorization: Bearer wrong-token-0123456789\r\n", BODY), False),
    (_delivery(b"", BODY), False),
    (_delivery(b"Authorization: Bearer \xe9" + TOKEN.encode()[1:] + b"\r\n", BODY), False),
    (_delivery(AUTH + AUTH, BODY), False),
    (_delivery(AUTH + b"Content-Length: %d\r\n" % len(BODY), BODY), False),
    (_delivery(AUTH + b"Content-Length : %d\r\n" % len(BODY), BODY), False),
    (_delivery(AUTH + b" folded: line\r\n", BODY), False),
    (_delivery(AUTH + b"no colon\r\n", BODY), False),
    (_delivery(AUTH + b"Transfer-Encoding: chunked\r\n", BODY), False),
    (_delivery(AUTH + b"Connection: close\r\n", BODY), False),
    (_delivery(AUTH + b"Expect: 100-continue\r\n", BODY), False),
    (_delivery(AUTH, b"{not json"), True),
    (_delivery(AUTH, json.dumps({**payload(alert("FP-9.9")), "version": "3"}).encode()), True),
    (_delivery(AUTH, b""), True),
    # pretty-printed: journaled as its alerts rather than as its body (a journal line has no line break)
    (_delivery(AUTH, json.dumps(payload(alert("FP-9.9")), indent=1).encode()), True),
    (_delivery(AUTH, json.dumps(payload(alert("FP-9.9"))).replace(", ", ",\r").encode()), True),
    (_delivery(AUTH, json.dumps(payload(*[alert("FP-9.9", fingerprint=f"{i:016x}") for i in range(200)])).encode()),
     False),  # larger than the loop validates: the pool does
    (b"POST /alertmanager HTTP/1.1\r\n" + AUTH + b"Content-Length: \xb2\r\n\r\n", False),
    (b"POST /alertmanager HTTP/1.1\r\n" + AUTH + b"Content-Length: " + b"0" * 5000 + b"%d\r\n\r\n" % len(BODY)
     + BODY, False),
    (b"POST /alertmanager HTTP/1.1\r\n" + AUTH + b"Content-Length: +%d\r\n\r\n" % len(BODY) + BODY, False),
    (b"POST /alertmanager HTTP/1.0\r\n" + AUTH + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY, False),
    (b"POST /alertmanager?x=1 HTTP/1.1\r\n" + AUTH + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY, False),
    (b"POST /other HTTP/1.1\r\n" + AUTH + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY, False),
    # two deliveries in one write: not whole in one read by itself, so the general path takes both
    (_delivery(AUTH, BODY) * 2, False),
    # a body shorter than its Content-Length: the general path waits for the rest
    (_delivery(AUTH, BODY)[:-5], False),
]


def test_the_short_path_answers_every_request_as_the_general_path_does(tmp_path: Path) -> None:
    """A plain delivery that arrives whole is validated and journaled straight from the read;
    everything else takes the general parser. Each request goes to a receiver with the short
    path and to one without it: the answers (heads byte for byte, bodies, where the connection
    ends) are the same, and the short path took exactly the requests it should."""
    answers = {}
    for short in (True, False):
        hb = HealBot(tmp_path / f"short-{short}")
        with receiver(hb, hb.config({}), short_path=short) as r:
            port = int(r.server.server_address[1])
            answers[short] = [_answers(port, data) for data, _ in WIRE_CASES]
            taken = r.server.short_path_taken
            assert delivered(r.url, 1) == ["unknown_fp"]  # what the short path journaled is decided
            wait_idle(r)  # and so is every delivery answered 200, however it was journaled
            accepted = sum(head.startswith(b"HTTP/1.1 200") for a in answers[short] for head, _ in a)
            views = r.healer.delivery_views(limit=100)
            assert len(views) == accepted and all(v["state"] == "decided" for v in views)
        assert taken == (sum(1 for _, short_path in WIRE_CASES if short_path) if short else 0)
    for (data, _), a, b in zip(WIRE_CASES, answers[True], answers[False], strict=True):
        assert a == b, data[:120]
    statuses = [[int(head.split(b" ")[1]) for head, _ in a] for a in answers[True]]
    assert statuses[:2] == [[200], [200]] and statuses[2:5] == [[401]] * 3
    assert statuses[-3] == [404] and statuses[-2] == [200, 200] and statuses[-1] == []
    assert b"body is not valid JSON" in answers[True][13][0][1]
    (head, body), = answers[True][0]
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ")
    assert body == b'{"delivery": N, "alerts": 1, "state": "queued"}\n'


def test_a_remembered_head_is_taken_only_when_all_but_its_length_is_the_same(tmp_path: Path) -> None:
    """The short path remembers a plain head that carried the right token (without its
    Content-Length line) and takes the same head again without reading its lines: a head that
    differs anywhere else (one character of the token, the Content-Length's spelling or value)
    is checked again, and each is answered as the general path answers it."""
    fresh = _delivery(b"Host: am-1\r\n" + AUTH + b"User-Agent: Alertmanager/0.27.0\r\n", BODY)
    again = fresh.replace(b"Content-Length: %d" % len(BODY), b"Content-Length: %d" % (len(BODY) + 1)) + b" "
    cases = [
        fresh,
        again,  # only the length differs: taken from the remembered head
        fresh.replace(TOKEN.encode(), TOKEN.encode()[:-1] + b"#"),  # one character of the token
        # checked again (the remembered head's length is digits only), and then taken: a header
        # value's surrounding whitespace is no part of it
        fresh.replace(b"Content-Length: %d" % len(BODY), b"Content-Length: %d " % len(BODY)),
        fresh.replace(b"Content-Length: %d" % len(BODY), b"Content-Length: +%d" % len(BODY)),
        fresh.replace(b"Content-Length: %d" % len(BODY), b"Content-Length: %d" % (len(BODY) - 1)),  # not whole
        fresh.replace(b"Host: am-1", b"Host: am-2"),  # another head: checked, then remembered too
    ]
    answers = {}
    for short in (True, False):
        hb = HealBot(tmp_path / f"short-{short}")
        with receiver(hb, hb.config({}), short_path=short) as r:
            port = int(r.server.server_address[1])
            answers[short] = [_answers(port, data) for data in cases]
            if short:
                assert r.server.short_path_taken == 4 and len(r.server.plain_heads) == 2
                # bounded: heads beyond MAX_PLAIN_HEADS are checked every time, and still taken
                for i in range(MAX_PLAIN_HEADS + 5):
                    data = fresh.replace(b"Host: am-1", b"Host: am-%d" % (i + 10))
                    assert _answers(port, data)[0][0].startswith(b"HTTP/1.1 200 OK")
                assert len(r.server.plain_heads) == MAX_PLAIN_HEADS
                assert r.server.short_path_taken == 4 + MAX_PLAIN_HEADS + 5
    assert answers[True] == answers[False]
    assert [[int(head.split(b" ")[1]) for head, _ in a] for a in answers[True]] == \
        [[200], [200], [401], [200], [400], [400], [200]]


def test_a_busy_journal_never_holds_the_event_loop(tmp_path: Path) -> None:
    """While the journal file is busy (the dispatcher rewriting or marking it holds its lock), the
    event loop leaves its turn's write to the flusher instead of waiting: other requests are
    answered meanwhile, and the delivery is answered once its write is on disk."""
    hb = HealBot(tmp_path)
    with receiver(hb, hb.config({})) as r, socket.create_connection(r.server.server_address, timeout=10) as s:
        with r.healer.journal.lock:
            s.sendall(_delivery(AUTH, BODY))
            wait_for(lambda: r.server.short_path_taken == 1, what="the delivery taken")
            # the event loop is free: a health check on another connection is answered at once
            assert requests.get(r.url + "/-/healthy", timeout=2).status_code == 200
            # and the delivery is not answered before it is on disk: an answer the loop had
            # written before the health check's would be in this socket already (loopback)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(65536)
            s.settimeout(10)
            assert r.healer.journal.path.read_bytes() == b""
        answer = b""
        while not answer.endswith(b"}\n"):
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"state": "queued"' in answer
        assert delivered(r.url, 1) == ["unknown_fp"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """Two receivers, with the short path and without it: their ports."""
    with contextlib.ExitStack() as stack:
        ports = []
        for short in (True, False):
            hb = HealBot(tmp_path_factory.mktemp(f"short-{short}"))
            r = stack.enter_context(receiver(hb, hb.config({}), short_path=short))
            ports.append(int(r.server.server_address[1]))
        yield ports[0], ports[1]


def _one_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """One whole answer from a keep-alive connection: (head, body with delivery numbers blanked)."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        assert chunk, "the connection closed without an answer"
        raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
    while len(rest) < length:
        rest += s.recv(65536)
    return head, re.sub(rb'"delivery": \d+', b'"delivery": N', rest[:length])


_NAMES = st.sampled_from([b"Host", b"host", b"Content-Type", b"User-Agent", b"Accept-Encoding", b"X-Forwarded-For",
                          b"Authorization", b"authorization", b"AUTHORIZATION", b"Content-Length",
                          b"content-length", b"Transfer-Encoding", b"Connection", b"Expect", b"Content-Length ",
                          b" Host", b"X\tY", b"", b"Keep-Alive", b"TE", b"\xe9t\xe9"])
_VALUES = st.sampled_from([b"x", b"", b" ", b"application/json", b"close", b"keep-alive", b"chunked",
                           b"100-continue", b"Bearer " + TOKEN.encode(), b"bearer " + TOKEN.encode(),
                           b"Bearer " + TOKEN.encode() + b" ", b"Bearer x", b"\xb2", b"+1", b"-1", b"0",
                           b"\xe9\xe8"])


#: whole header lines worth trying as they are (an independent name and value rarely meet)
_LINES = st.sampled_from([b"Connection: close", b"connection: Close", b"Connection: keep-alive",
                          b"Transfer-Encoding: chunked", b"Expect: 100-continue", b"Keep-Alive: timeout=5",
                          b"Content-Type: application/json", b"User-Agent: Alertmanager/0.27.0", b" Host: x",
                          b"Host x", b"Host:", b"X\tY: 1", b"\xe9t\xe9: \xe9", b"Authorization: Bearer x",
                          b"authorization: Bearer " + TOKEN.encode(), b"Content-Length: \xb2", b"Content-Length: 0"])
_LINE = st.one_of(_LINES, st.tuples(_NAMES, st.sampled_from([b":", b": ", b" : ", b""]), _VALUES).map(b"".join))


@settings(max_examples=300, deadline=None)
@given(extra=st.lists(_LINE, max_size=4),
       auth=st.sampled_from([AUTH, b"", AUTH + AUTH, b"Authorization:Bearer " + TOKEN.encode() + b"\r\n"]),
       length=st.sampled_from(["ok", "none", "twice", "digits-space"]),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
       body=st.sampled_from([BODY, b"{", b"", json.dumps(payload(alert("FP-9.9", status="resolved"))).encode()]))
def test_generated_heads_get_the_same_answer_from_both_paths(pair: tuple[int, int], extra: list[bytes], auth: bytes,
                                                             length: str, version: bytes, body: bytes) -> None:
    """Generated request heads (header names in any case, with whitespace, missing colons, the
    headers the short path must leave alone, tokens right and wrong, Content-Length missing,
    doubled or odd): the receiver with the short path answers each exactly as the one without it."""
    cl = b"Content-Length: %d\r\n" % len(body)
    lengths = {"ok": cl, "none": b"", "twice": cl + cl, "digits-space": b"Content-Length: %d %d\r\n" % (len(body),
                                                                                                      len(body))}
    head = (b"POST /alertmanager " + version + b"\r\n" + auth + b"".join(line + b"\r\n" for line in extra)
            + lengths[length] + b"\r\n")
    answers = []
    for port in pair:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + body)
            answers.append(_one_answer(s))
    assert answers[0] == answers[1], head
