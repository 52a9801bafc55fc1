"""The bot integration library: readiness from the exporter or in-process, gate(), the watcher, the example.

Real bot roots, real loopback servers (FakeAlpaca/FakeUW, a real ``serve`` subprocess, and a
small loopback HTTP peer that answers like an exporter in states that are slow to produce for
real: stale, warming up, DEGRADED, garbage, hanging), real subprocesses for the example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from exporter.integration import ReadinessGate, ReadinessView
from sandbox.botroot import BotRoot

from .conftest import REPO, Procs, clean_env, evaluate, wait_for
from .test_premarket import serve_process

EXAMPLE = REPO / "examples" / "stock_bot_integration.py"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


# --- an exporter-shaped loopback peer ----------------------------------------------------------
class Peer:
    """Answers ``/api/failure_points`` with whatever the test sets (``body`` or ``hang``)."""

    def __init__(self) -> None:
        self.body: bytes = b"{}"
        self.status = 200
        self.release = threading.Event()
        self.hang = False
        peer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if peer.hang:
                    peer.release.wait(10)
                    return
                self.send_response(peer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(peer.body)))
                self.end_headers()
                self.wfile.write(peer.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, readiness: str, critical: tuple[str, ...] = (), warning: tuple[str, ...] = (),
               age: float = 1.0, ready: bool = True) -> None:
        now = time.time()
        points = {fp: {"id": fp, "name": f"point {fp}", "status": "ERROR" if fp in critical else "WARN",
                       "last_check": now - age, "last_error": f"{fp} is failing"} for fp in (*critical, *warning)}
        points["FP-9.9"] = {"id": "FP-9.9", "name": "fine", "status": "OK", "last_check": now - age, "last_error": None}
        self.body = json.dumps({"readiness": readiness, "critical_fps": list(critical), "warning_fps": list(warning),
                                "failure_points": points, "ready": ready, "pending_fps": [] if ready else ["FP-1.1"]
                                }).encode()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.stop()


# --- tests -------------------------------------------------------------------------------------
def test_in_process_when_no_exporter_runs(running: Procs, bot: BotRoot) -> None:
    gate = ReadinessGate(closed_port_url(), bot_root=str(bot.path), environ={}, in_process_cache_seconds=0)
    before = tree_digest(bot.path)
    view = gate.readiness()
    assert view.source == "in-process"
    assert "unreachable" in view.errors[0]
    assert view.readiness == evaluate(bot.path).readiness.name == "READY"
    decision = gate.gate()
    assert decision.trade and decision.readiness == "READY" and decision.reasons == ()
    assert tree_digest(bot.path) == before  # asking never writes into the bot root

    bot.kill_switch()
    decision = gate.gate()
    assert not decision.trade and decision.readiness == "BLOCKED" and decision.source == "in-process"
    assert any(r.startswith("FP-3.10") and "kill switch" in r.lower() for r in decision.reasons), decision.reasons
    assert "do not trade: BLOCKED via in-process - FP-3.10" in decision.why()


def test_in_process_results_are_cached(bot: BotRoot) -> None:
    gate = ReadinessGate(None, bot_root=str(bot.path), environ={}, in_process_cache_seconds=3600)
    first = gate.readiness()
    assert first.readiness == "BLOCKED" and "FP-6.1" in first.critical_fps  # no bot process runs
    bot.kill_switch()
    assert gate.readiness().critical_fps == first.critical_fps  # cached, not re-evaluated


def test_exporter_first_then_in_process_when_it_stops(tmp_path: Path, running: Procs, bot: BotRoot) -> None:
    with serve_process(bot.path, tmp_path / "serve.log") as exp:
        wait_for(lambda: exp.get("/-/ready"), timeout=60, what="exporter ready", every=0.2)
        gate = ReadinessGate(exp.url, bot_root=str(bot.path), environ={})
        view = gate.readiness()
        api = json.loads(exp.get("/api/failure_points"))
        assert view.source == "exporter" and view.errors == ()
        assert view.readiness == api["readiness"]
        assert list(view.critical_fps) == api["critical_fps"]
    view = gate.readiness()
    assert view.source == "in-process" and "unreachable" in view.errors[0]


def test_exporter_answers_that_are_not_trusted(peer: Peer) -> None:
    gate = ReadinessGate(peer.url, in_process=False, max_age_seconds=120, timeout_seconds=0.5)
    peer.answer("READY")
    assert gate.gate().trade

    peer.answer("READY", age=600)  # a scheduler that stopped keeps serving its last READY
    d = gate.gate()
    assert not d.trade and d.readiness == "UNKNOWN" and "stale" in d.reasons[0], d

    peer.answer("UNKNOWN", ready=False)
    assert "has not evaluated every check" in gate.gate().reasons[0]

    peer.body = b"<html>proxy error</html>"
    assert "not the readiness JSON" in gate.gate().reasons[0]

    peer.status, peer.body = 401, b"unauthorized"
    assert "HTTP 401" in gate.gate().reasons[0]

    peer.hang = True
    d = gate.gate()
    assert not d.trade and "did not answer within 0.5 s" in d.reasons[0], d


def test_degraded_and_unknown_are_configurable(peer: Peer, tmp_path: Path) -> None:
    peer.answer("DEGRADED", warning=("FP-1.6", "FP-3.8", "FP-6.4"))
    assert ReadinessGate(peer.url).gate().trade
    strict = ReadinessGate(peer.url, trade_when_degraded=False).gate()
    assert not strict.trade and strict.readiness == "DEGRADED"
    assert [r.split()[0] for r in strict.reasons] == ["FP-1.6", "FP-3.8", "FP-6.4"]

    peer.answer("BLOCKED", critical=("FP-3.1",), warning=("FP-1.6",))
    d = ReadinessGate(peer.url, trade_when_unknown=True).gate()
    assert not d.trade and d.reasons == ("FP-3.1 point FP-3.1: FP-3.1 is failing",)

    # neither source works: the default is not to trade, and the reasons name both failures
    root = tmp_path / "bot"
    root.mkdir()
    (root / "trading-readiness.yaml").write_text("readiness: {max_warning: 2}\n")
    gate = ReadinessGate(closed_port_url(), bot_root=str(root), environ={})
    d = gate.gate()
    assert not d.trade and d.readiness == "UNKNOWN" and d.source == "none"
    assert "unreachable" in d.reasons[0] and "max_warning" in d.reasons[0], d.reasons
    assert ReadinessGate(closed_port_url(), bot_root=str(root), environ={}, trade_when_unknown=True).gate().trade

    with pytest.raises(ValueError):
        ReadinessGate("file:///etc/passwd")


def test_watcher_logs_each_change_and_stops(peer: Peer) -> None:
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test.readiness.watcher")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    seen: list[tuple[str | None, str]] = []

    def on_change(before: ReadinessView | None, after: ReadinessView) -> None:
        seen.append((before.readiness if before else None, after.readiness))
        raise RuntimeError("a broken callback of the bot")

    peer.answer("READY")
    watcher = ReadinessGate(peer.url, in_process=False).start_watcher(0.05, logger, on_change)
    try:
        wait_for(lambda: seen == [(None, "READY")], what="first readiness")
        peer.answer("BLOCKED", critical=("FP-3.10",))
        wait_for(lambda: len(seen) == 2, what="change to BLOCKED")
        peer.answer("READY")
        wait_for(lambda: len(seen) == 3, what="change back to READY")
        time.sleep(0.2)  # several more polls with the same answer: no further change is logged
        assert seen == [(None, "READY"), ("READY", "BLOCKED"), ("BLOCKED", "READY")]
        changes = [r.getMessage() for r in records if "trading readiness" in r.getMessage()]
        assert len(changes) == 3
        assert "READY -> BLOCKED (exporter), critical: FP-3.10" in changes[1] and "FP-3.10 is failing" in changes[1]
        # the callback's exception is logged and the thread lives on
        assert [r.levelno for r in records if "callback raised" in r.getMessage()] == [logging.ERROR] * 3
        assert watcher.running
    finally:
        watcher.stop()
        logger.removeHandler(handler)
    assert not watcher.running


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True,
                          env=clean_env(), timeout=60, cwd="/")


def test_example_runs_cycles(bot: BotRoot, peer: Peer) -> None:
    # no exporter: in-process checks; nothing runs in this bot root, so every cycle is skipped
    r = run_example("--bot-root", str(bot.path), "--exporter-url", closed_port_url(), "--cycles", "3",
                    "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    skipped = [line for line in r.stdout.splitlines() if "not trading: do not trade: BLOCKED via in-process" in line]
    assert len(skipped) == 3 and "FP-6.1" in skipped[0], r.stdout
    assert "trading readiness start -> BLOCKED (in-process)" in r.stdout

    peer.answer("READY")
    r = run_example("--bot-root", str(bot.path), "--exporter-url", peer.url, "--cycles", "2", "--interval", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("trading cycle runs") == 2, r.stdout

    assert run_example("--cycles", "-1").returncode == 3
    assert run_example("--exporter-url", "ftp://x").returncode == 3
