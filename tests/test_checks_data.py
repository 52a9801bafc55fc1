"""Data & Signal Generation FP-1.6 ... FP-1.11: each broken the way BOT.md says, then recovered.

Real bot roots on disk, the real engine (and the CLI once), loopback Alpaca/UW servers, real
daemon processes for the process checks. The market session comes from the fake broker's clock.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.checks.data import last_quota_reset, next_quota_reset
from exporter.config import load as load_config
from exporter.context import Context
from exporter.engine import Engine
from exporter.funnel import REASON_LABELS, STAGES
from exporter.model import Result, Status
from exporter.sim.alpaca import FakeAlpaca
from exporter.sim.botroot import BotRoot
from exporter.sim.uw import FakeUW

from .conftest import Procs, check_json, evaluate, market_at, wait_for

OPEN = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # Tuesday 11:00 ET
CLOSED = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)  # Tuesday 18:00 ET


@pytest.fixture
def sbot(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> BotRoot:
    """A healthy bot root written at OPEN, with the fake broker's clock at OPEN."""
    market_at(alpaca, OPEN)
    return BotRoot(tmp_path / "bot", now=OPEN.timestamp()).healthy(alpaca.url, uw.url)


def run(root: BotRoot, fp: str, alpaca: FakeAlpaca, when: datetime = OPEN, only: list[str] | None = None,
        config: Path | None = None) -> Result:
    return evaluate(root.path, only=only or [fp], clock=market_at(alpaca, when), config=config).results[fp]


def observed(r: Result, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {o.labels: o.value for o in r.outcome.observations if o.name == name}


# --- FP-1.6 ----------------------------------------------------------------------------------
def test_quota_reset_is_20_et_in_winter_and_summer() -> None:
    winter = datetime(2026, 11, 24, 16, 0, tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(last_quota_reset(winter), UTC) == datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(next_quota_reset(winter), UTC) == datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 14, 23, 30, tzinfo=UTC).timestamp()  # 19:30 EDT
    assert datetime.fromtimestamp(last_quota_reset(summer), UTC) == datetime(2026, 7, 14, 0, 0, tzinfo=UTC)
    after = datetime(2026, 7, 15, 0, 30, tzinfo=UTC).timestamp()  # 20:30 EDT
    assert datetime.fromtimestamp(last_quota_reset(after), UTC) == datetime(2026, 7, 15, 0, 0, tzinfo=UTC)


def test_quota_warns_errors_in_session_and_recovers_at_the_reset(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.set_env(UW_DAILY_LIMIT="100")
    # yesterday's requests (before the 20:00 ET reset) do not count
    sbot.p("data/uw_api_quota.jsonl").unlink()
    sbot.quota_requests(500, end=last_quota_reset(OPEN.timestamp()) - 60)
    sbot.quota_requests(20, end=OPEN.timestamp())
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.OK and r.outcome.details["used"] == 20, r.outcome.message
    sbot.quota_requests(65, end=OPEN.timestamp())
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.WARN and "85 of 100 requests" in r.outcome.message
    sbot.quota_requests(15, end=OPEN.timestamp())
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.ERROR and "daily quota exhausted" in r.outcome.message
    assert "resets 20:00 ET" in r.outcome.message
    assert observed(r, "trading_uw_quota_used")[()] == 100
    # the same exhausted quota after the close warns instead of paging all evening
    r = run(sbot, "FP-1.6", alpaca, when=CLOSED)
    assert r.status is Status.WARN and "market closed" in r.outcome.message
    # after the 20:00 ET reset the count starts again: recovered
    r = run(sbot, "FP-1.6", alpaca, when=datetime(2026, 11, 25, 1, 30, tzinfo=UTC))
    assert r.status is Status.OK and r.outcome.details["used"] == 0, r.outcome.message


def test_a_429_is_an_error_in_session(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.quota_requests(1, end=OPEN.timestamp(), status=429)
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.ERROR and "HTTP 429" in r.outcome.message
    assert observed(r, "trading_uw_rate_limited")[()] == 1
    # a 429 logged by the daemon counts too, and FP-1.10 then explains the pause instead of warning
    sbot.p("data/uw_api_quota.jsonl").unlink()
    sbot.quota_requests(3, end=OPEN.timestamp())
    sbot.p("logs/uw_daemon.jsonl").unlink()
    sbot.daemon_cycles(1, end=OPEN.timestamp() - 3000)
    with open(sbot.p("logs/uw_daemon.jsonl"), "a") as fh:
        fh.write(json.dumps({"event": "uw_rate_limited", "status": 429, "ts": OPEN.timestamp() - 2900}) + "\n")
    rep = evaluate(sbot.path, only=["FP-1.6", "FP-1.10"], clock=market_at(alpaca, OPEN)).results
    assert rep["FP-1.6"].status is Status.ERROR
    assert rep["FP-1.10"].status is Status.SKIPPED
    # the next day (after the reset) the old 429 no longer counts
    r = run(sbot, "FP-1.6", alpaca, when=OPEN + timedelta(days=1))
    assert r.status is Status.OK, r.outcome.message


def test_quota_count_follows_new_lines_and_recounts_after_rotation(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.set_env(UW_DAILY_LIMIT="1000")
    ctx = Context(load_config(None, str(sbot.path)), environ={}, clock=market_at(alpaca, OPEN))
    eng = Engine(ctx)
    assert eng.run(["FP-1.6"])["FP-1.6"].outcome.details["recounted"] is True
    sbot.quota_requests(30, end=OPEN.timestamp())
    r = eng.run(["FP-1.6"])["FP-1.6"]
    assert r.outcome.details["used"] == 50 and r.outcome.details["recounted"] is False
    path = sbot.p("data/uw_api_quota.jsonl")
    path.rename(path.with_suffix(".jsonl.1"))  # rotated mid-day: the new file holds only new lines
    sbot.quota_requests(5, end=OPEN.timestamp())
    r = eng.run(["FP-1.6"])["FP-1.6"]
    assert r.outcome.details["used"] == 5 and r.outcome.details["recounted"] is True


def test_quota_log_missing_or_limit_invalid(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.p("data/uw_api_quota.jsonl").unlink()
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.WARN and "does not exist" in r.outcome.message
    sbot.quota_requests(3)
    sbot.set_env(UW_DAILY_LIMIT="lots")
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.WARN and "UW_DAILY_LIMIT is not a number" in r.outcome.message


# --- FP-1.7: clusters and the funnel ----------------------------------------------------------
def test_no_clusters_for_n_cycles_warns_with_the_funnel(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    for rel in ("logs/run.jsonl", "state/blocked_trades.jsonl"):
        sbot.p(rel).unlink()
    sbot.cycles_with_blocks(10, clusters=0, end=t + 600, blocked={"market_closed": 1, "mystery_gate": 1})
    later = OPEN + timedelta(seconds=600)
    r = run(sbot, "FP-1.7", alpaca, when=later)
    assert r.status is Status.WARN, r.outcome.message
    assert "no clusters in the last 10 in-session cycles" in r.outcome.message
    fun = r.outcome.details["funnel"]
    assert fun["stages"]["symbols"] == 12 and fun["stages"]["clusters"] == 0
    assert fun["blocked_by_reason"] == {"market_closed": 10, "other": 10}
    assert fun["blocked_detail"] == {"mystery_gate": 10}
    # every stage and every bounded reason is exported, zeros included
    stages = observed(r, "trading_signal_funnel")
    assert {dict(k)["stage"] for k in stages} == set(STAGES)
    reasons = observed(r, "trading_blocked_candidates")
    assert {dict(k)["reason"] for k in reasons} == set(REASON_LABELS)
    assert reasons[(("reason", "other"),)] == 10 and reasons[(("reason", "theme_gate"),)] == 0
    # one cycle with clusters: recovered
    sbot.cycles_with_blocks(1, clusters=4, orders=1, end=t + 660)
    r = run(sbot, "FP-1.7", alpaca, when=later + timedelta(seconds=60))
    assert r.status is Status.OK and "4 clusters" in r.outcome.message


def test_funnel_answers_why_not_trading_through_the_cli(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    """The CLI runs on wall-clock time, so this root is written at the current time."""
    now = time.time()
    root = BotRoot(tmp_path / "cli", now=now).healthy(alpaca.url, uw.url)
    for rel in ("logs/run.jsonl", "state/blocked_trades.jsonl"):
        root.p(rel).unlink()
    root.cycles_with_blocks(6, clusters=2, orders=0, end=now, blocked={"expectancy_blocked:neg_ev": 2})
    _code, data = check_json(root.path, "--only", "FP-1.7")
    fp = data["failure_points"]["FP-1.7"]
    fun = fp["details"]["funnel"]
    assert fun["stages"]["orders"] == 0 and fun["blocked_by_reason"]["expectancy_blocked"] == 12
    assert "expectancy_blocked 12" in fun["answer"] and "no order" in fun["answer"]


# --- FP-1.8: cycle errors ---------------------------------------------------------------------
def test_cycle_errors_warn_then_error_then_recover(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    sbot.run_error("KeyError: 'flow_trades' while building clusters", at=t + 30)
    r = run(sbot, "FP-1.8", alpaca, when=OPEN + timedelta(seconds=30))
    assert r.status is Status.WARN and "KeyError" in r.outcome.message
    sbot.run_error({"type": "ValueError", "message": "bad premium"}, at=t + 90)
    sbot.run_error("boom", at=t + 150, msg="cycle failed", level="error")
    r = run(sbot, "FP-1.8", alpaca, when=OPEN + timedelta(seconds=150))
    assert r.status is Status.ERROR and "last 3 cycles failed" in r.outcome.message
    assert r.outcome.details["failing_streak"] == 3
    # a scoring error belongs to FP-2.2, not here
    sbot.cycles_with_blocks(1, end=t + 210)
    sbot.run_error("composite score NaN for AMD", at=t + 270)
    r = run(sbot, "FP-1.8", alpaca, when=OPEN + timedelta(seconds=270))
    assert r.status is Status.WARN and r.outcome.details["failing_streak"] == 0
    # half an hour of clean cycles later the errors have left the window: recovered
    end = t + 270 + 1900
    sbot.cycles_with_blocks(5, end=end)
    r = run(sbot, "FP-1.8", alpaca, when=datetime.fromtimestamp(end, UTC))
    assert r.status is Status.OK, r.outcome.message


# --- FP-1.9: fresh but empty ------------------------------------------------------------------
def test_fresh_but_empty_cache(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-1.2", "FP-1.3", "FP-1.4", "FP-1.9", "FP-1.7"]
    sbot.write_cache(trades=0)  # fresh _metadata, every ticker empty
    rep = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN)).results
    assert rep["FP-1.3"].status is Status.OK  # fresh by the daemon's own stamp...
    assert rep["FP-1.9"].status is Status.ERROR  # ...and still useless
    assert "swallowing UW API errors" in rep["FP-1.9"].outcome.message
    assert rep["FP-1.7"].status is Status.SKIPPED and rep["FP-1.7"].outcome.message == "depends on FP-1.9"
    premarket = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert run(sbot, "FP-1.9", alpaca, when=premarket, only=["FP-1.9"]).status is Status.WARN
    assert run(sbot, "FP-1.9", alpaca, when=CLOSED, only=["FP-1.9"]).status is Status.SKIPPED
    sbot.write_cache()
    assert run(sbot, "FP-1.9", alpaca, only=only).status is Status.OK


# --- FP-1.10: daemon heartbeat ----------------------------------------------------------------
def test_daemon_heartbeat_is_market_aware(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.p("logs/uw_daemon.jsonl").unlink()
    sbot.daemon_cycles(3, end=OPEN.timestamp() - 1000)
    r = run(sbot, "FP-1.10", alpaca)
    assert r.status is Status.WARN and "no daemon cycle for 16 min" in r.outcome.message
    # the same gap after the close is normal
    sbot.p("logs/uw_daemon.jsonl").unlink()
    sbot.daemon_cycles(3, end=CLOSED.timestamp() - 1000)
    assert run(sbot, "FP-1.10", alpaca, when=CLOSED).status is Status.OK
    sbot.daemon_cycles(1, end=OPEN.timestamp(), start_cycle=4)
    r = run(sbot, "FP-1.10", alpaca)
    assert r.status is Status.OK and "last daemon cycle #4" in r.outcome.message
    sbot.p("logs/uw_daemon.jsonl").unlink()
    assert run(sbot, "FP-1.10", alpaca).status is Status.WARN


# --- FP-1.11: one daemon ----------------------------------------------------------------------
def test_duplicate_daemon_that_does_not_exit(bot: BotRoot, procs: Procs, tmp_path: Path) -> None:
    owner = procs.daemon()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("checks:\n  FP-1.11: {params: {grace_seconds: 0}}\n")
    only = ["FP-1.1", "FP-1.11"]
    r = evaluate(bot.path, only=only, config=cfg).results["FP-1.11"]
    assert r.status is Status.OK and f"pid {owner.pid} holds the lock" in r.outcome.message
    dup = procs.daemon(linger=30)  # blocked on the lock, but still running

    def seen() -> bool:
        r = evaluate(bot.path, only=only, config=cfg).results["FP-1.11"]
        return dup.pid in r.outcome.details.get("duplicates", [])

    wait_for(seen, what="duplicate daemon seen")
    r = evaluate(bot.path, only=only, config=cfg).results["FP-1.11"]
    assert r.status is Status.WARN and str(dup.pid) in r.outcome.message
    # a young duplicate is one about to exit on the lock: not counted with the default grace
    assert evaluate(bot.path, only=only).results["FP-1.11"].status is Status.OK
    dup.kill()
    dup.wait()
    assert evaluate(bot.path, only=only, config=cfg).results["FP-1.11"].status is Status.OK
    owner.kill()
    owner.wait()
    assert evaluate(bot.path, only=only, config=cfg).results["FP-1.11"].status is Status.SKIPPED


# --- the healthy root stays all-OK ------------------------------------------------------------
@pytest.mark.parametrize("when", [OPEN, CLOSED], ids=["open", "closed"])
def test_healthy_root_is_all_ok(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW, when: datetime) -> None:
    """Every point of categories 1-3 on the healthy root, with the daemon and the bot running:
    OK in session; outside it OK or SKIPPED (market closed), never WARN or ERROR."""
    from exporter.catalog import load

    clock = market_at(alpaca, when)
    root = BotRoot(tmp_path / "bot", now=when.timestamp()).healthy(alpaca.url, uw.url)
    mine = [p.id for p in load() if p.category_number in (1, 2, 3)]
    procs = Procs(root.path)
    try:
        procs.daemon()
        procs.bot()
        rep = evaluate(root.path, only=mine, clock=clock)
    finally:
        procs.stop_all()
    allowed = {Status.OK} if when is OPEN else {Status.OK, Status.SKIPPED}
    bad = {fp: (r.status.name, r.outcome.message) for fp, r in rep.results.items() if r.status not in allowed}
    assert not bad, bad
    assert len(rep.results) == len(mine) == 29


def test_missing_run_log_is_one_warning_not_nine(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.p("logs/run.jsonl").unlink()
    run_points = ["FP-1.7", "FP-1.8", "FP-2.2", "FP-2.3", "FP-3.3", "FP-3.4", "FP-3.5", "FP-3.6", "FP-3.7"]
    rep = evaluate(sbot.path, only=["FP-1.2", "FP-1.3", "FP-1.6", "FP-1.9", "FP-2.1", *run_points],
                   clock=market_at(alpaca, OPEN))
    assert rep.to_json()["warning_fps"] == ["FP-1.8"], rep.to_json()["warning_fps"]
    assert "run.jsonl does not exist" in rep.results["FP-1.8"].outcome.message
    for fp in run_points[2:]:
        assert "FP-1.8 reports it" in rep.results[fp].outcome.message, fp
    sbot.cycles_with_blocks(3)
    rep = evaluate(sbot.path, only=["FP-1.2", "FP-1.3", "FP-1.6", "FP-1.9", "FP-2.1", *run_points],
                   clock=market_at(alpaca, OPEN))
    assert {r.status for r in rep.results.values()} == {Status.OK}


def test_one_failed_cycle_logging_three_lines_is_not_three_failures(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp() + 30
    sbot.run_error("ValueError: bad premium", at=t)
    sbot.run_error("Traceback (most recent call last): ...", at=t + 0.2, msg="traceback")
    sbot.run_error("cluster build failed", at=t + 0.4)
    r = run(sbot, "FP-1.8", alpaca, when=OPEN + timedelta(seconds=31))
    assert r.status is Status.WARN and r.outcome.details["failing_streak"] == 1, r.outcome.message


def test_frozen_cycles_are_not_missing_clusters(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    sbot.p("logs/run.jsonl").unlink()
    sbot.cycles_with_blocks(12, clusters=0, orders=0, end=t + 720, freeze_active=True)
    r = run(sbot, "FP-1.7", alpaca, when=OPEN + timedelta(seconds=720))
    assert r.status is Status.OK and r.outcome.details["frozen_cycles"] == 12, r.outcome.message
    assert "frozen" in r.outcome.details["funnel"]["answer"]
