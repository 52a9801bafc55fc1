"""The lease that keeps an HA pair of receivers to one action per fault: unit tests on one file
shared by two owners, then two receivers behind two clustered Alertmanagers, one of them killed
with SIGKILL in the middle of its action."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from healers.lease import Lease, LeaseRefused, owner_alive
from healers.orphans import owner_id

from .conftest import STACKS, wait_for
from .test_healer_alertmanager import AM_BIN, alertmanager, now_iso
from .test_healer_helpers import (
    HealBot,
    alert,
    deliver,
    free_port,
    payload,
    pid_alive,
    receiver,
    script,
    start_heal_cli,
    wait_idle,
)

ARGV = ("systemctl", "restart", "uw-flow-daemon.service")


def test_one_owner_at_a_time_then_the_cooldown_then_free(tmp_path: Path) -> None:
    path = tmp_path / "state/trading_readiness_heal.lease"
    a, b = Lease(path, "a"), Lease(path, "b")
    assert a.acquire("FP-1.1", ARGV, 100.0, hold_seconds=30, cooldown_seconds=300) is None
    with pytest.raises(LeaseRefused) as refused:
        b.acquire("FP-1.1", ARGV, 101.0, 30, 300)
    assert refused.value.reason == "leased"
    with pytest.raises(LeaseRefused) as refused:  # another point healed by the same restart
        b.acquire("FP-1.3", ARGV, 101.0, 30, 300)
    assert refused.value.reason == "leased"
    assert b.acquire("FP-2.1", ("other",), 101.0, 30, 300) is None  # a different action is independent
    a.release("FP-1.1", 110.0, ran=True)
    with pytest.raises(LeaseRefused) as refused:
        b.acquire("FP-1.1", ARGV, 120.0, 30, 300)
    assert refused.value.reason == "cooldown"
    assert b.acquire("FP-1.1", ARGV, 401.0, 30, 300) is None  # after the cooldown
    assert a.update("FP-1.1", 402.0, 30) is False and b.update("FP-1.1", 402.0, 30, pgid=5) is True
    assert b.entries()["FP-1.1"]["pgid"] == 5 and b.entries()["FP-1.1"]["owner"] == "b"
    b.release("FP-2.1", 403.0, ran=False)  # nothing ran: no cooldown left behind
    assert "FP-2.1" not in b.entries()


def test_an_expired_lease_of_a_dead_owner_is_taken_over_and_its_orphan_ended(tmp_path: Path) -> None:
    path = tmp_path / "heal.lease"
    orphan = subprocess.Popen(["sleep", "600"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        gone = Lease(path, f"{dead.pid}:12345:abcd")
        assert not owner_alive(gone.owner) and owner_alive(owner_id(orphan.pid))
        now = time.time()
        assert gone.acquire("FP-1.1", ARGV, now - 100, hold_seconds=30, cooldown_seconds=300) is None
        gone.update("FP-1.1", now - 99, pgid=orphan.pid, proc_start=int(owner_id(orphan.pid).split(":")[1]))
        note = Lease(path, "b").acquire("FP-1.1", ARGV, now, 30, 300)
        assert note is not None and f"ended its orphaned action (process group {orphan.pid})" in note
        assert orphan.wait(timeout=10) is not None
    finally:
        orphan.kill()


@pytest.mark.parametrize("owner", ["\u00b2:1", "9" * 5000 + ":1", ":1", "12", "x:1", None, 7])
def test_an_owner_the_lease_file_cannot_name_is_not_alive(owner: object) -> None:
    """What a corrupt or foreign lease file holds as its owner (a superscript digit, more digits
    than int() reads, no pid, no start time) is an owner that does not run: never an exception."""
    assert owner_alive(owner) is False


def test_a_torn_tail_after_the_first_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "heal.lease"
    a = Lease(path, "a")
    a.acquire("FP-1.1", ARGV, 100.0, 30, 300)
    with path.open("ab") as fh:
        fh.write(b'{"version": 1, "entri')  # what a kill between write and truncate leaves
    with pytest.raises(LeaseRefused):
        Lease(path, "b").acquire("FP-1.1", ARGV, 101.0, 30, 300)


@pytest.mark.parametrize("shared_audit", [False, True])
def test_two_receivers_on_one_bot_run_the_action_once(tmp_path: Path, shared_audit: bool) -> None:
    """Separate or shared audit files: either way the lease decides."""
    hb = HealBot(tmp_path)
    healers = {"FP-1.1": {"run": [str(hb.block), "one"], "cooldown_seconds": 300}}
    cfg_a = hb.config(healers, verify_timeout_seconds=0.3, audit_file="logs/heals-a.jsonl")
    (tmp_path / "a.yaml").write_text(cfg_a.read_text())
    cfg_b = hb.config(healers, verify_timeout_seconds=0.3,
                      audit_file="logs/heals-a.jsonl" if shared_audit else "logs/heals-b.jsonl")
    with receiver(hb, tmp_path / "a.yaml") as ra, receiver(hb, cfg_b) as rb:
        assert ra.deliver(payload(alert("FP-1.1"))) == ["accepted"]
        assert rb.deliver(payload(alert("FP-1.1"))) == ["leased"]
        hb.release("one")
        wait_idle(ra)
        assert rb.deliver(payload(alert("FP-1.1"))) == ["cooldown"]
        assert rb.metric("trading_healer_skipped_total", fp="FP-1.1", reason="leased") == 1.0
    assert hb.run_count() == 1


@STACKS
@pytest.mark.skipif(AM_BIN is None, reason="Alertmanager is not installed (make system-deps)")
def test_ha_pair_behind_clustered_alertmanagers_one_killed_mid_action_runs_once_per_fault(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    action = script(tmp_path / "ha.sh", f"""
        echo "$$ $PPID" >> {hb.runs}
        while [ ! -e {tmp_path}/release ]; do sleep 0.05; done
        echo "$$ $PPID" >> {tmp_path}/done.log
    """)
    healers = {"FP-1.1": {"run": [str(action)], "timeout_seconds": 4, "cooldown_seconds": 300}}
    cfgs = []
    for name in ("a", "b"):  # separate audit files: only the lease in the bot root is shared
        cfgs.append(tmp_path / f"{name}.yaml")
        cfgs[-1].write_text(hb.config(healers, verify_timeout_seconds=0.5,
                                      audit_file=f"logs/heals-{name}.jsonl").read_text())
    ports = [free_port(), free_port()]
    procs = {port: start_heal_cli(hb, cfg, port) for port, cfg in zip(ports, cfgs, strict=True)}
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for port, url in zip(ports, urls, strict=True):
            wait_for(lambda u=url, p=procs[port]: up(u, p), timeout=20, what="a receiver")
        p1, p2 = free_port(), free_port()
        with ExitStack() as stack:
            am1 = stack.enter_context(alertmanager(tmp_path, "am1", urls, cluster_port=p1))
            am2 = stack.enter_context(alertmanager(tmp_path, "am2", urls, cluster_port=p2, peer=p1))
            wait_for(lambda: len(requests.get(am2.url + "/api/v2/status", timeout=5).json()["cluster"]
                                 .get("peers") or []) == 2, timeout=30, what="the Alertmanager cluster")
            starts = now_iso(-5)
            for am in (am1, am2):
                am.push("FP-1.1", starts)
            first = wait_for(lambda: hb.runs.exists() and hb.runs.read_text().split(), timeout=30,
                             what="the first action")
            orphan, owner = int(first[0]), int(first[1])
            other = next(p for p in ports if procs[p].pid != owner)
            holder = next(p for p in ports if procs[p].pid == owner)
            # the peer keeps getting the same alert (repeat_interval 1s) and refuses it: the lease is held
            wait_for(lambda: leased(other) >= 1, timeout=30, what="the peer refusing on the lease")
            assert hb.run_count() == 1
            procs[holder].send_signal(signal.SIGKILL)
            procs[holder].communicate(timeout=10)
            assert pid_alive(orphan)
            # the lease expires (timeout + verification + margin); the peer takes over and ends the orphan
            second = wait_for(lambda: hb.run_count() >= 2 and hb.runs.read_text().splitlines()[1].split(),
                              timeout=60, what="the peer to take over")
            assert int(second[1]) == procs[other].pid
            assert not pid_alive(orphan)
            (tmp_path / "release").write_text("")
            wait_for(lambda: "unverified" in json.dumps(
                requests.get(f"http://127.0.0.1:{other}/api/heals", timeout=5).json()["heals"]),
                timeout=30, what="the peer's outcome")
            # a repeat of the same firing, sent now: once one receiver is dead, Alertmanager's own
            # repeats no longer reach the peer within seconds (measured: none in 8 s), so waiting
            # for them proves nothing. The repeat is refused, and nothing else runs
            [live] = am1.alerts()
            repeat = {"status": "firing", "labels": live["labels"], "annotations": live["annotations"],
                      "startsAt": live["startsAt"], "endsAt": live["endsAt"], "generatorURL": live["generatorURL"],
                      "fingerprint": live["fingerprint"]}
            assert deliver(f"http://127.0.0.1:{other}", payload(repeat)) == ["duplicate"]
            assert hb.run_count() == 2
            done = (tmp_path / "done.log").read_text().split()
            assert done == second  # one action completed for the fault: the taken-over one
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def up(url: str, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, proc.communicate()
    try:
        return requests.get(url + "/-/healthy", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def leased(port: int) -> float:
    """The receiver's count of deliveries it refused because its peer holds the lease."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    prefix = 'trading_healer_skipped_total{fp="FP-1.1",reason="leased"} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def test_a_lease_audit_or_log_line_nested_deeper_than_the_parser_goes_reads_as_corrupt(tmp_path: Path) -> None:
    """JSON nested deeper than the parser goes raises RecursionError, not ValueError: the lease
    file, an audit or journal line and a bot log line read by the pipeline probe each treat it as
    the corrupt line it is."""
    from exporter.core.audit import parse_lines
    from exporter.tools.pipeline import _tail_lines

    deep = b"[" * 100_000 + b"]" * 100_000
    lease = tmp_path / "heal.lease"
    lease.write_bytes(deep + b"\n")
    assert Lease(lease, "a").entries() == {}
    assert Lease(lease, "a").acquire("FP-1.1", ARGV, time.time(), hold_seconds=30, cooldown_seconds=300) is None
    assert parse_lines(deep + b'\n{"event": "attempt"}\n') == [{"event": "attempt"}]
    log = tmp_path / "blocked_trades.jsonl"
    log.write_bytes(deep + b'\n{"symbol": "SPY"}\n')
    assert _tail_lines(log) == [{"symbol": "SPY"}]
