"""End to end with real Prometheus and Alertmanager: fault -> failing point -> alert -> heal -> READY.

Every sandbox fault is injected into one running stack (sandboxed bot, exporter, healer,
Prometheus, Alertmanager; 1 s checks, scrapes and evaluations, ``for: 0s``). Each must turn its
failure point to the status the fault table names, fire ``TradingFailurePoint`` for that point
in Prometheus with the matching severity, and then return to READY -- by itself where a healer
exists (the healer's audit records a verified success), after ``clear`` otherwise. A second
stack runs two bots behind one Prometheus and a clustered Alertmanager pair: a fault in bot A is
healed in A only, once, and B never leaves READY.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from sandbox import faults
from sandbox.stack import Bot, Stack, Timings, find_binary, matches

from .conftest import REPO, STACKS, clean_env, wait_for

pytestmark = [STACKS, pytest.mark.skipif(find_binary("prometheus") is None or
                                         find_binary("prometheus-alertmanager", "alertmanager") is None,
                                         reason="needs Debian's prometheus and prometheus-alertmanager (make system-deps)")]

#: healed faults first (they must recover with no help), sticky ones last (they cannot recover)
ORDER = sorted(faults.FAULTS, key=lambda n: (bool(faults.FAULTS[n].sticky), faults.FAULTS[n].healer is None))
SEVERITY = {"ERROR": "critical", "WARN": "warning"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("e2e"), bots=("a",), timings=Timings.fast())
    try:
        st.start()
        bot = st.running[0]
        wait_for(lambda: bot.readiness() == "READY" and st.live(), timeout=60,
                 what="the stack READY and scraped")
        yield st
    finally:
        st.stop()


def wait_ready(bot: Bot, timeout: float, what: str) -> None:
    """Wait for READY; on a timeout say which points kept it from READY and why."""
    try:
        wait_for(lambda: bot.readiness() == "READY", timeout=timeout, every=0.3, what=what)
    except AssertionError as exc:
        data = bot.failure_points()
        failing = {fp: (p.get("status"), p.get("last_error")) for fp, p in data.get("failure_points", {}).items()
                   if p.get("status") in ("ERROR", "WARN")}
        raise AssertionError(f"{exc}; readiness {data.get('readiness')}, pending {data.get('pending_fps')}, "
                             f"failing {failing}") from None


def _firing(st: Stack, fp: str, instance: str, severity: str | None = None) -> bool:
    labels = {"alertname": "TradingFailurePoint", "fp": fp, "instance": instance}
    if severity:
        labels["severity"] = severity
    return any(matches(a, **labels) for a in st.prometheus_alerts())


@pytest.mark.parametrize("name", ORDER)
def test_fault_becomes_its_failing_point_and_alert_then_ready_again(stack: Stack, name: str) -> None:
    bot = stack.running[0]
    fault = faults.get(name)
    (fp, expected), = fault.expects.items()
    # the previous fault's alert for the same point must be gone, or it would vouch for this one
    wait_for(lambda: not _firing(stack, fp, bot.instance) and bot.readiness() == "READY", timeout=30,
             what=f"READY with no {fp} alert before {name}")
    since = time.time()
    stack.bot("a").sandbox.fault(name)
    # A healer may act on the WARN alert before the point reaches ERROR (a hung daemon's cache is
    # restarted while it is merely late): for healed faults any failing status and alert will do.
    statuses = {expected} if fault.healer is None else {"WARN", "ERROR"}
    severity = SEVERITY[expected] if fault.healer is None else None
    try:
        wait_for(lambda: bot.status(fp) in statuses, timeout=30, every=0.2,
                 what=f"{fp} {'/'.join(sorted(statuses))} under {name}")
        wait_for(lambda: _firing(stack, fp, bot.instance, severity), timeout=20, every=0.2,
                 what=f"TradingFailurePoint {fp} {severity or ''} firing under {name}")
        if fault.sticky:
            return  # e.g. a 429 counts until the quota reset: it must stay failing, and it does
        if fault.healer is not None:
            wait_ready(bot, 45, f"READY again by itself after {name}")
            heals = wait_for(lambda: [r for r in bot.audit() if r.get("event") == "attempt" and r.get("fp") == fp
                                      and float(r.get("epoch", 0)) >= since], timeout=20,
                             what=f"the healer's record of healing {fp}")
            assert heals[-1]["outcome"] == "success", heals
            return
    finally:
        if not fault.sticky:
            stack.bot("a").sandbox.clear(name)
    wait_ready(bot, 45, f"READY after clearing {name}")


def test_two_bots_one_prometheus_an_alertmanager_pair_heal_only_the_broken_bot_once(tmp_path: Path) -> None:
    # healed once: every later copy of the still-firing alert is within the cooldown
    with Stack(tmp_path, bots=("a", "b"), alertmanagers=2, timings=Timings(heal_cooldown=120)) as st:
        a, b = st.bot("a"), st.bot("b")
        wait_for(lambda: a.readiness() == "READY" and b.readiness() == "READY" and st.live(), timeout=60,
                 what="both bots READY and scraped")
        for url in st.alertmanager_urls:  # the pair is one cluster
            wait_for(lambda url=url: len(requests.get(f"{url}/api/v2/status", timeout=3).json()["cluster"]["peers"])
                     == 2, timeout=30, what=f"{url} clustered with its peer")
        b_seen: list[str | None] = []
        stop = threading.Event()

        def watch_b() -> None:
            while not stop.wait(0.2):
                b_seen.append(b.readiness())

        watcher = threading.Thread(target=watch_b, daemon=True)
        watcher.start()
        try:
            a.sandbox.fault("daemon-kill")
            wait_for(lambda: a.status("FP-1.1") == "ERROR", timeout=20, what="FP-1.1 ERROR in A")
            for i in range(2):  # both peers hold the alert: Prometheus sends to each
                wait_for(lambda i=i: any(matches(x, fp="FP-1.1", instance=a.instance)
                                         for x in st.alertmanager_alerts(i)), timeout=20,
                         what=f"the FP-1.1 alert in Alertmanager {i}")
            assert st.sink is not None  # the critical alert also paged (once per group), B's never
            wait_for(lambda: any(matches(x, alertname="TradingFailurePoint", fp="FP-1.1", instance=a.instance)
                                 for x in st.sink.alerts("/pager")), timeout=20, what="the page for A's FP-1.1")
            wait_for(lambda: a.readiness() == "READY" and a.heals(), timeout=45, what="A healed and READY")
            # a late duplicate from the second peer can only come while a peer still holds the
            # firing alert: wait until both have resolved it
            wait_for(lambda: not any(matches(x, fp="FP-1.1", instance=a.instance)
                                     for i in range(2) for x in st.alertmanager_alerts(i)),
                     timeout=30, what="A's FP-1.1 alert resolved in both Alertmanagers")
        finally:
            stop.set()
            watcher.join(timeout=5)
        attempts_a = [r for r in a.audit() if r.get("event") == "attempt"]
        assert [(r["fp"], r["outcome"]) for r in attempts_a] == [("FP-1.1", "success")]
        assert [r for r in b.audit() if r.get("event") in ("attempt", "started")] == []
        assert b_seen and set(b_seen) == {"READY"}, b_seen
        assert not [x for x in st.sink.alerts("/pager") if x["labels"].get("instance") == b.instance]
        assert any(matches(x, alertname="Watchdog") for x in st.sink.alerts("/heartbeat"))
        assert b.sandbox.daemon_healthy()


def test_make_demo_drill_ends_ready_and_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    """The demo as the README runs it: the drill ends READY, the stack stays up, Ctrl-C stops it all."""
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.demo", "--dir", str(work)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any("Ctrl-C stops everything" in line for line in lines) or proc.poll() is not None,
                 150, "the demo to finish its drill and keep running")
        assert proc.poll() is None, "".join(lines)
        ours = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                if str(work) in " ".join(p.info["cmdline"] or []) and p.info["pid"] != proc.pid]
        assert ours, "the stack should be running until Ctrl-C"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    timeline = [line for line in out.splitlines() if line.startswith("  +")]
    for needle in ("fault injected: daemon-kill", "FP-1.1 ERROR", "alert firing: TradingFailurePoint",
                   "heal started", "heal success", "READY again"):
        assert any(needle in line for line in timeline), (needle, out)
    assert "drill passed" in out and "stopped: every process" in out
    left = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if str(work) in " ".join(p.info["cmdline"] or []) and p.info["pid"] != os.getpid()]
    assert left == []
