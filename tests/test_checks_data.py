"""Data & Signal Generation FP-1.6 ... FP-1.11: each broken the way BOT.md says, then recovered.

Real bot roots on disk, the real engine (and the CLI once), loopback Alpaca/UW servers, real
daemon processes for the process checks. The market session comes from the fake broker's clock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from exporter.bot.context import Context
from exporter.bot.funnel import REASON_LABELS, STAGES
from exporter.checks import registry
from exporter.checks.data import last_quota_reset, next_quota_reset
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Result, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

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


def usage_state(root: BotRoot, calls: int, day: str = OPEN.date().isoformat()) -> None:
    """state/uw_usage_state.json as the bot's UW client writes it (sorted keys, indent 2)."""
    root.p("state/uw_usage_state.json").write_text(json.dumps(
        {"by_endpoint": {"default": calls}, "calls_today": calls, "date": day, "minute_window": []},
        indent=2, sort_keys=True))


def quota_attempts(root: BotRoot, attempts: int, sent: int, end: float) -> None:
    """data/uw_api_quota.jsonl as the bot writes it: a daemon line per attempt (blocked ones too)
    and a UW-client line per call sent."""
    with open(root.p("data/uw_api_quota.jsonl"), "a") as fh:
        for i in range(attempts):
            url = f"https://api.unusualwhales.com/api/darkpool/T{i}"
            fh.write(json.dumps({"ts": int(end - i), "url": url, "params": {}, "source": "uw_flow_daemon"}) + "\n")
            if i < sent:
                fh.write(json.dumps({"ts": int(end - i), "url": url, "params": {}, "source": "src/uw/uw_client",
                                     "endpoint_name": "default"}) + "\n")


def uw_error(root: BotRoot, at: float, status: int = 429, kind: str = "rate_limit",
             endpoint: str = "https://api.unusualwhales.com/api/darkpool/AAPL") -> None:
    path = root.p("reports/uw_health/uw_api_errors.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"ts": at, "http_status": status, "endpoint": endpoint,
                             "response_body_truncated": "{\"message\": \"Too Many Requests\"}",
                             "request_params": {}, "uw_api_error_type": kind,
                             "caller": "uw_flow_daemon.py:339:_get"}) + "\n")


def rate_limited_event(root: BotRoot, at: float, daily_count: str | None, daily_limit: str | None) -> None:
    with open(root.p("data/uw_flow_cache.log.jsonl"), "a") as fh:
        fh.write(json.dumps({"event": "UW_API_RATE_LIMITED", "url": "https://api.unusualwhales.com/api/x",
                             "status": 429, "daily_count": daily_count, "daily_limit": daily_limit,
                             "message": "Too Many Requests" if daily_count else "", "queued": False,
                             "ts": int(at), "_ts": int(at)}) + "\n")


def test_quota_usage_is_the_bots_count_of_calls_sent_not_the_attempt_log(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """The real quota log has a line per attempt plus a line per call sent (1300 lines for 251
    calls in a recording); only state/uw_usage_state.json says what UW was really asked."""
    sbot.set_env(UW_DAILY_LIMIT="1000")
    sbot.p("data/uw_api_quota.jsonl").unlink()
    quota_attempts(sbot, 1049, 251, OPEN.timestamp())
    usage_state(sbot, 251)
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.OK, r.outcome.message
    assert r.outcome.details["used"] == 251 and observed(r, "trading_uw_quota_used")[()] == 251
    # the bot's cap is UW_DAILY_LIMIT x UW_SAFETY_BUFFER (0.95 by default): 950 here
    assert r.outcome.details["cap"] == 950 and observed(r, "trading_uw_quota_limit")[()] == 950
    assert "251 UW calls sent today of the bot's cap 950" in r.outcome.message


def test_quota_warns_errors_at_the_bots_cap_and_recovers_on_the_next_utc_day(sbot: BotRoot,
                                                                              alpaca: FakeAlpaca) -> None:
    sbot.set_env(UW_DAILY_LIMIT="100", UW_SAFETY_BUFFER="1")
    usage_state(sbot, 85)
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.WARN and "85 UW calls sent today of the bot's cap 100" in r.outcome.message
    usage_state(sbot, 100)
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.ERROR, r.outcome.message
    assert "refuses every call until 2026-11-25T00:00:00Z (00:00 UTC)" in r.outcome.message
    assert "pause" not in r.outcome.message
    # the same spent cap after the close warns instead of paging all evening
    r = run(sbot, "FP-1.6", alpaca, when=CLOSED)
    assert r.status is Status.WARN and "market closed" in r.outcome.message
    # the file still says yesterday's 100: the client starts again at 0 on a new UTC day, so do we
    r = run(sbot, "FP-1.6", alpaca, when=datetime(2026, 11, 25, 15, 0, tzinfo=UTC))
    assert r.status is Status.OK and r.outcome.details["used"] == 0, r.outcome.message
    assert "not today's" in r.outcome.details["count_note"]


def test_real_uw_429s_warn_and_the_limiters_own_blocks_do_not(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    usage_state(sbot, 251)
    # the client's own 120/min limiter: logged as UW_API_RATE_LIMITED with null counts, never an error line
    for i in range(50):
        rate_limited_event(sbot, t - 60 + i, None, None)
    assert run(sbot, "FP-1.6", alpaca).status is Status.OK
    for i in range(3):
        uw_error(sbot, t - 30 + i * 3.5)
    uw_error(sbot, t - 20, status=200, kind="empty")  # an empty answer is logged there too, not a 429
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.WARN, r.outcome.message
    assert "UW answered HTTP 429 to 3 call(s) in the last 15 min" in r.outcome.message
    assert "api/darkpool/AAPL" in r.outcome.message and "pause" not in r.outcome.message
    assert observed(r, "trading_uw_rate_limited")[()] == 1 and r.outcome.details["uw_429_calls"] == 3
    # UW's own headers, logged with a real 429, say the daily quota is spent: in session that pages
    rate_limited_event(sbot, t - 21, "50000", "50000")
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.ERROR and "UW reports its daily quota spent (50000 of 50000)" in r.outcome.message
    # the window passes without a new 429: recovered
    r = run(sbot, "FP-1.6", alpaca, when=OPEN + timedelta(minutes=16))
    assert r.status is Status.OK and observed(r, "trading_uw_rate_limited")[()] == 0, r.outcome.message


def test_fp16_does_not_depend_on_what_fp15_probed(sbot: BotRoot, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    """FP-1.5's probe answered 429 in the same cycle: FP-1.6 judges the bot's own records only, so
    its verdict is the same alone, after FP-1.5 and before it."""
    usage_state(sbot, 10)
    uw.set_mode("429")
    clock = market_at(alpaca, OPEN)
    ctx = Context(load_config(None, str(sbot.path)), environ={}, clock=clock)
    eng = Engine(ctx, registry())
    first = eng.run(["FP-1.6"])["FP-1.6"]
    probe = eng.run(["FP-1.5"])["FP-1.5"]
    assert probe.status is Status.WARN and "429" in probe.outcome.message
    after = eng.run(["FP-1.6"])["FP-1.6"]
    assert first.status is after.status is Status.OK
    assert first.outcome.message == after.outcome.message


def test_usage_state_missing_corrupt_or_limit_invalid(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.p("state/uw_usage_state.json").unlink(missing_ok=True)
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.OK and "no UW call recorded yet" in r.outcome.message
    sbot.p("state/uw_usage_state.json").write_text("[1, 2]")
    r = run(sbot, "FP-1.6", alpaca)
    assert r.status is Status.WARN and "uw_usage_state.json is not a JSON object" in r.outcome.message
    usage_state(sbot, 3)
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
    """Judged while the daemon runs (FP-1.10 is SKIPPED for a dead daemon, `check --only` too)."""
    daemon = Procs(sbot.path)
    daemon.daemon()
    try:
        _heartbeat_cases(sbot, alpaca)
    finally:
        daemon.stop_all()


def _heartbeat_cases(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
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
    from exporter.core.catalog import load

    clock = market_at(alpaca, when)
    root = BotRoot(tmp_path / "bot", now=when.timestamp()).healthy(alpaca.url, uw.url)
    # FP-1.12 looks at the whole host, where other tests run bots of their own: its own test below
    mine = [p.id for p in load() if p.category_number in (1, 2, 3) and p.id != "FP-1.12"]
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
    assert len(rep.results) == len(mine) == 30  # FP-3.12 (orders reach the broker) is the 30th point of categories 1-3


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


# --- the daemon does not pause on a 429 -------------------------------------------------------
def test_a_429_never_explains_a_missing_daemon_cycle(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """The real daemon keeps polling and cycling under 429s: a daemon that logged no cycle for
    50 min is hung, whatever UW answered, and FP-1.6's 429 warning does not skip it."""
    daemon = Procs(sbot.path)
    daemon.daemon()
    try:
        sbot.p("logs/uw_daemon.jsonl").unlink()
        sbot.daemon_cycles(1, end=OPEN.timestamp() - 3000)
        uw_error(sbot, OPEN.timestamp() - 60)
        usage_state(sbot, 40)
        rep = evaluate(sbot.path, only=["FP-1.6", "FP-1.10", "FP-1.3"], clock=market_at(alpaca, OPEN),
                       isolated=False).results
        assert rep["FP-1.6"].status is Status.WARN, rep["FP-1.6"].outcome.message
        assert rep["FP-1.10"].status is Status.WARN, rep["FP-1.10"].outcome.message
        assert "no daemon cycle for 50 min" in rep["FP-1.10"].outcome.message
        assert "does not pause" in rep["FP-1.10"].outcome.message
        assert all("pauses" not in r.outcome.message for r in rep.values())
    finally:
        daemon.stop_all()


# --- FP-1.1: a process that exists but does no work ---------------------------------------------
def test_a_stopped_daemon_is_not_running(bot: BotRoot, procs: Procs) -> None:
    d = procs.daemon()
    assert evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"].status is Status.OK
    os.kill(d.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: psutil.Process(d.pid).status() == psutil.STATUS_STOPPED, what="daemon stopped")
        r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
        assert r.status is Status.ERROR, r.outcome.message
        assert r.outcome.details["state"] == "stopped" and f"pid {d.pid}" in r.outcome.message
        assert "stopped (state T)" in r.outcome.message
        code, data = check_json(bot.path, "--only", "FP-1.1")
        assert (code, data["failure_points"]["FP-1.1"]["details"]["state"]) == (2, "stopped")
    finally:
        os.kill(d.pid, signal.SIGCONT)
    wait_for(lambda: evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"].status is Status.OK,
             what="daemon running again")


def test_a_zombie_daemon_is_not_running(bot: BotRoot, procs: Procs) -> None:
    """Killed and never reaped by its parent (here: this test process): the pid it wrote into the
    lock file is a zombie, which shows no command line and holds no lock."""
    d = procs.daemon()
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: psutil.Process(d.pid).status() == psutil.STATUS_ZOMBIE, what="zombie")
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.ERROR and r.outcome.details["state"] == "zombie", r.outcome.message
    assert f"pid {d.pid}" in r.outcome.message and "zombie" in r.outcome.message
    d.wait(timeout=5)  # reaped: an ordinary dead daemon
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.ERROR and "state" not in r.outcome.details
    assert "no uw_flow_daemon.py process runs" in r.outcome.message


# --- FP-1.12: another stock-bot on this host --------------------------------------------------
def test_another_stock_bot_on_the_host_warns_naming_its_root(bot: BotRoot, procs: Procs, tmp_path: Path) -> None:
    other = tmp_path / "other-bot"
    (other / "data").mkdir(parents=True)
    (other / "uw_flow_daemon.py").write_text("# the other bot's daemon\n")
    (other / "health_supervisor.py").write_text("# runs pkill -f uw_flow_daemon\n")
    (other / "main.py").write_text("import time\nwhile True:\n    time.sleep(0.5)\n")
    unrelated = tmp_path / "some-app"  # a main.py and a daemon script, but no stock-bot supervisor
    unrelated.mkdir()
    (unrelated / "main.py").write_text("import time\nwhile True:\n    time.sleep(0.5)\n")
    (unrelated / "uw_flow_daemon.py").write_text("# not a stock-bot\n")
    procs.daemon()
    procs.bot()
    procs.start([sys.executable, "main.py"], cwd=unrelated)  # a main.py that is no stock-bot
    r = evaluate(bot.path, only=["FP-1.12"]).results["FP-1.12"]
    # other tests may run bots of their own on this host at the same time: judge our roots only
    assert str(bot.path.resolve()) not in r.outcome.details["other_roots"]
    assert str(unrelated.resolve()) not in r.outcome.details["other_roots"]
    killer = procs.start([sys.executable, "-u", "main.py"], cwd=other)

    def seen() -> Result | None:
        """The new process is seen once it has exec'd its interpreter (a moment after the spawn)."""
        res = evaluate(bot.path, only=["FP-1.12"]).results["FP-1.12"]
        return res if str(other.resolve()) in res.outcome.details.get("other_roots", []) else None

    r = wait_for(seen, timeout=15, what="FP-1.12 to see the other root's main.py")
    assert r.status is Status.WARN and str(other.resolve()) in r.outcome.details["other_roots"], r.outcome.message
    assert f"main.py pid {killer.pid}" in r.outcome.message and "pkill -f uw_flow_daemon" in r.outcome.message
    assert observed(r, "trading_other_bots_on_host")[()] >= 1
    killer.kill()
    killer.wait(timeout=5)
    r = evaluate(bot.path, only=["FP-1.12"]).results["FP-1.12"]
    assert str(other.resolve()) not in r.outcome.details["other_roots"]
    # a daemon of another root counts by itself (our main.py's supervisor would kill it)
    (other / "uw_flow_daemon.py").write_text("import time\nwhile True:\n    time.sleep(0.5)\n")
    theirs = procs.start([sys.executable, str(other / "uw_flow_daemon.py")], cwd=tmp_path)

    def daemon_seen() -> Result | None:
        """Seen once it has exec'd its interpreter, as above: evaluated at once it may still be the fork."""
        res = evaluate(bot.path, only=["FP-1.12"]).results["FP-1.12"]
        return res if f"uw_flow_daemon.py pid {theirs.pid}" in res.outcome.message else None

    r = wait_for(daemon_seen, timeout=15, what="FP-1.12 to see the other root's daemon")
    assert r.status is Status.WARN, r.outcome.message


# --- checks are order-independent -------------------------------------------------------------
def test_only_runs_a_points_dependencies_so_its_verdict_is_the_cycles(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.p("data/uw_flow_cache.json").unlink()
    clock = market_at(alpaca, OPEN)
    whole = evaluate(sbot.path, clock=clock).results
    for fp in ("FP-1.3", "FP-1.4", "FP-1.9", "FP-2.5"):
        alone = evaluate(sbot.path, only=[fp], clock=clock, isolated=False)
        # the dependencies ran; the failing one is reported with the point, so the run is not READY
        assert sorted(alone.results) == sorted([fp, "FP-1.2"]) and alone.readiness.name == "BLOCKED"
        assert alone.results[fp].status is whole[fp].status is Status.SKIPPED, fp
        assert alone.results[fp].outcome.message == whole[fp].outcome.message == "depends on FP-1.2"
        assert alone.results["FP-1.2"].status is Status.ERROR
