"""How fast the healer acknowledges Alertmanager under a burst, beside a minimal stdlib server
and the floor of a Python event loop.

Alertmanager waits for the webhook's answer (and retries on a timeout), so the receiver must
answer at once even while an action runs. The receiver runs as the real `heal` CLI process on
loopback, with a slow action running for the healed point; 200 deliveries are released together
(a mix of one real alert, its duplicates, other firings of the same point inside the cooldown,
unknown points and resolved notifications), ROUNDS times per run.

Beside it, in the same run and under the same load, a minimal stdlib server
(``http.server.ThreadingHTTPServer``, a thread per connection, reading the body and answering
200 ``{}``) is the baseline, and an asyncio protocol on the healer's own event loop (uvloop) that
only finds each request's end and answers ``{}`` is the floor an event loop in Python reaches on
this machine. Runs alternate between
the servers and every run is reported (no best-of-N). The load comes from a separate process
(non-blocking sockets and one ``selectors`` loop, so the client's own cost stays small), never
from threads inside the server's process. Two client shapes:
keep-alive (what Alertmanager's HTTP client does: one connection per concurrent notification,
reused) and a fresh connection per delivery.

Judged by: the healer's keep-alive p99 over all its runs (goal < 20 ms) and its ratio to the
minimal server's p99 over the same runs.

``python -m bench.bench_healer --pin`` is a diagnostic, never the judged figure: the client on one
CPU and the servers on the others. A loopback send wakes the reader synchronously, and the kernel
then often runs it on the sender's CPU, so the client and a server take turns on one CPU while the
other idles; pinned, that share of the latency is gone.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sandbox.botroot import BotRoot

CONCURRENCY = 200
ROUNDS = 10
RUNS = 3
GOAL_P99_MS = 20.0
TOKEN = "bench-token-0123456789abcdef"  # noqa: S105
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _body(i: int, rnd: int) -> bytes:
    kind = i % 4
    fp = {0: "FP-1.1", 1: "FP-1.1", 2: "FP-9.9; touch /tmp/x", 3: "FP-1.3"}[kind]
    status = "resolved" if kind == 3 else "firing"
    starts = "2026-11-25T10:00:00Z" if kind == 0 else f"2026-11-25T10:{rnd % 60:02d}:{i % 60:02d}Z"
    alert = {"status": status, "labels": {"alertname": "TradingFailurePoint", "fp": fp, "severity": "critical"},
             "annotations": {"summary": "bench"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": f"{i % 7:016x}"}
    return json.dumps({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status,
                       "receiver": "healer", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://127.0.0.1:9093", "alerts": [alert]}).encode()


def _request(port: int, body: bytes, keep_alive: bool) -> bytes:
    return (f"POST /alertmanager HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n").encode() + body


def _status_if_complete(buf: bytes) -> int | None:
    """The status of the answer in ``buf`` once all of it (head and Content-Length body) is there."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(buf.split(b" ", 2)[1]) if len(buf) >= end + 4 + length else None


def _read_answer(s: socket.socket) -> int:
    """One whole answer from a blocking socket; its status."""
    buf = b""
    while (status := _status_if_complete(buf)) is None:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return status


def _connect(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    return s


def _bursts(port: int, keep_alive: bool, base_round: int) -> list[tuple[float, int]]:
    """ROUNDS bursts of CONCURRENCY deliveries sent together; (seconds, status) each, timed from
    the moment its request is sent (or its connection opened) to the last byte of the answer.

    Non-blocking sockets and one ``selectors`` loop, no asyncio: the client's own cost per
    delivery (a send, a recv, a header scan) stays a small part of what is measured, so the
    servers are compared rather than the client. A keep-alive connection is registered with the
    selector once, not once per request (two system calls per delivery less, on the cores the
    servers share with the client)."""
    conns: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    if keep_alive:  # every connection opened and warmed up once, outside the measurement
        for i in range(CONCURRENCY):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(_request(port, _body(i, 99), True))
            _read_answer(s)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            conns.append(s)
    closed: set[int] = set()  # keep-alive connections the server closed
    samples: list[tuple[float, int]] = []
    for rnd in range(base_round, base_round + ROUNDS):
        requests = [_request(port, _body(i, rnd), keep_alive) for i in range(CONCURRENCY)]
        t0 = [0.0] * CONCURRENCY
        bufs = [b""] * CONCURRENCY
        done: list[tuple[float, int] | None] = [None] * CONCURRENCY
        left = [CONCURRENCY]

        def finish(i: int, status: int, done: list[tuple[float, int] | None] = done, t0: list[float] = t0,
                   left: list[int] = left) -> None:
            if done[i] is None:
                done[i] = (time.perf_counter() - t0[i], status)
                left[0] -= 1

        def drop(i: int, sock: socket.socket) -> None:
            """A connection that is done with: a fresh one after its answer, a keep-alive one closed."""
            sel.unregister(sock)
            if keep_alive:
                closed.add(i)

        socks = conns if keep_alive else []
        for i in range(CONCURRENCY):
            t0[i] = time.perf_counter()
            if keep_alive:
                try:
                    if i in closed:
                        raise ConnectionError("closed by the server")
                    conns[i].send(requests[i])
                except OSError:
                    finish(i, 0)
            else:
                socks.append(_connect(port))
                sel.register(socks[i], selectors.EVENT_WRITE, i)
        deadline = time.monotonic() + 30
        while left[0] and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                i, sock = key.data, key.fileobj
                assert isinstance(sock, socket.socket)
                if key.events == selectors.EVENT_WRITE:  # a fresh connection is open: send
                    try:
                        sock.send(requests[i])
                    except OSError:
                        finish(i, 0)
                        drop(i, sock)
                    else:
                        sel.modify(sock, selectors.EVENT_READ, i)
                    continue
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    finish(i, 0)
                    drop(i, sock)
                    continue
                bufs[i] += chunk
                status = _status_if_complete(bufs[i])
                if status is not None:
                    finish(i, status)
                    if not keep_alive:
                        drop(i, sock)
        for i in range(CONCURRENCY):  # what did not answer within 30 s counts as 30 s and a failure
            if done[i] is None:
                done[i] = (30.0, 0)
                if not keep_alive:
                    drop(i, socks[i])
        samples += [d for d in done if d is not None]
        if not keep_alive:
            for sock in socks:
                sock.close()
        time.sleep(0.2)  # the next burst starts from a quiet server
    sel.close()
    for sock in conns:
        sock.close()
    return samples


def _serial(port: int, n: int) -> list[float]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    for i in range(n):
        request = _request(port, _body(1, 90 + i % 5), True)
        t0 = time.perf_counter()
        s.sendall(request)
        _read_answer(s)
        out.append(time.perf_counter() - t0)
    s.close()
    return out


def _load(port: int, keep_alive: bool, base_round: int, cpus: set[int] | None = None) -> list[tuple[float, int]]:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    return _bursts(port, keep_alive, base_round)


def _load_serial(port: int) -> list[float]:
    return _serial(port, 50)


def _in_client_process(fn: object, *args: object) -> object:
    """Run ``fn(*args)`` in a freshly spawned process: the load never shares the server's interpreter."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=600)  # type: ignore[arg-type]


MINIMAL_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # its head and body are two writes: never wait for a delayed ACK
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers(); self.wfile.write(b"OK\\n")
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog is set at bind time: a class attribute, not after
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


#: the least an event loop in Python does per delivery: find the head's end and the body's length,
#: answer 200 ``{}``; no validation, no journal, no timeouts, no caps (what the healer adds)
EVENT_LOOP_FLOOR = """
import asyncio, sys, uvloop
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, bytearray()
    def data_received(self, data):
        self.buf += data
        while (end := self.buf.find(b"\\r\\n\\r\\n")) >= 0:
            n = 0
            for line in bytes(self.buf[:end]).split(b"\\r\\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if len(self.buf) < end + 4 + n:
                return
            head = bytes(self.buf[:end])
            del self.buf[:end + 4 + n]
            body = b"OK\\n" if head.startswith(b"GET") else b"{}"
            self.t.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
                         % (len(body), body))
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]), backlog=512)
    await server.serve_forever()
uvloop.run(main())  # the event loop the healer runs on
"""

#: the servers measured, in the order each round visits them
SERVERS = ("healer", "minimal", "event-loop floor")


def _wait_up(port: int, proc: subprocess.Popen[bytes], path: str = "/-/healthy") -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


def _row(name: str, ms: list[float]) -> str:
    return (f"| {name} | {len(ms)} | {_pct(ms, 50):.1f} ms | {_pct(ms, 95):.1f} ms | {_pct(ms, 99):.1f} ms | "
            f"{max(ms):.1f} ms |")


def _skipped(metrics: str) -> str:
    skipped: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("trading_healer_skipped_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            reason = labels["reason"].strip('"')
            skipped[reason] = skipped.get(reason, 0) + float(line.rsplit(" ", 1)[1])
    return ", ".join(f"{k} {int(v)}" for k, v in sorted(skipped.items()) if v)


def _split_cpus() -> tuple[set[int], set[int]] | None:
    """For ``--pin``: the client's CPU and the servers' CPUs (the first allowed CPU for the client,
    the others for the servers); None on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else None


def main(pin: bool = False) -> str:
    """``pin``: a diagnostic, not the judged setting. The client runs on one CPU and the servers on
    the others, so the kernel never puts the client on a server's CPU when one wakes the other
    (a loopback send is a synchronous wake-up, which favours the waker's CPU)."""
    split = _split_cpus() if pin else None
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        bot = BotRoot(tmp / "bot").healthy()
        runs_log = tmp / "runs.log"
        action = tmp / "slow_fix.sh"
        action.write_text(f"#!/bin/sh\necho run >> {runs_log}\nsleep 600\n")
        action.chmod(0o755)
        cfg = tmp / "tr.yaml"
        cfg.write_text(yaml.safe_dump({
            "healer": {"verify_timeout_seconds": 1, "verify_interval_seconds": 0.5},
            "healers": {"FP-1.1": {"run": [str(action)], "cooldown_seconds": 900, "timeout_seconds": 900}}}))
        port, base_port, floor_port = _free_port(), _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADING_", "ALPACA", "APCA", "UW_"))}
        env["TRADING_READINESS_HEALER_TOKEN"] = TOKEN
        healer = subprocess.Popen([sys.executable, "-m", "exporter", "--config", str(cfg), "--bot-root", str(bot.path),
                                   "heal", "--listen", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = subprocess.Popen([sys.executable, "-c", MINIMAL_SERVER, str(base_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        floor = subprocess.Popen([sys.executable, "-c", EVENT_LOOP_FLOOR, str(floor_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports = {"healer": port, "minimal": base_port, "event-loop floor": floor_port}
        client_cpus = None
        if split is not None:
            client_cpus = split[0]
            for proc in (healer, base, floor):
                os.sched_setaffinity(proc.pid, split[1])  # its threads start later, and inherit it
        per_run: list[tuple[str, str, list[float], int]] = []  # (server, shape, ms, non-2xx)
        try:
            _wait_up(port, healer)
            _wait_up(base_port, base)
            _wait_up(floor_port, floor)
            single = {name: [s * 1000 for s in _in_client_process(_load_serial, p)]  # type: ignore[attr-defined]
                      for name, p in ports.items()}
            for run in range(RUNS):
                for keep_alive in (True, False):
                    for name, p in ports.items():
                        samples: list[tuple[float, int]] = _in_client_process(  # type: ignore[assignment]
                            _load, p, keep_alive, run * 2 * ROUNDS + (0 if keep_alive else ROUNDS), client_cpus)
                        per_run.append((name, "keep-alive" if keep_alive else "fresh connection",
                                        [s * 1000 for s, _ in samples], sum(1 for _, c in samples if c != 200)))
            metrics = _get(port, "/metrics")
            heals = json.loads(_get(port, "/api/heals"))
        finally:
            _stop(healer)
            _stop(base)
            _stop(floor)
        actions = len(runs_log.read_text().splitlines()) if runs_log.exists() else 0

    def pooled(server: str, shape: str) -> list[float]:
        return [x for name, sh, ms, _ in per_run if name == server and sh == shape for x in ms]

    running = 'trading_healer_running{fp="FP-1.1"} 1.0' in metrics
    lines = [
        f"Acknowledgement latency of `POST /alertmanager` on loopback: {CONCURRENCY} deliveries released together, "
        f"{ROUNDS} bursts per run, {RUNS} runs per server and client shape, alternating between the real `heal` "
        f"process (a 600 s action running throughout: still running at the end: "
        f"{'yes' if running else 'NO'}), a minimal stdlib `ThreadingHTTPServer` answering 200 (the baseline the "
        f"healer is judged against) and the event-loop floor: an asyncio protocol on the healer's event loop "
        f"(uvloop) that only finds each request's "
        f"end and answers `{{}}` (what Python's event loop costs on this machine, before any validation, journal, "
        f"timeout or cap). The load comes from a separate client process (non-blocking sockets and `selectors`) "
        + (f"on the same {len(os.sched_getaffinity(0))} shared CPUs." if split is None else
           f"pinned to CPU {sorted(split[0])}, the servers to CPUs {sorted(split[1])} (`--pin`: a diagnostic of what "
           f"the kernel's placement of the client costs; the judged figure is the unpinned run's)."),
        "",
        "Every run:",
        "",
        "| server, client | run | deliveries | p50 | p95 | p99 | max | non-200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    counters: dict[tuple[str, str], int] = {}
    for name, shape, ms, bad in per_run:
        counters[(name, shape)] = counters.get((name, shape), 0) + 1
        lines.append(f"| {name}, {shape} | {counters[(name, shape)]} | {len(ms)} | {_pct(ms, 50):.1f} ms | "
                     f"{_pct(ms, 95):.1f} ms | {_pct(ms, 99):.1f} ms | {max(ms):.1f} ms | {bad} |")
    lines += ["", "All runs pooled:", "", "| server, client | deliveries | p50 | p95 | p99 | max |",
              "|---|---|---|---|---|---|"]
    for shape in ("keep-alive", "fresh connection"):
        for name in SERVERS:
            lines.append(_row(f"{name}, {shape}", pooled(name, shape)))
    for name in SERVERS:
        lines.append(_row(f"{name}, one at a time (keep-alive)", single[name]))
    h99, b99 = _pct(pooled("healer", "keep-alive"), 99), _pct(pooled("minimal", "keep-alive"), 99)
    f99, fb99 = _pct(pooled("healer", "fresh connection"), 99), _pct(pooled("minimal", "fresh connection"), 99)
    e99 = _pct(pooled("event-loop floor", "keep-alive"), 99)
    bad = sum(b for name, _s, _m, b in per_run if name == "healer")
    lines += [
        "",
        ("Pinned (a diagnostic, not judged): " if split is not None else "")
        + f"**Judged by:** healer keep-alive p99 {h99:.1f} ms, goal < {GOAL_P99_MS:g} ms: "
        f"**{'met' if h99 < GOAL_P99_MS else 'NOT met'}**; p99 ratio healer / minimal server, keep-alive: "
        f"**{h99 / b99:.2f}** (fresh connection: {f99 / fb99:.2f}); the event-loop floor's keep-alive p99: "
        f"{e99:.1f} ms (healer / floor {h99 / e99:.2f}).",
        "",
        f"Healer answers other than 200: {bad}. Actions run: {actions} (one alert, deduplicated). "
        f"Acknowledged deliveries still undecided at the end: {heals['backlog']}. Skipped by reason: "
        f"{_skipped(metrics)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--pin", action="store_true",
                     help="diagnostic: the client on one CPU, the servers on the others (not the judged setting)")
    print(main(pin=cli.parse_args().pin))
