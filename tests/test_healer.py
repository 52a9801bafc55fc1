"""The healer receiver over real HTTP with real action scripts: auth, parsing, admission,
process-group timeouts, proof of healing, the audit and restarts."""

from __future__ import annotations

import gc
import json
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.audit import heal_status
from exporter.core.config import ConfigError
from exporter.core.config import load as load_config

from .conftest import wait_for
from .test_healer_helpers import (
    TOKEN,
    HealBot,
    alert,
    decisions,
    deliver,
    free_port,
    payload,
    pid_alive,
    receiver,
    start_heal_cli,
    wait_idle,
)


def test_firing_alert_heals_and_verification_proves_it(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    hb.break_weights()
    cfg = hb.config({"FP-2.1": {"run": ["/bin/sh", str(hb.fix)], "cooldown_seconds": 300}})
    with receiver(hb, cfg) as r:
        assert r.deliver(payload(alert("FP-2.1"))) == ["accepted"]
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-2.1", outcome="success") == 1.0,
                 what="verified success")
        assert hb.run_count() == 1
        heal = r.heals()[0]
        assert heal["fp"] == "FP-2.1" and heal["outcome"] == "success" and heal["exit_status"] == 0
        assert heal["argv"] == ["/bin/sh", str(hb.fix)]
        assert heal["verification"].startswith("OK after")
        assert TOKEN not in json.dumps(r.heals()) and TOKEN not in requests.get(r.url + "/metrics", timeout=5).text
    assert heal_status(hb.root / "logs/trading_readiness_heals.jsonl") == {"FP-2.1": (True, True)}


def test_action_that_does_not_fix_is_unverified_and_failure_is_failed(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    hb.break_weights()
    cfg = hb.config({"FP-2.1": {"run": [str(hb.ok)], "verify_timeout_seconds": 0.6}})
    with receiver(hb, cfg) as r:
        assert r.deliver(payload(alert())) == ["accepted"]
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-2.1", outcome="unverified") == 1.0,
                 what="unverified outcome")
        assert "not OK within" in r.heals()[0]["verification"]
    assert heal_status(hb.root / "logs/trading_readiness_heals.jsonl") == {"FP-2.1": (True, False)}
    hb2 = HealBot(tmp_path / "two")
    cfg = hb2.config({"FP-1.1": {"run": [str(hb2.fail)]}})
    with receiver(hb2, cfg) as r:
        r.deliver(payload(alert("FP-1.1")))
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="failed") == 1.0,
                 what="failed outcome")
        heal = r.heals()[0]
        assert heal["exit_status"] == 1 and "broken" in heal["detail"] and heal["verification"] is None


def test_fifty_duplicate_deliveries_run_once(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}})
    with receiver(hb, cfg) as r, ThreadPoolExecutor(10) as pool:
        body = payload(alert("FP-1.1"))
        codes = list(pool.map(lambda _: r.post(body).status_code, range(50)))
        assert codes == [200] * 50
        wait_idle(r)
        assert hb.run_count() == 1
        dupes = r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="duplicate") or 0
        busy_or_cool = sum(r.metric("trading_healer_skipped_total", fp="FP-1.1", reason=x) or 0
                           for x in ("busy", "cooldown"))
        assert dupes + busy_or_cool == 49 and dupes >= 1
        # a new firing of the same point inside the cooldown is refused too
        assert r.deliver(payload(alert("FP-1.1", starts_at="2026-11-25T10:05:00Z"))) == ["cooldown"]
        assert hb.run_count() == 1


def test_hung_action_group_is_killed_at_its_timeout(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.hang)], "timeout_seconds": 1}})
    with receiver(hb, cfg) as r:
        assert r.post(payload(alert("FP-1.1"))).status_code == 200
        # answered before the action ended: its timeout (1 s) is not recorded yet
        assert r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="timeout") in (None, 0.0)
        child = int(wait_for(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text().strip(),
                             what="the hung action's child"))
        assert r.metric("trading_healer_running", fp="FP-1.1") == 1.0
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="timeout") == 1.0,
                 what="timeout outcome")
        wait_for(lambda: not pid_alive(child), what="the sleep in the action's process group to die")
        assert r.metric("trading_healer_running", fp="FP-1.1") == 0.0
        heal = r.heals()[0]
        assert heal["outcome"] == "timeout" and heal["exit_status"] is None and "timeout" in heal["detail"]


def test_repeated_failure_gives_up_and_resolved_resets(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.fail)], "cooldown_seconds": 0.2, "max_attempts": 2}})
    with receiver(hb, cfg) as r:
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 0.0
        for _i in range(4):
            wait_idle(r)
            time.sleep(0.25)  # past the cooldown: Alertmanager's repeat of the still-firing alert
            r.deliver(payload(alert("FP-1.1")))
        wait_idle(r)
        assert hb.run_count() == 2
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0
        assert (r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="gave_up") or 0) >= 1
        assert r.deliver(payload(alert("FP-1.1", status="resolved"))) == ["resolved"]
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 0.0
        # a repeated resolved notification is still a deliberate skip, but there is nothing left to record
        assert r.deliver(payload(alert("FP-1.1", status="resolved"))) == ["resolved"]
        audit_lines = (hb.root / "logs/trading_readiness_heals.jsonl").read_text().splitlines()
        assert sum(json.loads(x)["event"] == "resolved" for x in audit_lines) == 1
        time.sleep(0.25)
        assert r.deliver(payload(alert("FP-1.1", starts_at="2026-11-25T11:00:00Z"))) == ["accepted"]
        wait_idle(r)
        assert hb.run_count() == 3


def test_skips_are_deliberate_and_metrics_preinitialised(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)]}, "FP-1.3": {"run": [str(hb.ok)], "enabled": False}})
    with receiver(hb, cfg) as r:
        for fp in ("FP-1.1", "FP-1.3", "FP-2.1"):
            for outcome in ("success", "failed", "timeout", "unverified", "dry_run"):
                assert r.metric("trading_healer_attempts_total", fp=fp, outcome=outcome) == 0.0
            assert r.metric("trading_healer_running", fp=fp) == 0.0
            assert r.metric("trading_healer_queued", fp=fp) == 0.0
            assert r.metric("trading_healer_gave_up", fp=fp) == 0.0
        # what TradingHealerGaveUp joins for its category and healer labels
        assert r.metric("trading_healer_info", fp="FP-1.1", category="Data & Signal Generation",
                        healer="restart-uw-daemon") == 1.0
        assert r.metric("trading_healer_info", fp="FP-2.1", category="Scoring & Evaluation",
                        healer="reinit-weights") == 1.0
        decisions = r.deliver(payload(alert("FP-1.3"), alert("FP-3.1"), alert("FP-9.9"), alert(None),
                                   alert("FP-1.1", status="resolved")))
        assert decisions == ["disabled", "no_healer", "unknown_fp", "no_healer", "resolved"]
        assert r.metric("trading_healer_skipped_total", fp="other", reason="unknown_fp") == 1.0
        assert requests.get(r.url + "/-/healthy", timeout=5).status_code == 200
    assert hb.run_count() == 0


def test_dry_run_runs_nothing_and_records_it(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)]}})
    with receiver(hb, cfg, dry_run=True) as r:
        assert r.deliver(payload(alert("FP-1.1"))) == ["dry_run"]
        assert r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="dry_run") == 1.0
        assert r.heals()[0]["outcome"] == "dry_run" and "would run" in r.heals()[0]["detail"]
    assert hb.run_count() == 0
    assert heal_status(hb.root / "logs/trading_readiness_heals.jsonl") == {}


def test_auth_and_malformed_bodies(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)]}})
    with receiver(hb, cfg) as r:
        good = payload(alert("FP-1.1"))
        assert r.post(good, token=None).status_code == 401
        assert r.post(good, token="wrong").status_code == 401
        assert r.post(good, token=TOKEN + "x").status_code == 401
        raw = requests.post(r.url + "/alertmanager", data=b"{}", timeout=5,
                            headers={"Authorization": TOKEN})  # no "Bearer "
        assert raw.status_code == 401
        assert r.post(b"not json").status_code == 400
        assert r.post({**good, "version": "3"}).json()["error"].startswith("unsupported payload version")
        assert r.post({**good, "alerts": "x"}).status_code == 400
        assert r.post({**good, "alerts": [{"status": "firing", "labels": {"fp": 1}}]}).status_code == 400
        assert r.post(b"[" * 100000 + b"]" * 100000).status_code in (400, 413)
        assert r.post(b" " * (2 * 1024 * 1024)).status_code == 413
    assert hb.run_count() == 0


def test_restart_mid_cooldown_does_not_heal_again(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}})
    with receiver(hb, cfg) as r:
        r.deliver(payload(alert("FP-1.1")))
        wait_idle(r)
    assert hb.run_count() == 1
    # the real CLI process, restarted on the same audit file
    port = free_port()
    proc = start_heal_cli(hb, cfg, port)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(url + "/-/healthy", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=20, what="the restarted receiver")
        same = deliver(url, payload(alert("FP-1.1")))
        other = deliver(url, payload(alert("FP-1.1", starts_at="2026-11-25T10:09:00Z")))
        assert same == ["duplicate"] and other == ["cooldown"]
        assert requests.get(url + "/api/heals", timeout=5).json()["heals"][0]["outcome"] == "unverified"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "healer listening on" in err and TOKEN not in err
    assert hb.run_count() == 1


def test_cli_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({})
    proc = start_heal_cli(hb, cfg, free_port(), token=None)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert err.strip().splitlines() == [
        "error: TRADING_READINESS_HEALER_TOKEN is not set; refusing to run healers for unauthenticated webhooks "
        "(set it, or pass --insecure-no-auth)"]


def test_builtin_healers_restart_only_the_daemon_unit(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    from healers.policy import specs_from_config

    specs = specs_from_config(load_config(None, str(hb.root)))
    assert specs["FP-1.1"].argv == ("systemctl", "restart", "uw-flow-daemon.service") and specs["FP-1.1"].enabled
    assert specs["FP-1.3"].argv == ("systemctl", "restart", "uw-flow-daemon.service") and "FP-1.2" not in specs
    assert not specs["FP-2.1"].enabled and "FP-6.1" not in specs
    assert not any("stock-bot" in a for s in specs.values() for a in s.argv)
    # a user entry replaces the built-in one for that point only
    specs = specs_from_config(load_config(str(hb.config({"FP-1.1": {"enabled": False}})), str(hb.root)))
    assert not specs["FP-1.1"].enabled and specs["FP-1.3"].enabled


def test_heal_status_reads_incrementally_and_survives_torn_lines(tmp_path: Path) -> None:
    f = tmp_path / "heals.jsonl"
    assert heal_status(f) == {}
    rec = {"event": "attempt", "fp": "FP-1.1", "epoch": 100.0, "outcome": "failed"}
    f.write_text(json.dumps(rec) + "\n" + '{"event": "attempt", "fp": "FP-1')
    assert heal_status(f) == {"FP-1.1": (True, False)}
    with f.open("a") as fh:  # the torn line completes, then a success
        fh.write('.3", "epoch": 101, "outcome": "timeout"}\n')
        fh.write(json.dumps({**rec, "epoch": 200.0, "outcome": "success"}) + "\n")
    assert heal_status(f) == {"FP-1.1": (True, True), "FP-1.3": (True, False)}
    assert heal_status(f, since=150.0) == {"FP-1.1": (True, True)}
    f.write_text(json.dumps(rec) + "\n")  # replaced (rotation): read from the start
    assert heal_status(f) == {"FP-1.1": (True, False)}


def test_starts_at_is_one_instant_however_alertmanager_spells_it() -> None:
    from healers.alerts import canonical_time

    # the webhook writes nanoseconds (sometimes a local offset), the v2 API milliseconds in UTC
    assert canonical_time("2026-11-25T10:33:32.800123456Z") == "2026-11-25T10:33:32.800Z"
    assert canonical_time("2026-11-25T11:33:32.8+01:00") == "2026-11-25T10:33:32.800Z"
    assert canonical_time("2026-11-25T10:33:32Z") == "2026-11-25T10:33:32.000Z"
    assert canonical_time("2026-13-25T10:33:32Z") == "2026-13-25T10:33:32Z"  # not a date: kept, only compared
    assert canonical_time("0001-01-01T00:00:00+01:00") == "0001-01-01T00:00:00+01:00"
    assert canonical_time("x" * 500) == "x" * 64
    assert canonical_time("0999-02-03T04:05:06.000999Z") == "0999-02-03T04:05:06.000Z"  # years below 1000 padded


@settings(max_examples=400, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001
       st.integers(-23 * 60 - 59, 23 * 60 + 59), st.integers(0, 999))
def test_starts_at_is_written_as_isoformat_writes_milliseconds(naive: datetime, offset_min: int, nanos: int) -> None:
    """Whatever the offset and the precision, the instant is written as ``isoformat`` writes it
    with milliseconds (truncated, not rounded) in UTC."""
    from healers.alerts import canonical_time

    aware = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    sign, off = ("-" if offset_min < 0 else "+"), abs(offset_min)
    spelled = (f"{naive.year:04d}-{naive.month:02d}-{naive.day:02d}T{naive.hour:02d}:{naive.minute:02d}:"
               f"{naive.second:02d}.{naive.microsecond:06d}{nanos:03d}{sign}{off // 60:02d}:{off % 60:02d}")
    expected = aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert canonical_time(spelled) == expected


def test_one_action_shared_by_several_points_runs_once_per_cooldown(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    # the daemon down, its cache missing and stale: three alerts, one restart
    same = {"run": [str(hb.ok)], "cooldown_seconds": 300}
    cfg = hb.config({"FP-1.1": same, "FP-1.2": same, "FP-1.3": same})
    with receiver(hb, cfg) as r:
        assert r.deliver(payload(alert("FP-1.1"))) == ["accepted"]
        assert r.deliver(payload(alert("FP-1.2"))) in (["busy"], ["cooldown"])
        wait_idle(r)
        assert r.deliver(payload(alert("FP-1.3"))) == ["cooldown"]
    with receiver(hb, cfg) as r:  # restored from the audit after a restart
        assert r.deliver(payload(alert("FP-1.3"))) == ["cooldown"]
    assert hb.run_count() == 1


def test_match_labels_keeps_a_healer_to_its_own_bot(tmp_path: Path) -> None:
    """One Alertmanager, several bots: an alert of another bot neither heals nor resets this one."""
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "verify_timeout_seconds": 0.4, "max_attempts": 1}},
                    match_labels={"instance": "bot-a:9870"})
    with receiver(hb, cfg) as r:
        assert r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="other_bot") == 0.0
        other = [alert("FP-1.1", instance="bot-b:9870", fingerprint="b" * 16), alert("FP-1.1", fingerprint="c" * 16)]
        assert r.deliver(payload(*other)) == ["other_bot", "other_bot"]
        assert r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="other_bot") == 2.0
        assert r.deliver(payload(alert("FP-1.1", instance="bot-a:9870"))) == ["accepted"]
        wait_for(lambda: r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0, what="give-up after one attempt")
        # bot B's resolution must not reset bot A's attempt budget
        resolved = alert("FP-1.1", status="resolved", instance="bot-b:9870", fingerprint="b" * 16)
        assert r.deliver(payload(resolved)) == ["other_bot"]
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0
    assert hb.run_count() == 1


def test_match_labels_must_map_names_to_strings(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({}, match_labels={"instance": 9870})
    with pytest.raises(ConfigError, match=r"key 'healer.match_labels' in .* must map label names to strings"):
        load_config(cfg, hb.root)


CAPPED = ("FP-1.1", "FP-1.2", "FP-1.3", "FP-2.1", "FP-6.1")


def test_at_most_max_concurrent_actions_run_and_the_rest_wait_their_turn(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    # five points, five different actions (no shared argv, so only the worker cap holds them back)
    cfg = hb.config({fp: {"run": [str(hb.block), fp], "cooldown_seconds": 300} for fp in CAPPED},
                    max_concurrent=2, verify_timeout_seconds=0.3)
    with receiver(hb, cfg) as r:
        for fp in CAPPED:
            assert r.metric("trading_healer_queued", fp=fp) == 0.0
        assert r.deliver(payload(*(alert(fp, fingerprint=f"{i:016x}") for i, fp in enumerate(CAPPED)))) == ["accepted"] * 5
        # the queue is FIFO and both workers now block in their action: nothing else can start
        wait_for(lambda: len(hb.started()) >= 2, what="the first two actions")
        assert hb.started() == {"FP-1.1", "FP-1.2"}
        assert [r.metric("trading_healer_running", fp=fp) for fp in CAPPED] == [1.0, 1.0, 0.0, 0.0, 0.0]
        assert [r.metric("trading_healer_queued", fp=fp) for fp in CAPPED] == [0.0, 0.0, 1.0, 1.0, 1.0]
        assert hb.done() == set()
        # one finishes: its worker takes the next point, still two at once
        hb.release("FP-1.1")
        wait_for(lambda: len(hb.started()) >= 3, what="the third action")
        assert hb.started() == {"FP-1.1", "FP-1.2", "FP-1.3"}
        assert hb.done() == {"FP-1.1"}
        assert [r.metric("trading_healer_running", fp=fp) for fp in CAPPED] == [0.0, 1.0, 1.0, 0.0, 0.0]
        assert [r.metric("trading_healer_queued", fp=fp) for fp in CAPPED] == [0.0, 0.0, 0.0, 1.0, 1.0]
        hb.release("all")
        wait_for(lambda: hb.done() == set(CAPPED), what="every queued action to run after")
        wait_idle(r)
        for fp in CAPPED:
            assert r.metric("trading_healer_running", fp=fp) == 0.0 and r.metric("trading_healer_queued", fp=fp) == 0.0
        assert sorted(h["fp"] for h in r.heals()) == sorted(CAPPED)
    assert hb.run_count() == 5
    assert 1 <= hb.max_live() <= 2


def test_the_answer_does_not_wait_for_the_action(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.block), "one"], "cooldown_seconds": 300}},
                    verify_timeout_seconds=0.3)
    with receiver(hb, cfg) as r:
        assert r.metric("trading_healer_running", fp="FP-1.1") == 0.0
        # the action cannot finish before release.one exists, and that is written only after this answer
        resp = r.post(payload(alert("FP-1.1")))
        assert resp.status_code == 200 and decisions(r.url, resp.json()["delivery"]) == ["accepted"]
        wait_for(lambda: hb.started() == {"one"}, what="the action to start")
        assert not (tmp_path / "release.one").exists() and hb.done() == set()
        # the script may write its start file before the receiver has noted its process
        wait_for(lambda: r.metric("trading_healer_running", fp="FP-1.1") == 1.0, what="running 1")
        assert r.metric("trading_healer_queued", fp="FP-1.1") == 0.0
        assert r.heals() == []  # no attempt recorded while it runs
        # and deliveries keep being answered while it runs
        again = r.post(payload(alert("FP-1.1"), alert("FP-1.1", starts_at="2026-11-25T10:05:00Z"), alert("FP-9.9")))
        assert again.status_code == 200
        assert decisions(r.url, again.json()["delivery"]) == ["duplicate", "cooldown", "unknown_fp"]
        assert hb.done() == set()
        hb.release("one")
        wait_for(lambda: r.metric("trading_healer_attempts_total", fp="FP-1.1", outcome="unverified") == 1.0,
                 what="the released action's outcome")
        assert hb.done() == {"one"} and r.metric("trading_healer_running", fp="FP-1.1") == 0.0
    assert hb.run_count() == 1


def test_give_up_survives_a_restart_until_resolved(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    audit_file = hb.root / "logs/trading_readiness_heals.jsonl"
    cfg = hb.config({"FP-1.1": {"run": [str(hb.fail)], "max_attempts": 1, "cooldown_seconds": 0.2}})
    with receiver(hb, cfg) as r:
        assert r.deliver(payload(alert("FP-1.1"))) == ["accepted"]
        wait_for(lambda: r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0, what="give-up after one failure")
    with receiver(hb, cfg) as r:  # restarted on the same audit file
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0  # exported before any delivery
        assert r.healer.policy.snapshot()["FP-1.1"]["gave_up"]
        # Alertmanager's repeat, and a new firing of the point: neither runs the action
        later = alert("FP-1.1", starts_at="2026-11-25T10:30:00Z")
        assert r.deliver(payload(later)) == ["gave_up"]
        assert r.metric("trading_healer_skipped_total", fp="FP-1.1", reason="gave_up") == 1.0
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0
        assert r.deliver(payload(alert("FP-1.1", status="resolved"))) == ["resolved"]
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 0.0
    assert hb.run_count() == 1
    events = [json.loads(x)["event"] for x in audit_file.read_text().splitlines()]
    assert events.count("gave_up") == 1 and events[-1] == "resolved"  # the restart did not record it again
    with receiver(hb, cfg) as r:  # the reset survives a restart too
        assert r.metric("trading_healer_gave_up", fp="FP-1.1") == 0.0
        state = r.healer.policy.snapshot()["FP-1.1"]
        assert not state["gave_up"] and state["attempts_in_window"] == 0
        seen: list[str] = []

        def admitted() -> bool:  # the point's cooldown (0.2 s) may still hold: Alertmanager repeats
            seen.extend(r.deliver(payload(alert("FP-1.1", starts_at="2026-11-25T11:00:00Z"))))
            return seen[-1] == "accepted"

        wait_for(admitted, what="a fresh attempt after the reset")
        assert set(seen) <= {"cooldown", "accepted"}
        wait_for(lambda: r.metric("trading_healer_gave_up", fp="FP-1.1") == 1.0, what="the next give-up")
    assert hb.run_count() == 2


def test_give_up_outlasts_its_window_and_only_resolved_clears_it() -> None:
    from healers.policy import HealerSpec, Policy

    spec = HealerSpec(fp="FP-1.1", name="restart-uw-daemon", argv=("true",), timeout_seconds=1, cooldown_seconds=10,
                      max_attempts=2, window_seconds=100, verify_timeout_seconds=1, enabled=True)
    p = Policy({"FP-1.1": spec})
    assert p.admit("FP-1.1", ("a", "t1"), 0.0, False) is None
    assert p.finished("FP-1.1", False) is False  # one failure of two allowed
    assert p.admit("FP-1.1", ("a", "t2"), 20.0, False) is None
    assert p.finished("FP-1.1", False) is True  # the second failure gives up
    assert p.admit("FP-1.1", ("a", "t3"), 30.0, False) == "gave_up"
    # long after window_seconds both attempts have expired, and it is still given up
    assert p.admit("FP-1.1", ("a", "t4"), 10_000.0, False) == "gave_up"
    assert p.snapshot()["FP-1.1"]["attempts_in_window"] == 0 and p.snapshot()["FP-1.1"]["gave_up"]
    assert p.reset("FP-1.1") is True
    assert p.admit("FP-1.1", ("a", "t5"), 10_001.0, False) is None
    # the budget counts attempts, not failures: successes inside the window use it up as well
    p.finished("FP-1.1", True)
    assert p.admit("FP-1.1", ("a", "t6"), 10_020.0, False) is None
    p.finished("FP-1.1", True)
    assert p.admit("FP-1.1", ("a", "t7"), 10_040.0, False) == "gave_up"


def test_insecure_no_auth_accepts_webhooks_without_a_token_and_says_so(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    port = free_port()
    proc = start_heal_cli(hb, cfg, port, "--insecure-no-auth", token=None)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return requests.get(url + "/-/healthy", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=20, what="the receiver without auth")
        assert deliver(url, payload(alert("FP-1.1")), token=None) == ["accepted"]  # no Authorization
        assert deliver(url, payload(alert("FP-9.9")), token="anything") == ["unknown_fp"]
        wait_for(lambda: requests.get(url + "/api/heals", timeout=5).json()["heals"], what="the attempt record")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert hb.run_count() == 1
    assert (f"WARNING: authentication is OFF (--insecure-no-auth): any process that can reach 127.0.0.1:{port} "
            "can make this healer run its actions; set TRADING_READINESS_HEALER_TOKEN instead") in err
    assert "auth: NONE (--insecure-no-auth)" in err


def test_with_automatic_collection_off_cycles_are_collected_between_bursts(tmp_path: Path) -> None:
    """``heal`` turns the collector's automatic passes off (none lands in the middle of a burst of
    deliveries): reference cycles are collected once a batch of deliveries is decided instead,
    and not before."""
    class Node:
        other: object = None

    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}})
    gc.collect()
    gc.disable()
    try:
        with receiver(hb, cfg) as r:
            collect = r.healer.collect_garbage
            collected: list[bool] = []  # what each of the dispatcher's calls did, as it happens

            def recorded(due: bool = False) -> bool:
                did = collect(due)
                collected.append(did)
                return did

            r.healer.collect_garbage = recorded  # type: ignore[method-assign]
            r.healer._collected = 0.0  # the last collection is long past
            node = Node()
            node.other = node
            cycle = weakref.ref(node)
            del node
            assert cycle() is not None  # nothing collects it on its own
            assert r.deliver(payload(alert("FP-1.3", status="resolved"))) == ["resolved"]
            wait_for(lambda: collected, timeout=10, what="the dispatcher done with the batch")
            assert collected == [True] and cycle() is None
            # and at most once per GC_SECONDS: a second batch right after collects nothing
            node = Node()
            node.other = node
            cycle = weakref.ref(node)
            del node
            r.healer._collected = time.monotonic()
            assert r.deliver(payload(alert("FP-1.3", status="resolved", starts_at="2026-11-25T10:01:00Z"))) \
                == ["resolved"]
            wait_for(lambda: len(collected) == 2, timeout=10, what="the dispatcher done with the second batch")
            assert collected == [True, False] and cycle() is not None
            assert collect(due=True) and cycle() is None
    finally:
        gc.enable()
    # with automatic collection on (tests, an embedding program) the receiver leaves it alone
    assert collect(due=True) is False
