"""The healer behind a real Alertmanager (Debian's prometheus-alertmanager): alerts pushed through
the v2 API, routed to the receiver with a bearer token from a credentials file, delivered again
and again (group/repeat intervals of a second), resolved, and in an HA pair that both notify."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .conftest import wait_for as _wait_for
from .prom import stop_process
from .test_healer_helpers import TOKEN, HealBot, Running, free_port, payload, pid_alive, receiver, wait_idle

AM_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(AM_BIN is None, reason="Alertmanager is not installed (make system-deps)")


def wait_for(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    return _wait_for(cond, timeout=timeout, what=what, every=0.2)  # scrapes over HTTP: poll gently


def now_iso(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).isoformat().replace("+00:00", "Z")


class AM:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def push(self, fp: str, starts_at: str, ends_at: str | None = None) -> None:
        """What Prometheus does: POST the alert to /api/v2/alerts (endsAt in the past resolves it)."""
        a: dict[str, Any] = {"labels": {"alertname": "TradingFailurePoint", "fp": fp, "severity": "critical",
                                        "healer": "restart-uw-daemon", "job": "trading-readiness"},
                             "annotations": {"summary": f"{fp} failing"}, "startsAt": starts_at,
                             "generatorURL": "http://127.0.0.1:9090/graph"}
        if ends_at is not None:
            a["endsAt"] = ends_at
        r = requests.post(self.url + "/api/v2/alerts", json=[a], timeout=5)
        assert r.status_code == 200, r.text

    def alerts(self) -> list[dict[str, Any]]:
        return requests.get(self.url + "/api/v2/alerts", timeout=5).json()  # type: ignore[no-any-return]


@contextmanager
def alertmanager(tmp: Path, name: str, healer_url: str | list[str], cluster_port: int | None = None,
                 peer: int | None = None) -> Iterator[AM]:
    """One Alertmanager on a free loopback port routing everything to the healer; killed after."""
    d = tmp / name
    d.mkdir()
    cred = d / "token"
    cred.write_text(TOKEN + "\n")
    cred.chmod(0o600)
    cfg = {
        "route": {"receiver": "healer", "group_by": ["alertname", "fp"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1s"},
        # several URLs: every receiver of an HA pair gets every notification
        "receivers": [{"name": "healer", "webhook_configs": [{
            "url": url + "/alertmanager", "send_resolved": True, "max_alerts": 0,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(cred)}}}
            for url in ([healer_url] if isinstance(healer_url, str) else healer_url)]}],
    }
    (d / "am.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(AM_BIN), f"--config.file={d / 'am.yml'}", f"--storage.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url={url}"]
    if cluster_port is None:
        argv.append("--cluster.listen-address=")
    else:
        argv += [f"--cluster.listen-address=127.0.0.1:{cluster_port}",
                 f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
                 "--cluster.gossip-interval=50ms", "--cluster.pushpull-interval=1s",
                 "--cluster.settle-timeout=2s", "--cluster.peer-timeout=100ms"]
        if peer is not None:
            argv.append(f"--cluster.peer=127.0.0.1:{peer}")
    log = d / "am.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=d)
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                return requests.get(url + "/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=30, what=f"Alertmanager {name}")
        yield AM(url, proc, log)
    finally:
        stop_process(proc, timeout=10)


def deliveries(r: Running) -> int:
    return sum(r.healer.sources.values())


def test_alertmanager_repeats_and_fifty_duplicates_run_the_action_once(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}})
    with receiver(hb, cfg) as r, alertmanager(tmp_path, "am", r.url) as am:
        am.push("FP-1.1", now_iso(-5))
        wait_for(lambda: hb.run_count() == 1, timeout=20, what="the action after Alertmanager's first notification")
        # Alertmanager keeps notifying the still-firing alert (repeat_interval 1s): all duplicates
        wait_for(lambda: deliveries(r) >= 4, timeout=30, what="repeated Alertmanager notifications")
        [live] = am.alerts()
        same = {"status": "firing", "labels": live["labels"], "annotations": live["annotations"],
                "startsAt": live["startsAt"], "endsAt": live["endsAt"], "generatorURL": live["generatorURL"],
                "fingerprint": live["fingerprint"]}
        decisions = [r.deliver(payload(same)) for _ in range(50)]
        assert decisions == [["duplicate"]] * 50
        wait_idle(r)
        assert hb.run_count() == 1
        assert r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="unverified") == 1.0
        assert (r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="duplicate") or 0) >= 53
        heal = r.heals()[0]
        assert heal["fingerprint"] == live["fingerprint"] and heal["argv"] == [str(hb.ok)]


def test_alertmanager_failures_give_up_and_resolved_resets(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.fail)], "cooldown_seconds": 0.5, "max_attempts": 2}})
    with receiver(hb, cfg) as r, alertmanager(tmp_path, "am", r.url) as am:
        started = now_iso(-5)
        am.push("FP-1.1", started)
        # each repeat after the cooldown is a new attempt until the window's budget is spent
        wait_for(lambda: r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0, timeout=30, what="give-up")
        assert r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="failed") == 2.0
        wait_for(lambda: (r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="gave_up") or 0) >= 2,
                 timeout=20, what="later notifications refused as gave_up")
        assert hb.run_count() == 2
        am.push("FP-1.1", started, ends_at=now_iso(-1))
        wait_for(lambda: r.metric("trading_healer_gave_up", fp="FP-1.1") == 0.0, timeout=20,
                 what="the resolved notification")
        assert (r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="resolved") or 0) >= 1
        assert r.healer.policy.snapshot()["FP-1.1"]["attempts_in_window"] == 0
        am.push("FP-1.1", now_iso())  # it breaks again: a fresh budget
        wait_for(lambda: hb.run_count() >= 3, timeout=20, what="an attempt after the reset")
        wait_for(lambda: r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0, timeout=30, what="second give-up")
        assert hb.run_count() == 4
    events = [line for line in (hb.root / "logs/trading_readiness_heals.jsonl").read_text().splitlines()]
    assert sum('"event": "gave_up"' in e for e in events) == 2 and sum('"event": "resolved"' in e for e in events) >= 1


def test_alertmanager_hung_action_process_group_is_killed(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.hang)], "timeout_seconds": 1, "cooldown_seconds": 300}})
    with receiver(hb, cfg) as r, alertmanager(tmp_path, "am", r.url) as am:
        am.push("FP-1.1", now_iso(-5))
        pidfile = tmp_path / "child.pid"
        child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=20,
                             what="the hung action's child"))
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="timeout") == 1.0,
                 timeout=20, what="timeout outcome")
        wait_for(lambda: not pid_alive(child), what="the sleep 600 in the action's process group to die")
        assert r.heals()[0]["outcome"] == "timeout" and r.metric("trading_healer_running", fp="FP-1.1") == 0.0
        wait_for(lambda: deliveries(r) >= 3, timeout=30, what="repeated notifications")
        assert hb.run_count() == 1


def test_two_clustered_alertmanagers_both_notify_and_the_action_runs_once(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}})
    p1, p2 = free_port(), free_port()
    with ExitStack() as stack:
        r = stack.enter_context(receiver(hb, cfg))
        am1 = stack.enter_context(alertmanager(tmp_path, "am1", r.url, cluster_port=p1))
        am2 = stack.enter_context(alertmanager(tmp_path, "am2", r.url, cluster_port=p2, peer=p1))

        def peers() -> int:
            status = requests.get(am2.url + "/api/v2/status", timeout=5).json()
            return len(status["cluster"].get("peers") or [])

        wait_for(lambda: peers() == 2, timeout=30, what="the two Alertmanagers to form a cluster")
        starts = now_iso(-5)
        for am in (am1, am2):  # Prometheus sends every alert to every Alertmanager
            am.push("FP-1.1", starts)

        def both_notified() -> bool:
            return sum(1 for n in r.healer.sources.values() if n >= 1) >= 2

        wait_for(both_notified, timeout=40, what="notifications from both Alertmanagers")
        wait_idle(r)
        assert set(r.healer.sources) == {am1.url, am2.url}
        assert hb.run_count() == 1
        assert r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="unverified") == 1.0
        assert os.path.getsize(hb.root / "logs/trading_readiness_heals.jsonl") > 0
