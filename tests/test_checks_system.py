"""System & Infrastructure FP-6.2 ... FP-6.8: each broken on a real bot root, then recovered.

Disk and memory are the real machine's: thresholds move (params) so its real values cross them.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.bot.context import Context
from exporter.checks import registry
from exporter.checks.system import SCAN_TTL_SECONDS
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Result, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot, iso, write_json
from sandbox.uw import FakeUW

from .conftest import Procs, check_json, evaluate, market_at

OPEN = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # Tuesday 11:00 ET
SUNDAY = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)  # Sunday 02:00 ET


def one(root: BotRoot, fp: str, config: Path | None = None, **kw: object) -> Result:
    return evaluate(root.path, only=[fp], config=config, **kw).results[fp]  # type: ignore[arg-type]


def cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tr.yaml"
    path.write_text(text)
    return path


def test_healthy_root_is_ok_on_every_system_point(bot: BotRoot, running: Procs) -> None:
    rep = evaluate(bot.path, only=[f"FP-6.{i}" for i in range(1, 9)])
    for fp, r in rep.results.items():
        # FP-6.3 is judged in session only; at other times it is skipped, never failing
        assert r.status is Status.OK or (fp == "FP-6.3" and r.status is Status.SKIPPED), (fp, r.outcome.message)


def test_healthy_root_in_session_is_ok_on_categories_4_to_6(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    """In session nothing is skipped for being closed: every broker, state and system point is OK."""
    root = BotRoot(tmp_path / "bot", now=OPEN.timestamp()).healthy(alpaca.url, uw.url)
    procs = Procs(root.path)
    try:
        procs.daemon()
        procs.bot()
        ids = [f"FP-4.{i}" for i in range(1, 11)] + [f"FP-5.{i}" for i in range(1, 5)] + \
              [f"FP-6.{i}" for i in range(1, 9)]
        rep = evaluate(root.path, only=ids, clock=market_at(alpaca, OPEN))
    finally:
        procs.stop_all()
    assert {fp: r.status for fp, r in rep.results.items() if r.status is not Status.OK} == {}, \
        {fp: r.outcome.message for fp, r in rep.results.items() if r.status is not Status.OK}


# --- FP-6.2 -------------------------------------------------------------------------------------
def _restart_bot(running: Procs) -> None:
    old = running.procs[1]
    old.kill()
    old.wait()
    new = running.bot()
    running.procs[1] = new
    running.procs.append(old)  # still reaped at teardown
    time.sleep(SCAN_TTL_SECONDS)  # the checks of one cycle share a process scan this long


def test_crash_loop_seen_across_cycles(bot: BotRoot, running: Procs) -> None:
    shift = [0.0]  # the exporter's clock; moved forward to let the 10 min window pass
    engine = Engine(Context(load_config(None, str(bot.path)), environ={}, clock=lambda: time.time() + shift[0]), registry())

    def status() -> Result:
        return engine.run(["FP-6.2"])["FP-6.2"]

    assert status().status is Status.OK
    _restart_bot(running)
    r = status()
    assert r.status is Status.WARN and "restarted 1 time(s)" in r.outcome.message
    assert len(r.outcome.details["restarts_at"]) == 1
    for _ in range(2):
        _restart_bot(running)
        status()
    r = status()
    assert r.status is Status.ERROR and "crash loop: 3 restarts in the last 10 min" in r.outcome.message
    # a duplicate beside the live bot is not a restart
    running.bot()
    time.sleep(SCAN_TTL_SECONDS)
    assert status().outcome.details["restarts_at"] == r.outcome.details["restarts_at"]
    # ten minutes on, the bot stayed up: recovered
    shift[0] = 601.0
    r = status()
    assert r.status is Status.OK and r.outcome.details["process_restarts"] == 0


def test_supervisor_gave_up_on_the_bot(bot: BotRoot) -> None:
    write_json(bot.p("state/health.json"), {"overall_status": "FAILED", "timestamp": iso(time.time()),
                                            "services": {"trading-bot": "FAILED", "uw-daemon": "OK"}})
    code, data = check_json(bot.path, "--only", "FP-6.2", "FP-6.7")
    fps = data["failure_points"]
    assert fps["FP-6.2"]["status"] == "ERROR" and "supervisor reports trading-bot FAILED" in fps["FP-6.2"]["last_error"]
    # one cause, one critical: the supervisor point only notes the bot's service
    assert fps["FP-6.7"]["status"] == "OK" and "see FP-6.2" in fps["FP-6.7"]["message"] and code == 2
    bot.p("state/health.json").unlink()
    r = one(bot, "FP-6.2")
    assert r.status is Status.OK and "not used" in r.outcome.details["supervisor"]
    write_json(bot.p("state/health.json"), {"overall_status": "OK", "timestamp": iso(time.time()),
                                            "services": {"trading-bot": "OK"}})
    assert one(bot, "FP-6.2").status is Status.OK


# --- FP-6.3 -------------------------------------------------------------------------------------
@pytest.fixture
def stale(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> BotRoot:
    """A root whose last cycle is 1000 s before OPEN, with a heartbeat re-stamped at OPEN."""
    root = BotRoot(tmp_path / "bot", now=OPEN.timestamp() - 1000).healthy(alpaca.url, uw.url)
    root.heartbeat(ts=OPEN.timestamp() - 30)
    return root


def test_stuck_bot_seen_through_a_restamped_heartbeat(stale: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    r = one(stale, "FP-6.3", clock=market_at(alpaca, OPEN))
    assert r.status is Status.ERROR, r.outcome.message
    assert "no cycle logged for 16 min in session" in r.outcome.message and "re-stamped by a helper" in r.outcome.message
    stale.run_cycles(1, end=t - 400)
    r = one(stale, "FP-6.3", clock=market_at(alpaca, OPEN))
    assert r.status is Status.WARN and "6 min" in r.outcome.message
    # Sunday 02:00: the same silence is not judged, nothing fires all weekend
    r = one(stale, "FP-6.3", clock=market_at(alpaca, SUNDAY))
    assert r.status is Status.SKIPPED and "weekend" in r.outcome.message
    stale.run_cycles(1, end=t - 20)
    r = one(stale, "FP-6.3", clock=market_at(alpaca, OPEN))
    assert r.status is Status.OK and r.outcome.details["last_cycle_age_seconds"] == 20


def test_stuck_judged_incrementally_in_one_context(stale: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    clock = market_at(alpaca, OPEN)
    engine = Engine(Context(load_config(None, str(stale.path)), environ={}, clock=clock), registry())
    assert engine.run(["FP-6.3"])["FP-6.3"].status is Status.ERROR
    stale.run_cycles(1, end=t - 5)
    r = engine.run(["FP-6.3"])["FP-6.3"]
    assert r.status is Status.OK and r.outcome.details["last_cycle_age_seconds"] == 5
    tail = engine.ctx.tails.get(stale.p("logs/run.jsonl"))
    assert tail.state.offset == stale.p("logs/run.jsonl").stat().st_size  # read to the end, once


def test_no_run_log_leaves_only_the_heartbeat(stale: BotRoot, alpaca: FakeAlpaca) -> None:
    stale.p("logs/run.jsonl").unlink()
    r = one(stale, "FP-6.3", clock=market_at(alpaca, OPEN))
    assert r.status is Status.WARN and "no cycle in the run log" in r.outcome.message
    stale.heartbeat(ts=OPEN.timestamp() - 5000)
    assert one(stale, "FP-6.3", clock=market_at(alpaca, OPEN)).status is Status.ERROR


# --- FP-6.4 / FP-6.5 ----------------------------------------------------------------------------
def test_disk_thresholds_against_the_real_filesystem(bot: BotRoot, tmp_path: Path) -> None:
    r = one(bot, "FP-6.4")
    assert r.status is Status.OK and r.outcome.details["free_bytes"] > 0
    r = one(bot, "FP-6.4", config=cfg(tmp_path, "checks:\n  FP-6.4:\n    params: {warn_free_bytes: 1000000000000000000}\n"))
    assert r.status is Status.WARN and "below the warning threshold" in r.outcome.message
    r = one(bot, "FP-6.4", config=cfg(tmp_path, "checks:\n  FP-6.4:\n    params: {error_free_percent: 100}\n"))
    assert r.status is Status.ERROR and "below the error threshold" in r.outcome.message
    assert one(bot, "FP-6.4").status is Status.OK  # thresholds back to the defaults


def test_memory_thresholds_and_bot_rss(bot: BotRoot, running: Procs, tmp_path: Path) -> None:
    r = one(bot, "FP-6.5")
    assert r.status is Status.OK and r.outcome.details["bot_rss_bytes"] > 0
    r = one(bot, "FP-6.5", config=cfg(tmp_path, "checks:\n  FP-6.5:\n    params: {max_bot_rss_bytes: 1024}\n"))
    assert r.status is Status.WARN and "main.py RSS" in r.outcome.message
    r = one(bot, "FP-6.5", config=cfg(tmp_path, "checks:\n  FP-6.5:\n    params: {error_available_percent: 100}\n"))
    assert r.status is Status.ERROR and "available" in r.outcome.message
    assert one(bot, "FP-6.5").status is Status.OK


# --- FP-6.6 -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_network_names_the_failure_kind(bot: BotRoot, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    assert one(bot, "FP-6.6").status is Status.OK
    bot.set_env(UW_BASE_URL=f"http://127.0.0.1:{_free_port()}")
    code, data = check_json(bot.path, "--only", "FP-6.6")
    point = data["failure_points"]["FP-6.6"]
    assert point["status"] == "ERROR" and "uw: 127.0.0.1" in point["last_error"] and "refused" in point["last_error"]
    assert point["details"]["alpaca"]["result"] == "ok" and code == 2
    bot.set_env(UW_BASE_URL="http://no-such-host.invalid:8080")
    r = one(bot, "FP-6.6")
    assert r.status is Status.ERROR and "DNS lookup of no-such-host.invalid failed" in r.outcome.message
    bot.set_env(UW_BASE_URL="uw.example")  # no scheme: no host to connect to
    r = one(bot, "FP-6.6")
    assert r.status is Status.ERROR and "cannot parse a host from the uw base URL" in r.outcome.message
    bot.set_env(UW_BASE_URL=uw.url)
    assert one(bot, "FP-6.6").status is Status.OK


# --- FP-6.7 -------------------------------------------------------------------------------------
def test_supervisor_health(bot: BotRoot, tmp_path: Path) -> None:
    now = time.time()
    write_json(bot.p("state/health.json"), {"overall_status": "DEGRADED", "timestamp": iso(now),
                                            "services": {"trading-bot": "OK", "dashboard": "DEGRADED"}})
    r = one(bot, "FP-6.7")
    assert r.status is Status.WARN and "DEGRADED: dashboard DEGRADED" in r.outcome.message
    write_json(bot.p("state/health.json"), {"overall_status": "OK", "timestamp": iso(now - 1200), "services": {}})
    r = one(bot, "FP-6.7")
    assert r.status is Status.ERROR and "20 min old" in r.outcome.message and "dead or hung" in r.outcome.message
    write_json(bot.p("state/health.json"), {"overall_status": "OK", "timestamp": now - 700, "services": {}})
    assert one(bot, "FP-6.7").status is Status.WARN  # epoch timestamps work too
    bot.torn("state/health.json")
    r = one(bot, "FP-6.7")
    assert r.status is Status.WARN and "see FP-5.3" in r.outcome.message
    write_json(bot.p("state/health.json"), {"overall_status": "OK", "timestamp": iso(now), "services": {}})
    assert one(bot, "FP-6.7").status is Status.OK


# --- FP-6.8 -------------------------------------------------------------------------------------
def test_clock_sync_against_the_broker_reference(bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    config = cfg(tmp_path, "checks:\n  FP-6.8:\n    params: {method: broker}\n")
    r = one(bot, "FP-6.8", config=config)
    assert r.status is Status.OK and r.outcome.details["method"] == "broker clock"
    r = one(bot, "FP-6.8", config=config, clock=lambda: time.time() + 30)
    assert r.status is Status.WARN and "30.0 s off the broker's" in r.outcome.message
    assert one(bot, "FP-6.8", config=config).status is Status.OK  # the clock is right again
    alpaca.stop()
    r = one(bot, "FP-6.8", config=config)
    assert r.status is Status.SKIPPED and "broker clock is unavailable" in r.outcome.message
    assert r.outcome.skipped_by == "FP-4.1"  # the outage is FP-4.1's alert, not a clock problem


def test_clock_sync_auto_names_its_source(bot: BotRoot) -> None:
    r = one(bot, "FP-6.8")
    assert r.outcome.details["method"] in ("timedatectl NTPSynchronized", "adjtimex", "broker clock")
    if r.outcome.details["method"] == "broker clock":
        # the host does not report synchronisation: the message must say what the OK rests on
        assert "broker" in r.outcome.message and "kernel_synchronised" in r.outcome.details


@pytest.mark.parametrize("when, reason", [
    (datetime(2026, 11, 24, 13, 45, tzinfo=UTC), "before the open"),  # pre-market, Tuesday 08:45 ET
    (datetime(2026, 11, 24, 23, 0, tzinfo=UTC), "after the close"),  # Tuesday 18:00 ET
    (SUNDAY, "weekend"),  # Sunday 02:00 ET
    (datetime(2026, 11, 26, 16, 0, tzinfo=UTC), "holiday"),  # Thanksgiving 11:00 ET
    (datetime(2026, 11, 27, 19, 0, tzinfo=UTC), "after the close"),  # half day: closed 13:00 ET, now 14:00 ET
])
def test_silence_outside_the_session_is_never_judged(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW, when: datetime,
                                                     reason: str) -> None:
    from sandbox.factories import make_order

    # last cycle 5000 s ago and an order unworked for hours: an error in session
    root = BotRoot(tmp_path / "bot", now=when.timestamp() - 5000).healthy(alpaca.url, uw.url)
    alpaca.orders = [make_order("TSLA", 1, status="accepted", submitted_at=when.replace(hour=1))]
    rep = evaluate(root.path, only=["FP-4.1", "FP-4.2", "FP-4.7", "FP-6.3"], clock=market_at(alpaca, when))
    for fp in ("FP-4.7", "FP-6.3"):
        assert rep.results[fp].status is Status.SKIPPED, (fp, reason, rep.results[fp].outcome.message)
        assert f"market closed ({reason})" in rep.results[fp].outcome.message
    assert rep.results["FP-6.3"].outcome.details["last_cycle_age_seconds"] == 5000
    assert rep.results["FP-4.7"].outcome.details["unworked"] == 1
    assert rep.readiness.name == "READY"
