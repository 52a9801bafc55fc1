"""How fast the healer acknowledges Alertmanager under a burst.

Alertmanager waits for the webhook's answer (and retries on a timeout), so the receiver must
answer at once even while an action runs. The receiver runs as the real `heal` CLI process on
loopback; 200 client threads released together each POST one delivery (a mix of one real alert,
its duplicates, other firings of the same point inside the cooldown, unknown points and resolved
notifications), for several rounds, while the point's action (a 30 s script) is running.
Reported: acknowledgement latency p50/p95/p99/max, non-2xx answers and how many actions ran.

Beside it, in the same run and under the same load, a minimal stdlib server (``http.server``,
a thread per connection, reading the body and answering ``{}``) gives the floor the machine
allows; the ratio of the two p99s is printed. The load comes from a separate process, so the
client threads do not share the receiver's interpreter.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from sandbox.botroot import BotRoot

CONCURRENCY = 200
ROUNDS = 5
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
    starts = "2026-11-25T10:00:00Z" if kind == 0 else f"2026-11-25T10:{rnd:02d}:{i % 60:02d}Z"
    alert = {"status": status, "labels": {"alertname": "TradingFailurePoint", "fp": fp, "severity": "critical"},
             "annotations": {"summary": "bench"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": f"{i % 7:016x}"}
    return json.dumps({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status,
                       "receiver": "healer", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://127.0.0.1:9093", "alerts": [alert]}).encode()


def _post(port: int, body: bytes) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/alertmanager", body=body,
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return time.perf_counter() - t0, resp.status
    except OSError:
        return time.perf_counter() - t0, 0
    finally:
        conn.close()


def _round(port: int, rnd: int) -> list[tuple[float, int]]:
    results: list[tuple[float, int]] = [(0.0, 0)] * CONCURRENCY
    barrier = threading.Barrier(CONCURRENCY)
    bodies = [_body(i, rnd) for i in range(CONCURRENCY)]

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = _post(port, bodies[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def _rounds(port: int) -> list[tuple[float, int]]:
    samples: list[tuple[float, int]] = []
    for rnd in range(ROUNDS):
        samples += _round(port, rnd)
    return samples


def _load(port: int) -> list[tuple[float, int]]:
    """The rounds from a separate process (its own interpreter, its own GIL)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_rounds, port).result(timeout=600)


MINIMAL_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


def main() -> str:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        bot = BotRoot(tmp / "bot").healthy()
        runs = tmp / "runs.log"
        action = tmp / "slow_fix.sh"
        action.write_text(f"#!/bin/sh\necho run >> {runs}\nsleep 30\n")
        action.chmod(0o755)
        cfg = tmp / "tr.yaml"
        cfg.write_text(yaml.safe_dump({
            "healer": {"verify_timeout_seconds": 1, "verify_interval_seconds": 0.5},
            "healers": {"FP-1.1": {"run": [str(action)], "cooldown_seconds": 300, "timeout_seconds": 60}}}))
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADING_", "ALPACA", "APCA", "UW_"))}
        env["TRADING_READINESS_HEALER_TOKEN"] = TOKEN
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config", str(cfg), "--bot-root", str(bot.path),
                                 "heal", "--listen", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_up(port, proc)
            single = [_post(port, _body(1, 99))[0] for _ in range(50)]
            samples = _load(port)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
        finally:
            _stop(proc)
        base_port = _free_port()
        base = subprocess.Popen([sys.executable, "-c", MINIMAL_SERVER, str(base_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_up(base_port, base)
            baseline = _load(base_port)
        finally:
            _stop(base)
        actions = len(runs.read_text().splitlines()) if runs.exists() else 0
    running = 'trading_healer_running{fp="FP-1.1"} 1.0' in metrics
    lat = [s * 1000 for s, _ in samples]
    bad = sum(1 for _, code in samples if not 200 <= code < 300)
    skipped: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("trading_healer_skipped_total{"):
            inside = line[line.index("{") + 1:line.index("}")]
            labels: dict[str, Any] = dict(kv.split("=", 1) for kv in inside.split(","))
            reason = labels["reason"].strip('"')
            skipped[reason] = skipped.get(reason, 0) + float(line.rsplit(" ", 1)[1])
    skip_text = ", ".join(f"{k} {int(v)}" for k, v in sorted(skipped.items()) if v)
    single_ms = [s * 1000 for s in single]
    base_lat = [s * 1000 for s, _ in baseline]
    return "\n".join([
        f"Acknowledgement latency of `POST /alertmanager` (fresh connection per delivery, loopback), "
        f"{CONCURRENCY} concurrent deliveries released together, {ROUNDS} rounds "
        f"({len(lat)} deliveries) while the healed point's 30 s action runs "
        f"(still running at the end: {'yes' if running else 'NO'}); clients and receiver share the same cores:",
        "",
        "| | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
        f"| 200 concurrent | {_pct(lat, 50):.1f} ms | {_pct(lat, 95):.1f} ms | {_pct(lat, 99):.1f} ms | "
        f"{max(lat):.1f} ms |",
        f"| minimal stdlib server, 200 concurrent | {_pct(base_lat, 50):.1f} ms | {_pct(base_lat, 95):.1f} ms | "
        f"{_pct(base_lat, 99):.1f} ms | {max(base_lat):.1f} ms |",
        f"| one at a time (50) | {_pct(single_ms, 50):.1f} ms | {_pct(single_ms, 95):.1f} ms | "
        f"{_pct(single_ms, 99):.1f} ms | {max(single_ms):.1f} ms |",
        "",
        f"p99 ratio, receiver / minimal server: {_pct(lat, 99) / _pct(base_lat, 99):.2f}",
        "",
        f"Non-2xx answers or connection errors: {bad}. Actions run: {actions} (one alert, deduplicated). "
        f"Skipped by reason: {skip_text}.",
    ])


if __name__ == "__main__":
    print(main())
