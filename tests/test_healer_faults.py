"""The healer under real faults: a full disk under its audit file, weak tokens and secrets that
are pieces of JSON. Each of these wedged the receiver or corrupted its audit before."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.core.config import load as load_config
from healers import policy as policy_mod
from healers.policy import HealerSpec, Policy
from healers.receiver import Healer

from .conftest import wait_for
from .test_healer_helpers import (
    HealBot,
    alert,
    decisions,
    free_port,
    payload,
    receiver,
    script,
    start_heal_cli,
    wait_idle,
)

AUDIT = "logs/trading_readiness_heals.jsonl"


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A real filesystem that fills up: ENOSPC from the kernel, not from a mock."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Fill the filesystem completely; returns the filler to delete to free it again."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    with pytest.raises(OSError) as exc, (disk / "probe").open("ab") as fh:
        fh.write(b"x" * 8192)
        fh.flush()
        os.fsync(fh.fileno())
    assert exc.value.errno == errno.ENOSPC
    (disk / "probe").unlink(missing_ok=True)
    return filler


def spec(fp: str = "FP-1.1", timeout: float = 1.0, verify: float = 1.0) -> HealerSpec:
    return HealerSpec(fp=fp, name="restart-uw-daemon", argv=("true",), timeout_seconds=timeout, cooldown_seconds=10,
                      max_attempts=3, window_seconds=100, verify_timeout_seconds=verify, enabled=True)


def test_full_disk_under_the_audit_answers_5xx_and_never_wedges_the_point(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    with tiny_tmpfs(tmp_path / "disk") as disk:
        cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}},
                        audit_file=str(disk / "heals.jsonl"), verify_timeout_seconds=0.3)
        with receiver(hb, cfg) as r:
            filler = fill(disk)
            # the delivery cannot be journaled: it is not acknowledged, nothing runs, and the answer
            # says so at once (Alertmanager retries a 5xx)
            for _ in range(3):
                assert r.post(payload(alert("FP-1.1"))).status_code == 500
            assert hb.run_count() == 0
            snap = r.healer.policy.snapshot()["FP-1.1"]
            assert snap["phase"] == "idle" and snap["attempts_in_window"] == 0
            assert r.metric("trading_healer_running", fp="FP-1.1") == 0.0
            assert r.metric("trading_healer_queued", fp="FP-1.1") == 0.0
            assert r.metric("trading_healer_stuck", fp="FP-1.1") == 0.0
            # the disk is freed: Alertmanager's retry of the same alert is admitted (not busy, not duplicate)
            filler.unlink()
            assert r.deliver(payload(alert("FP-1.1"))) == ["accepted"]
            wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="unverified") == 1.0,
                     what="the outcome once the disk has room")
            assert hb.run_count() == 1
            events = [json.loads(x)["event"] for x in (disk / "heals.jsonl").read_text().splitlines()]
            assert events == ["started", "spawned", "attempt"]


def test_a_delivery_acknowledged_before_the_disk_filled_is_decided_once_there_is_room(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The answer does not wait for the audit: acknowledged (journaled) while deciding is held up,
    then the disk fills so its start record cannot be written. The point is not wedged, the
    delivery stays undecided and is tried again, and once there is room it runs exactly once."""
    hb = HealBot(tmp_path)
    with tiny_tmpfs(tmp_path / "disk") as disk:
        cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}},
                        audit_file=str(disk / "heals.jsonl"), verify_timeout_seconds=0.3)
        with receiver(hb, cfg) as r, (hb.root / "state/trading_readiness_heal.lease").open("a+") as lease:
            # a peer receiver holds the lease file's lock: deciding waits, the answer does not
            fcntl.flock(lease, fcntl.LOCK_EX)
            resp = r.post(payload(alert("FP-1.1")))
            assert resp.status_code == 200, resp.text
            seq = resp.json()["delivery"]
            filler = fill(disk)
            fcntl.flock(lease, fcntl.LOCK_UN)
            err: list[str] = []
            wait_for(lambda: err.append(capfd.readouterr().err) or "cannot decide an alert" in "".join(err),
                     what="the decision to fail on the full disk")
            assert "heal FP-1.1: cannot decide an alert, trying again in 5 s: OSError: [Errno 28]" in "".join(err)
            assert r.healer.delivery_views(seq)[0]["counts"] == {"pending": 1}
            assert hb.run_count() == 0
            assert r.metric("trading_healer_backlog") == 1.0
            for name in ("trading_healer_running", "trading_healer_queued", "trading_healer_stuck"):
                assert r.metric(name, fp="FP-1.1") == 0.0
            assert r.healer.policy.snapshot()["FP-1.1"]["phase"] == "idle"
            filler.unlink()
            assert decisions(r.url, seq, timeout=30) == ["accepted"]
            wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="unverified") == 1.0,
                     what="the outcome once the disk has room")
            wait_idle(r)
            assert hb.run_count() == 1
            events = [json.loads(x)["event"] for x in (disk / "heals.jsonl").read_text().splitlines()]
            assert events == ["started", "spawned", "attempt"]
            assert (disk / "heals.journal").stat().st_size == 0


def test_full_disk_while_the_action_runs_still_returns_the_point_to_idle(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    with tiny_tmpfs(tmp_path / "disk") as disk:
        cfg = hb.config({"FP-1.1": {"run": [str(hb.block), "one"], "cooldown_seconds": 0.2}},
                        audit_file=str(disk / "heals.jsonl"), verify_timeout_seconds=0.3)
        with receiver(hb, cfg) as r:
            assert r.deliver(payload(alert("FP-1.1"))) == ["accepted"]
            wait_for(lambda: hb.started() == {"one"}, what="the action")
            filler = fill(disk)
            hb.release("one")  # its outcome cannot be written
            wait_idle(r)
            assert r.healer.policy.snapshot()["FP-1.1"]["phase"] == "idle"
            filler.unlink()
            # the alert resolves, breaks again: a new attempt starts (nothing left it busy)
            assert r.deliver(payload(alert("FP-1.1", status="resolved"))) == ["resolved"]
            later = alert("FP-1.1", starts_at="2026-11-25T11:00:00Z")
            assert r.deliver(payload(later)) == ["accepted"]
            wait_idle(r)
        assert hb.run_count() == 2


def test_the_point_lifecycle_is_one_state_machine() -> None:
    p = Policy({"FP-1.1": spec()})
    assert p.admit("FP-1.1", ("a", "t1"), 0.0, False) is None
    assert p.snapshot()["FP-1.1"]["phase"] == "queued"
    with pytest.raises(policy_mod.TransitionError):
        p.move("FP-1.1", "queued")  # reserved once, never twice
    p.move("FP-1.1", "running")
    with pytest.raises(policy_mod.TransitionError):
        p.move("FP-1.1", "queued")
    p.move("FP-1.1", "verifying")
    assert p.admit("FP-1.1", ("b", "t2"), 20.0, False) == "busy"
    p.finished("FP-1.1", True)
    assert p.snapshot()["FP-1.1"]["phase"] == "idle"
    # a reservation whose start record failed is undone completely: the retry is admitted
    assert p.admit("FP-1.1", ("c", "t3"), 30.0, False) is None
    p.abort("FP-1.1")
    assert p.snapshot()["FP-1.1"] == {"running": False, "phase": "idle", "gave_up": False, "attempts_in_window": 1,
                                      "last_start": 0.0}
    assert p.admit("FP-1.1", ("c", "t3"), 30.0, False) is None


def test_a_point_out_of_idle_past_its_bound_is_stuck_and_resolved_clears_it() -> None:
    p = Policy({"FP-1.1": spec(timeout=5, verify=5)})
    assert p.admit("FP-1.1", ("a", "t1"), 100.0, False) is None
    bound = p.stuck_after("FP-1.1")
    assert bound >= 10
    assert p.stuck(100.0 + bound - 1) == {"FP-1.1": False}
    assert p.stuck(100.0 + bound + 1) == {"FP-1.1": True}
    # inside the bound, resolved keeps a live action's reservation (a second copy must not start)
    assert p.reset("FP-1.1", 101.0) is True and p.snapshot()["FP-1.1"]["phase"] == "queued"
    # past it, nothing live holds it: resolved releases it
    assert p.reset("FP-1.1", 100.0 + bound + 1) is True
    assert p.snapshot()["FP-1.1"]["phase"] == "idle" and p.stuck(1e9) == {"FP-1.1": False}


def test_a_stuck_point_is_exported(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "timeout_seconds": 1}}, verify_timeout_seconds=1)
    healer = Healer(load_config(str(cfg), str(hb.root)), "t" * 20, start_workers=False)  # nobody takes the work
    try:
        assert healer.dispatch(HealerAlert("FP-1.1")) == "accepted"
        healer.refresh()
        assert healer.stuck.labels("FP-1.1")._value.get() == 0
        healer.refresh(now=healer.policy.snapshot()["FP-1.1"]["last_start"] + 60)
        assert healer.stuck.labels("FP-1.1")._value.get() == 1
        assert healer.stuck.labels("FP-1.3")._value.get() == 0
    finally:
        healer.stop()


def HealerAlert(fp: str) -> object:  # noqa: N802
    from healers.alerts import parse_payload

    return parse_payload(json.dumps(payload(alert(fp))).encode())[0][0]


@pytest.mark.parametrize("token", ["1", "a", "x" * 15, "ab" * 12, "abcdefg" * 3])
def test_weak_tokens_are_refused_at_start_with_one_line(tmp_path: Path, token: str) -> None:
    hb = HealBot(tmp_path)
    proc = start_heal_cli(hb, hb.config({}), free_port(), token=token)
    try:
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it started serving with the weak token: stop it
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3
    [line] = err.strip().splitlines()
    assert line.startswith("error: TRADING_READINESS_HEALER_TOKEN ") and line.endswith("; refusing to start")
    if len(token) > 1:
        assert token not in line


# secrets that are pieces of every audit line: a JSON literal, a number, a quoted field name, a colon
JSONISH_ENV = {"UW_API_KEY": "true", "ALPACA_SECRET": "1", "ALPACA_KEY": '"fp"', "BROKER_TOKEN": ":",
               "ALPACA_API_SECRET": "null", "APCA_API_SECRET_KEY": 'outcome":'}
JSONISH_TOKEN = '{"fp": "FP-1.1", "epoch": 1}'  # noqa: S105  (a valid token: 28 characters, 16 distinct)


def test_secrets_that_are_pieces_of_json_never_break_or_leak_into_the_audit(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    hb.bot.set_env(**JSONISH_ENV)
    loud = script(tmp_path / "loud.sh", f"""
        echo "ok $$" >> {hb.runs}
        echo 'key true null outcome": token {JSONISH_TOKEN} done'
    """)
    cfg = hb.config({"FP-1.1": {"run": [str(loud)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    with receiver(hb, cfg, token=JSONISH_TOKEN) as r:
        assert r.deliver(payload(alert("FP-1.1")), token=JSONISH_TOKEN) == ["accepted"]
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="unverified") == 1.0,
                 what="the outcome")
        api = r.heals()
    lines = (hb.root / AUDIT).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert [rec["event"] for rec in records] == ["started", "spawned", "attempt"]
    attempt = records[-1]
    assert attempt["fingerprint"] == "a1b2c3d4e5f60718" and attempt["starts_at"] == "2026-11-25T10:00:00.000Z"
    assert attempt["outcome"] == "unverified" and attempt["dry_run"] is False and attempt["exit_status"] == 0
    assert "output: key *** *** *** token *** done" in attempt["detail"]
    for secret in ("true", "null", 'outcome":', JSONISH_TOKEN):  # the secrets long enough to be redacted
        for rec in [*records, *api]:
            for key, value in rec.items():
                if key not in ("event", "outcome"):
                    assert secret not in json.dumps(value), (secret, key)
    # what a restart dedupes on survived redaction: the same alert is a duplicate, not a second heal
    with receiver(hb, cfg, token=JSONISH_TOKEN) as r:
        assert r.deliver(payload(alert("FP-1.1")), token=JSONISH_TOKEN) == ["duplicate"]
    assert hb.run_count() == 1


def test_concurrent_audit_appends_share_fsyncs_and_every_line_lands(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from exporter.core import audit

    calls = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a disk that takes its time: the others must not queue one each
        calls.append(fd)
        time.sleep(0.05)
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", slow_fsync)
    log = audit.AuditLog(tmp_path / "heals.jsonl")
    barrier = threading.Barrier(50)

    def one(i: int) -> None:
        barrier.wait()
        log.append({"event": "resolved", "fp": "FP-1.1", "n": i})

    workers = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lines = (tmp_path / "heals.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["n"] for x in lines) == list(range(50))
    assert 1 <= len(calls) <= 10, len(calls)


def test_an_append_that_cannot_reach_the_disk_raises(tmp_path: Path) -> None:
    from exporter.core import audit

    with tiny_tmpfs(tmp_path / "disk") as disk:
        log = audit.AuditLog(disk / "heals.jsonl")
        log.append({"event": "resolved"})
        fill(disk)
        with pytest.raises(OSError):
            for i in range(100):
                log.append({"event": "resolved", "pad": "x" * 4096, "i": i})


def test_the_redactor_is_rebuilt_only_when_dotenv_changes(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    healer = Healer(load_config(str(hb.config({})), str(hb.root)), "t" * 8 + "0123456789", start_workers=False)
    try:
        first = healer.redactor()
        assert healer.redactor() is first  # not rebuilt (nor .env re-read) for every line
        hb.bot.set_env(UW_API_KEY="rotated-uw-key-123")
        second = healer.redactor()
        assert second is not first and healer.redact("key rotated-uw-key-123") == "key ***"
        assert healer.redactor() is second
    finally:
        healer.stop()


def test_a_worker_whose_reservation_was_released_as_stuck_cannot_touch_the_next_one() -> None:
    p = Policy({"FP-1.1": spec(timeout=1, verify=1)})
    assert p.admit("FP-1.1", ("a", "t1"), 0.0, False) is None
    old = p.generation("FP-1.1")
    assert p.move("FP-1.1", "running", gen=old)
    assert p.reset("FP-1.1", 1000.0) is True  # stuck far past its bound: released
    assert p.admit("FP-1.1", ("b", "t2"), 1001.0, False) is None
    assert p.generation("FP-1.1") != old
    # the first worker wakes up at last: its moves and its finish change nothing
    assert p.move("FP-1.1", "verifying", gen=old) is False
    assert p.finished("FP-1.1", False, gen=old) is False
    assert p.snapshot()["FP-1.1"]["phase"] == "queued"
    assert p.admit("FP-1.1", ("c", "t3"), 1002.0, False) in ("busy", "cooldown")
