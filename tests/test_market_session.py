"""Market-session awareness: the broker's clock and calendar decide how strict activity checks are.

The fake broker's time source is frozen at each moment (NYSE rules: Thanksgiving is a holiday,
the day after closes at 13:00) and the checks run on the same clock through the real engine,
on a real bot root whose files are written relative to that moment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.bot.context import Context
from exporter.core.config import load as load_config
from exporter.core.model import Readiness, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

from .conftest import evaluate, market_at

# November 2026: New York is UTC-5
MOMENTS = {
    "open": (datetime(2026, 11, 24, 16, 0, tzinfo=UTC), "open", ""),
    "premarket": (datetime(2026, 11, 24, 14, 0, tzinfo=UTC), "premarket", "before the open"),
    "closed_weekday": (datetime(2026, 11, 24, 23, 30, tzinfo=UTC), "closed", "after the close"),
    "weekend": (datetime(2026, 11, 29, 7, 0, tzinfo=UTC), "closed", "weekend"),
    "holiday": (datetime(2026, 11, 26, 16, 0, tzinfo=UTC), "closed", "holiday"),
    "half_day_after_early_close": (datetime(2026, 11, 27, 19, 0, tzinfo=UTC), "closed", "after the close"),
    "half_day_before_early_close": (datetime(2026, 11, 27, 17, 0, tzinfo=UTC), "open", ""),
}

#: points that judge in-session activity only; SKIPPED with the reason outside the session
SESSION_ONLY = ["FP-1.7", "FP-2.3", "FP-2.4", "FP-2.5", "FP-3.3", "FP-3.4", "FP-3.5", "FP-3.6", "FP-3.7"]


def _root(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW, when: datetime) -> BotRoot:
    return BotRoot(tmp_path / "bot", now=when.timestamp()).healthy(alpaca.url, uw.url)


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_session_phase_from_the_broker(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW, moment: str) -> None:
    when, phase, reason = MOMENTS[moment]
    clock = market_at(alpaca, when)
    root = _root(tmp_path, alpaca, uw, when)
    session = Context(load_config(None, str(root.path)), environ={}, clock=clock).session()
    assert session.source == "broker"
    assert session.phase == phase, session
    assert session.reason == reason

    rep = evaluate(root.path, only=["FP-1.2", "FP-1.3", "FP-1.9", *SESSION_ONLY], clock=clock)
    for fp in SESSION_ONLY:
        r = rep.results[fp]
        if phase == "open":
            assert r.status is Status.OK, (fp, r.outcome.message)
        else:
            assert r.status is Status.SKIPPED, (fp, r.outcome.message)
            assert "market closed" in r.outcome.message, (fp, r.outcome.message)

    # a 5-hour-old cache: an ERROR in session and pre-market, not outside it
    root.write_cache(last_update=when.timestamp() - 5 * 3600)
    fresh = evaluate(root.path, only=["FP-1.2", "FP-1.3"], clock=clock).results["FP-1.3"]
    if phase in ("open", "premarket"):
        assert fresh.status is Status.ERROR, fresh.outcome.message
    else:
        assert fresh.status is Status.OK, fresh.outcome.message
        assert f"market closed ({reason})" in fresh.outcome.message


def test_stale_cache_at_two_on_sunday_is_not_an_error(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    sunday_2am_et = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    clock = market_at(alpaca, sunday_2am_et)
    root = _root(tmp_path, alpaca, uw, sunday_2am_et)
    friday_close = datetime(2026, 11, 27, 18, 0, tzinfo=UTC).timestamp()  # 13:00 ET, half day
    # the daemon stopped at Friday's close: stale metadata, an old heartbeat, empty flow data
    root.write_cache(last_update=friday_close, trades=0)
    root.p("logs/uw_daemon.jsonl").unlink()
    root.daemon_cycles(3, end=friday_close)
    only = ["FP-1.2", "FP-1.3", "FP-1.4", "FP-1.6", "FP-1.9", "FP-1.10", *SESSION_ONLY]
    rep = evaluate(root.path, only=only, clock=clock)
    statuses = {fp: r.status for fp, r in rep.results.items()}
    assert Status.ERROR not in statuses.values(), {fp: r.outcome.message for fp, r in rep.results.items()}
    assert rep.readiness is not Readiness.BLOCKED
    # 38 h old is worth a warning outside the session, never a page
    assert statuses["FP-1.3"] is Status.WARN and "weekend" in rep.results["FP-1.3"].outcome.message
    assert statuses["FP-1.10"] is Status.WARN and "outside the session" in rep.results["FP-1.10"].outcome.message
    assert statuses["FP-1.9"] is Status.SKIPPED
    # the same files on Monday at 11:00 ET are an outage
    monday = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
    rep = evaluate(root.path, only=only, clock=market_at(alpaca, monday))
    assert rep.results["FP-1.3"].status is Status.ERROR
    assert rep.results["FP-1.9"].status is Status.SKIPPED  # one dead daemon, one critical
    assert rep.to_json()["critical_fps"] == ["FP-1.3"]
    assert rep.readiness is Readiness.BLOCKED


def test_session_window_starts_at_todays_open(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    """Cycles from before today's open do not count as in-session cycles."""
    just_after_open = datetime(2026, 11, 24, 14, 33, tzinfo=UTC)  # 09:33 ET
    clock = market_at(alpaca, just_after_open)
    root = _root(tmp_path, alpaca, uw, just_after_open)
    t = just_after_open.timestamp()
    # twelve empty cycles before the open, two after it (and nothing else in the run log)
    root.p("logs/run.jsonl").unlink()
    root.cycles_with_blocks(12, clusters=0, end=t - 240)
    root.cycles_with_blocks(2, clusters=0, end=t)
    r = evaluate(root.path, only=["FP-1.7"], clock=clock).results["FP-1.7"]
    assert r.status is Status.OK and r.outcome.details["cycles"] == 2, r.outcome.message
    later = t + 10 * 60
    root.cycles_with_blocks(10, clusters=0, end=later)
    r = evaluate(root.path, only=["FP-1.7"], clock=market_at(alpaca, datetime.fromtimestamp(later, UTC))).results[
        "FP-1.7"]
    assert r.status is Status.WARN and "no clusters in the last 10 in-session cycles" in r.outcome.message
