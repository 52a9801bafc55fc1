"""A receiver killed with SIGKILL in the middle of a heal: the action it started is found by its
recorded process group when the receiver comes back, ended, the point re-checked, and the
attempt recorded as ``interrupted``; cooldowns and attempts survive as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import requests

from healers.audit import heal_status

from .conftest import wait_for
from .test_healer_helpers import (
    TOKEN,
    HealBot,
    alert,
    free_port,
    payload,
    pid_alive,
    receiver,
    script,
    start_heal_cli,
    wait_idle,
)

AUDIT = "logs/trading_readiness_heals.jsonl"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def up(url: str, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, proc.communicate()
    try:
        return requests.get(url + "/-/healthy", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def start(hb: HealBot, cfg: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = start_heal_cli(hb, cfg, port)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: up(url, proc), timeout=20, what="the receiver")
    return proc, url


def test_kill_9_mid_action_the_restarted_receiver_ends_the_orphan_and_records_the_outcome(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    hb.break_weights()
    # repairs at once, then hangs: the receiver dies while its action still runs
    fix_then_hang = script(tmp_path / "fix_then_hang.sh", f"""
        echo "$$" >> {hb.runs}
        cp {hb.backup} {hb.weights}
        while [ ! -e {tmp_path}/release ]; do sleep 0.05; done
        : > {tmp_path}/finished
    """)
    cfg = hb.config({"FP-2.1": {"run": [str(fix_then_hang)], "timeout_seconds": 3, "cooldown_seconds": 300}})
    first, url = start(hb, cfg)
    try:
        resp = requests.post(url + "/alertmanager", json=payload(alert("FP-2.1")), headers=HEADERS, timeout=5)
        assert resp.json()["decisions"] == ["accepted"]
        action = int(wait_for(lambda: hb.runs.exists() and hb.runs.read_text().split()[0], what="the action"))
        wait_for(lambda: "spawned" in (hb.root / AUDIT).read_text(), what="the action's process record")
        spawned = [json.loads(x) for x in (hb.root / AUDIT).read_text().splitlines()][-1]
        assert spawned["event"] == "spawned" and spawned["pgid"] == action and spawned["proc_start"] > 0
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert pid_alive(action)  # its own process group outlived the receiver: an orphan
    second, url = start(hb, cfg)
    try:
        wait_for(lambda: requests.get(url + "/api/heals", timeout=5).json()["heals"], timeout=20,
                 what="the interrupted attempt's record")
        heal = requests.get(url + "/api/heals", timeout=5).json()["heals"][0]
        assert heal["outcome"] == "interrupted" and heal["verified"] is True
        assert heal["verification"].startswith("OK after")
        assert f"process group {action} was still running at its timeout and was killed" in heal["detail"]
        assert not pid_alive(action) and not (tmp_path / "finished").exists()
        # the cooldown and the dedupe key survived the crash as before: no second run
        same = requests.post(url + "/alertmanager", json=payload(alert("FP-2.1")), headers=HEADERS, timeout=5)
        assert same.json()["decisions"] == ["duplicate"]
        metrics = requests.get(url + "/metrics", timeout=5).text
        assert 'trading_healer_attempts_total{fp="FP-2.1",outcome="interrupted"} 1.0' in metrics
    finally:
        second.terminate()
        _out, err = second.communicate(timeout=15)
    assert second.returncode == 0, err
    assert hb.run_count() == 1
    assert heal_status(hb.root / AUDIT) == {"FP-2.1": (True, True)}
    events = [json.loads(x)["event"] for x in (hb.root / AUDIT).read_text().splitlines()]
    assert events == ["started", "spawned", "attempt"]
    # a third start finds nothing left to recover
    third, url = start(hb, cfg)
    third.terminate()
    third.communicate(timeout=15)
    assert len((hb.root / AUDIT).read_text().splitlines()) == 3


def test_a_start_recorded_without_a_process_is_rechecked_and_recorded(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    audit = hb.root / AUDIT
    audit.parent.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_peer = f"{os.getpid()}:{Path(f'/proc/{os.getpid()}/stat').read_text().rpartition(')')[2].split()[19]}"
    audit.write_text(json.dumps({"event": "started", "fp": "FP-1.1", "epoch": 1000.0, "fingerprint": "f1",
                                 "starts_at": "2026-11-25T10:00:00.000Z", "owner": f"{dead.pid}:123"}) + "\n"
                     # a live receiver sharing this audit file: its action is not an orphan
                     + json.dumps({"event": "started", "fp": "FP-1.3", "epoch": 1000.0, "fingerprint": "f3",
                                   "starts_at": "2026-11-25T10:00:00.000Z", "owner": live_peer}) + "\n")
    with receiver(hb, cfg) as r:
        wait_for(lambda: r.heals(), what="the recovered attempt")
        wait_idle(r)
        [heal] = r.heals()
        assert heal["fp"] == "FP-1.1" and heal["outcome"] == "interrupted" and heal["verified"] is False
        assert "never recorded" in heal["detail"] and heal["fingerprint"] == "f1"
        assert r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="interrupted") == 1.0
        assert r.healer.policy.snapshot()["FP-1.1"]["phase"] == "idle"
    assert hb.run_count() == 0
