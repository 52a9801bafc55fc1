"""A receiver killed with SIGKILL in the middle of a heal: the action it started is found by its
recorded process group when the receiver comes back, ended, the point re-checked, and the
attempt recorded as ``interrupted``; cooldowns and attempts survive as before. Killed right after
it answered, before it decided the delivery: the journal holds it, and the next start decides it
and runs its action once."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
import requests

from exporter.core.audit import heal_status
from healers import journal as journal_module
from healers.alerts import Alert, check_payload, parse_payload
from healers.journal import COMPACT_BYTES, Delivery, InboxFull, Journal

from .conftest import wait_for
from .test_healer_helpers import (
    TOKEN,
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
        assert deliver(url, payload(alert("FP-2.1"))) == ["accepted"]
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
    try:
        second, url = start(hb, cfg)
    except BaseException:
        os.killpg(action, signal.SIGKILL)
        raise
    try:
        wait_for(lambda: requests.get(url + "/api/heals", timeout=5).json()["heals"], timeout=20,
                 what="the interrupted attempt's record")
        heal = requests.get(url + "/api/heals", timeout=5).json()["heals"][0]
        assert heal["outcome"] == "interrupted" and heal["verified"] is True
        assert heal["verification"].startswith("OK after")
        assert f"process group {action} was still running at its timeout and was killed" in heal["detail"]
        assert not pid_alive(action) and not (tmp_path / "finished").exists()
        # the cooldown and the dedupe key survived the crash as before: no second run
        assert deliver(url, payload(alert("FP-2.1"))) == ["duplicate"]
        metrics = requests.get(url + "/metrics", timeout=5).text
        assert 'trading_healer_attempts_total{fp="FP-2.1",outcome="interrupted"} 1.0' in metrics
    finally:
        second.terminate()
        _out, err = second.communicate(timeout=15)
        if pid_alive(action):  # never leave the orphan behind, whatever failed
            os.killpg(action, signal.SIGKILL)
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


def started(fp: str, fingerprint: str, owner: str, epoch: float = 1000.0) -> str:
    return json.dumps({"event": "started", "fp": fp, "epoch": epoch, "fingerprint": fingerprint,
                       "starts_at": "2026-11-25T10:00:00.000Z", "owner": owner}) + "\n"


def dead_owner() -> str:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return f"{dead.pid}:123:deadbeef"


def test_an_accepted_alert_whose_action_never_started_is_replayed_once(tmp_path: Path) -> None:
    """The start record is the journal entry of an acknowledged alert: a receiver that died while
    the action was queued left it unfinished, and the next start runs it (the point still fails),
    or closes it without running (the point is OK again)."""
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300},
                     "FP-2.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    audit = hb.root / AUDIT
    audit.parent.mkdir(parents=True, exist_ok=True)
    owner = dead_owner()
    live_peer = f"{os.getpid()}:{Path(f'/proc/{os.getpid()}/stat').read_text().rpartition(')')[2].split()[19]}:peer"
    now = time.time()
    audit.write_text(started("FP-1.1", "f1", owner, now) + started("FP-2.1", "f2", owner, now)
                     # a live receiver sharing this audit file: its action is not an orphan
                     + started("FP-1.3", "f3", live_peer, now))
    with receiver(hb, cfg) as r:
        wait_for(lambda: len(r.heals()) == 2, what="both entries closed")
        wait_idle(r)
        heals = {h["fp"]: h for h in r.heals()}
        # FP-1.1 still fails (no daemon): its action ran now, as it would have
        assert heals["FP-1.1"]["outcome"] == "unverified" and heals["FP-1.1"]["fingerprint"] == "f1"
        # FP-2.1 is OK again (healthy weights): closed without running anything
        assert heals["FP-2.1"]["outcome"] == "interrupted" and heals["FP-2.1"]["verified"] is True
        assert "not run" in heals["FP-2.1"]["detail"]
        assert r.metric("trading_healer_attempts_total", fp="FP-2.1", outcome="interrupted") == 1.0
        assert all(st["phase"] == "idle" for st in r.healer.policy.snapshot().values())
        # the replayed alert's redelivery is a duplicate: one action for it, not two
        again = alert("FP-1.1", fingerprint="f1", starts_at="2026-11-25T10:00:00Z")
        assert r.deliver(payload(again)) == ["duplicate"]
    assert hb.run_count() == 1
    with receiver(hb, cfg) as r:  # nothing is left open
        time.sleep(0.5)
        assert len(r.heals()) == 2


def test_an_orphan_whose_process_was_never_recorded_is_found_by_its_environment(tmp_path: Path) -> None:
    from healers.actions import MARKER_ENV
    from healers.orphans import attempt_marker

    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "timeout_seconds": 1, "cooldown_seconds": 300}},
                    verify_timeout_seconds=0.3)
    audit = hb.root / AUDIT
    audit.parent.mkdir(parents=True, exist_ok=True)
    owner = dead_owner()
    audit.write_text(started("FP-1.1", "f1", owner, epoch=time.time()))
    # the action a receiver spawned just before it died, with no spawned record
    env = {**os.environ, MARKER_ENV: attempt_marker(owner, "FP-1.1", "f1", "2026-11-25T10:00:00.000Z")}
    orphan = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
    try:
        with receiver(hb, cfg) as r:
            wait_for(lambda: r.heals(), what="the recovered attempt")
            [heal] = r.heals()
            assert heal["outcome"] == "interrupted" and heal["verified"] is False
            assert f"process group {orphan.pid} was still running at its timeout and was killed" in heal["detail"]
            assert orphan.wait(timeout=10) is not None
    finally:
        orphan.kill()
    assert hb.run_count() == 0  # found and ended, not run a second time


def test_kill_9_right_after_the_answer_the_journaled_delivery_is_decided_and_run_once(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    hb.break_weights()
    cfg = hb.config({"FP-2.1": {"run": ["/bin/sh", str(hb.fix)], "cooldown_seconds": 300}})
    journal = hb.root / "logs/trading_readiness_heals.journal"
    first, url = start(hb, cfg)
    try:
        # a peer receiver of this bot holds the lease file's lock: deciding the delivery waits for
        # it, so the answer comes from the journal alone and nothing is decided or recorded yet
        with (hb.root / "state/trading_readiness_heal.lease").open("a+") as lease:
            fcntl.flock(lease, fcntl.LOCK_EX)
            resp = requests.post(url + "/alertmanager", json=payload(alert("FP-2.1")), headers=HEADERS, timeout=5)
            assert resp.status_code == 200 and resp.json()["state"] == "queued", resp.text
            metrics = requests.get(url + "/metrics", timeout=5).text
            assert "trading_healer_backlog 1.0" in metrics
            assert '"FP-2.1"' in journal.read_text()  # the body as it came, on disk before the answer
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert hb.run_count() == 0
    assert not (hb.root / AUDIT).exists() or "started" not in (hb.root / AUDIT).read_text()
    with journal.open("ab") as fh:  # and a write torn by a kill (never answered): skipped
        fh.write(b'{"seq": 2, "at": 17')
    second, url = start(hb, cfg)
    try:
        wait_for(lambda: requests.get(url + "/api/heals", timeout=5).json()["heals"], timeout=20,
                 what="the journaled delivery's attempt")
        [heal] = requests.get(url + "/api/heals", timeout=5).json()["heals"]
        assert heal["outcome"] == "success" and heal["fp"] == "FP-2.1" and heal["fingerprint"] == "a1b2c3d4e5f60718"
        view = requests.get(url + "/api/heals", timeout=5).json()["deliveries"][0]
        assert view["replayed"] is True and view["counts"] == {"accepted": 1}
        wait_for(lambda: journal.stat().st_size == 0, what="the journal emptied once decided")
        # Alertmanager's repeat of the acknowledged alert: the same action is not run again
        assert deliver(url, payload(alert("FP-2.1"))) == ["duplicate"]
        metrics = requests.get(url + "/metrics", timeout=5).text
        assert 'trading_healer_attempts_total{fp="FP-2.1",outcome="success"} 1.0' in metrics
        assert "trading_healer_backlog 0.0" in metrics
    finally:
        second.terminate()
        _out, err = second.communicate(timeout=15)
    assert second.returncode == 0, err
    assert "deciding 1 acknowledged delivery (1 alerts) a stopped receiver left in" in err
    assert hb.run_count() == 1
    events = [json.loads(x)["event"] for x in (hb.root / AUDIT).read_text().splitlines()]
    assert events == ["started", "spawned", "attempt"]


def on_disk(journal: Journal, delivery: Delivery) -> None:
    """Submit ``delivery`` and wait until the journal says it is on disk (its write's error raised)."""
    synced: Future[None] = Future()
    journal.submit(delivery, lambda seq, alerts, failed: synced.set_exception(failed) if failed else synced.set_result(None))
    synced.result(timeout=10)


def test_the_journal_stays_bounded_and_a_live_receivers_journal_is_its_own(tmp_path: Path) -> None:
    audit_file = tmp_path / "logs/heals.jsonl"
    journal = Journal(audit_file)
    assert journal.recover() == []
    peer = Journal(audit_file)  # a second receiver of the bot, running beside it
    assert peer.recover() == [] and peer.path != journal.path
    waiting = Delivery(time.time(), "http://am", [Alert("firing", "FP-1.1", "f0", "2026-11-25T10:00:00.000Z")])
    on_disk(journal, waiting)
    big = [Alert("firing", "FP-9.9", f"{i:016x}", "2026-11-25T10:00:00.000Z", (("fp", "FP-9.9"),))
           for i in range(1000)]
    largest = 0
    for _ in range(40):  # about 4 MB of deliveries through the journal while the first one waits
        d = Delivery(time.time(), "http://am", big)
        on_disk(journal, d)
        journal.done([d.seq])
        largest = max(largest, journal.path.stat().st_size)
    one = len(journal.pending[waiting.seq]) + len(json.dumps({"done": [1]}))
    assert largest <= COMPACT_BYTES + 2 * 120_000 and journal.path.stat().st_size <= COMPACT_BYTES + one
    journal.close()
    again = Journal(audit_file)  # the first receiver's slot is free again: its journal is adopted
    [left] = again.recover()
    assert again.path == journal.path and (left.seq, left.alerts, left.replayed) == (waiting.seq, waiting.alerts, True)
    again.done([left.seq])
    assert again.path.stat().st_size == 0
    again.close()
    peer.close()


def test_a_delivery_after_the_journal_was_moved_away_is_journaled_in_a_new_one(tmp_path: Path) -> None:
    """The flusher keeps its journal open between batches: a journal moved or deleted meanwhile
    (a log rotation, an operator) is noticed, and the next delivery is on disk in a new file at
    the journal's path, where a restarted receiver looks, never only in the old one."""
    audit_file = tmp_path / "logs/heals.jsonl"
    journal = Journal(audit_file)
    assert journal.recover() == []
    first = Delivery(time.time(), "http://am", [Alert("firing", "FP-1.1", "f1", "2026-11-25T10:00:00.000Z")])
    on_disk(journal, first)
    assert b'"f1"' in journal.path.read_bytes()
    journal.path.rename(tmp_path / "rotated.journal")
    second = Delivery(time.time(), "http://am", [Alert("firing", "FP-2.1", "f2", "2026-11-25T10:00:00.000Z")])
    on_disk(journal, second)
    assert b'"f2"' in journal.path.read_bytes() and b'"f2"' not in (tmp_path / "rotated.journal").read_bytes()
    journal.path.unlink()
    third = Delivery(time.time(), "http://am", [Alert("firing", "FP-3.1", "f3", "2026-11-25T10:00:00.000Z")])
    on_disk(journal, third)
    assert b'"f3"' in journal.path.read_bytes()
    journal.close()


def test_one_answer_that_fails_never_costs_the_batch_its_answers_or_its_decisions(tmp_path: Path) -> None:
    """One turn of the event loop journals three deliveries in one write; the middle one's answer
    raises (its client went away): the other two are still answered, all three are handed to the
    dispatcher (they are on disk: they must be decided), and the failure is reported in one line."""
    journal = Journal(tmp_path / "logs/heals.jsonl")
    assert journal.recover() == []
    turns: list[Callable[[], None]] = []
    answered: list[Delivery] = []
    errors: list[str] = []
    told: list[tuple[int, OSError | None]] = []
    journal.batcher, journal.answered, journal.on_error = turns.append, answered.extend, errors.append

    def answer(i: int) -> Callable[[int, int, OSError | None], None]:
        def on_synced(seq: int, alerts: int, failed: OSError | None) -> None:
            assert (seq, alerts) == (i + 1, 1)
            told.append((i, failed))
            if i == 1:
                raise RuntimeError("the client went away")
        return on_synced

    ds = [Delivery(time.time(), "http://am", [Alert("firing", "FP-1.1", f"f{i}", "2026-11-25T10:00:00.000Z")])
          for i in range(3)]
    for i, d in enumerate(ds):
        journal.submit(d, answer(i))
    assert len(turns) == 1  # what one turn of the loop submitted is written once, at its end
    turns[0]()
    assert told == [(0, None), (1, None), (2, None)]
    assert answered == ds
    assert errors == ["a journaled delivery could not be answered: RuntimeError: the client went away"]
    assert all(b'"f%d"' % i in journal.path.read_bytes() for i in range(3))
    journal.close()


def test_a_delivery_journaled_as_its_body_is_answered_then_made_into_the_same_alerts(tmp_path: Path) -> None:
    """A delivery the one-pass check took is journaled as the body it came as and answered once
    that is on disk; its alerts are made after the answer (by the dispatcher), and are the alerts parse_payload
    makes of it (the kept labels, startsAt as one UTC instant), on arrival and on a replay, which
    checks the body with the same one-pass check (json's nesting limit, which depends on the
    stack, and its digit limit play no part)."""
    audit_file = tmp_path / "logs/heals.jsonl"
    keep = frozenset({"bot"})
    journal = Journal(audit_file)
    journal.keep_labels = keep
    assert journal.recover() == []
    turns: list[Callable[[], None]] = []
    told: list[tuple[int, int, OSError | None]] = []
    handed: list[Delivery] = []
    journal.batcher, journal.answered = turns.append, handed.extend
    alerts_in = [alert("FP-1.1", bot="b1", other="x", starts_at="2026-11-25T11:00:00.123456789+01:00"),
                 alert("FP-1.3", status="resolved")]
    body = json.dumps(payload(*alerts_in)).encode()
    # escapes, non-ASCII text, a long group key: the same alerts after the replay's check
    odd = json.dumps({**payload(*alerts_in), "groupKey": "g\u00e9\u2028\\\"" * 3000}).encode()
    # a value nested where Alertmanager writes none is the field-by-field check's (so no body
    # taken here comes near a decoder's nesting limit, which depends on the stack)
    deep = json.dumps({**payload(*alerts_in), "truncatedAlerts": "TA"}).encode().replace(b'"TA"', b"[[[0]]]")
    assert check_payload(deep) is None and parse_payload(deep, keep)[0] == parse_payload(body, keep)[0]
    for data in (body, odd):
        checked = check_payload(data)
        assert checked is not None
        journal.submit_checked(checked, data, lambda seq, n, failed: told.append((seq, n, failed)))
    assert told == [] and handed == [] and journal.path.read_bytes() == b""  # nothing before the turn's write
    turns[0]()
    assert told == [(1, 2, None), (2, 2, None)]
    alerts, source = parse_payload(body, keep)
    assert alerts[0].labels == (("bot", "b1"),) and alerts[0].starts_at == "2026-11-25T10:00:00.123Z"
    # handed over with their payload: the dispatcher makes the alerts, off the event loop
    assert [(d.seq, d.alerts, len(d.decisions), d.source) for d in handed] == [(1, [], 2, source), (2, [], 2, source)]
    for d in handed:
        d.make_alerts(keep)
    assert [(d.seq, d.alerts, d.source, d.replayed, d.payload) for d in handed] == [(1, alerts, source, False, None),
                                                                                    (2, alerts, source, False, None)]
    assert journal.path.read_bytes().startswith(b'{"seq":1,"at":') and body in journal.path.read_bytes()
    journal.close()  # the receiver stops before deciding them: the next one replays them
    with journal.path.open("ab") as fh:  # and a kill tore the write of a third (never answered): skipped
        fh.write(b'{"seq":3,"at":1796686562.980,"body":' + body[:-40] + b"}")
    again = Journal(audit_file)
    again.keep_labels = keep
    assert [(d.seq, d.alerts, d.source, d.replayed) for d in again.recover()] == [(1, alerts, source, True),
                                                                               (2, alerts, source, True)]
    assert body not in again.path.read_bytes()  # rewritten with only what deciding needs
    # JSON may use CR or LF as whitespace; a replay splits lines at either: such a body is never
    # written as it came
    for brk in (b"\n", b"\r", b"\r\n"):
        spaced = body.replace(b", ", b"," + brk)
        checked = check_payload(spaced)
        assert checked is not None
        with pytest.raises(ValueError, match="no line break"):
            again.submit_checked(checked, spaced, lambda seq, n, failed: None)
    again.close()


def test_the_bytes_waiting_for_a_decision_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deliveries journaled as their bodies are bounded by bytes as well as by alerts: beyond
    MAX_PENDING_BYTES the next is refused (the receiver answers 503, Alertmanager retries) until
    decided ones make room."""
    body = json.dumps(payload(alert("FP-1.1"))).encode()
    checked = check_payload(body)
    assert checked is not None
    monkeypatch.setattr(journal_module, "MAX_PENDING_BYTES", 3 * len(body) + 200)
    journal = Journal(tmp_path / "logs/heals.jsonl")
    assert journal.recover() == []
    told: list[int] = []
    for _ in range(3):
        journal.submit_checked(checked, body, lambda seq, n, failed: told.append(seq))
    with pytest.raises(InboxFull, match="bytes of acknowledged deliveries wait"):
        journal.submit_checked(checked, body, lambda seq, n, failed: told.append(seq))
    wait_for(lambda: told == [1, 2, 3], what="the three written")
    journal.done([1])
    journal.submit_checked(checked, body, lambda seq, n, failed: told.append(seq))
    wait_for(lambda: told == [1, 2, 3, 4], what="the fourth written once the first was decided")
    assert journal.pending_bytes == sum(len(line) for line in journal.pending.values())
    journal.close()
