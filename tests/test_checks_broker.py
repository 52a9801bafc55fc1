"""Execution & Broker FP-4.4 ... FP-4.10: each broken at the loopback broker, then recovered."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from exporter.model import Result, Status
from exporter.sim.alpaca import FakeAlpaca, make_order, make_position
from exporter.sim.botroot import BotRoot, write_json

from .conftest import check_json, evaluate, market_at

OPEN = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # Tuesday 10:00 ET, session open since 09:30
CLOSED = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)  # Saturday 02:00 ET


def one(root: BotRoot, fp: str, config: Path | None = None, **kw: object) -> Result:
    return evaluate(root.path, only=["FP-4.1", "FP-4.2", fp], config=config, **kw).results[fp]  # type: ignore[arg-type]


def cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tr.yaml"
    path.write_text(text)
    return path


def test_order_rejections(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    now = datetime.now(UTC)
    filled = [make_order("AAPL", 1, status="filled", submitted_at=now - timedelta(minutes=m)) for m in (5, 6, 7)]
    old_reject = make_order("TSLA", 1, status="rejected", submitted_at=now - timedelta(days=3))
    alpaca.orders = [*filled, old_reject]
    r = one(bot, "FP-4.4")
    assert r.status is Status.OK and "no rejected order among 3" in r.outcome.message  # older than the window
    alpaca.orders = [*filled, make_order("AMD", 2, "sell", status="rejected", submitted_at=now - timedelta(minutes=1))]
    r = one(bot, "FP-4.4")
    assert r.status is Status.WARN and "1 of 4" in r.outcome.message and "sell AMD" in r.outcome.message
    assert r.outcome.details["rejected_orders"][0]["symbol"] == "AMD"
    alpaca.orders = [make_order(s, 1, status="rejected", submitted_at=now - timedelta(minutes=2))
                     for s in ("AMD", "NVDA", "META")] + filled[:1]
    code, data = check_json(bot.path, "--only", "FP-4.1", "FP-4.2", "FP-4.4")
    point = data["failure_points"]["FP-4.4"]
    assert point["status"] == "ERROR" and "3 of 4" in point["last_error"] and code == 2
    alpaca.orders = filled  # recovered: only fills in the window
    assert one(bot, "FP-4.4").status is Status.OK


def test_position_consistency_without_a_bot_record(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    r = one(bot, "FP-4.5")
    assert r.status is Status.OK and "no bot-side record" in r.outcome.message
    assert "none" in r.outcome.details["bot_side"]
    bad = make_position("MSFT", 5, 400.0)
    bad["qty"] = "five"
    alpaca.positions = [make_position("AAPL", 10, 228.4), make_position("AAPL", 3, 228.4), bad]
    r = one(bot, "FP-4.5")
    assert r.status is Status.WARN
    assert "AAPL listed twice" in r.outcome.message and "MSFT has an invalid quantity 'five'" in r.outcome.message
    alpaca.positions = [make_position("AAPL", 10, 228.4)]
    assert one(bot, "FP-4.5").status is Status.OK


def test_positions_reconciled_with_the_bot_record(bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    config = cfg(tmp_path, "checks:\n  FP-4.5:\n    params: {bot_positions_file: state/positions.json}\n")
    alpaca.positions = [make_position("AAPL", 10, 228.4), make_position("NVDA", 25, 181.2)]
    write_json(bot.p("state/positions.json"), {"AAPL": {"qty": 10, "side": "long"}, "TSLA": {"qty": 4},
                                               "NVDA": {"qty": 20}})
    r = one(bot, "FP-4.5", config=config)
    assert r.status is Status.WARN
    d = r.outcome.details
    assert d["only_in_bot"] == ["TSLA"] and d["qty_differs"] == ["NVDA"] and d["only_at_broker"] == []
    assert "NVDA quantity: bot 20.0, broker 25" in r.outcome.message
    bot.torn("state/positions.json")
    r = one(bot, "FP-4.5", config=config)
    assert r.status is Status.WARN and "unreadable" in r.outcome.message
    write_json(bot.p("state/positions.json"), [{"symbol": "AAPL", "qty": "10"}, {"symbol": "NVDA", "qty": "25"}])
    r = one(bot, "FP-4.5", config=config)
    assert r.status is Status.OK and "match positions.json" in r.outcome.message


def test_buying_power_low_and_recovered(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    healthy = dict(alpaca.account)
    alpaca.account = {**healthy, "buying_power": "999.99"}
    r = one(bot, "FP-4.3")
    assert r.status is Status.WARN and "$999.99 below the minimum $1,000.00" in r.outcome.message
    alpaca.account = healthy
    assert one(bot, "FP-4.3").status is Status.OK


def test_account_blocked_and_recovered(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    healthy = dict(alpaca.account)
    alpaca.account = {**healthy, "status": "ACCOUNT_CLOSED", "trading_blocked": True}
    r = one(bot, "FP-4.6")
    assert r.status is Status.ERROR and "ACCOUNT_CLOSED" in r.outcome.message and "trading_blocked" in r.outcome.message
    alpaca.account = healthy
    assert one(bot, "FP-4.6").status is Status.OK


def _stuck_run(root: BotRoot, alpaca: FakeAlpaca, when: datetime) -> Result:
    return evaluate(root.path, only=["FP-4.1", "FP-4.2", "FP-4.7"], clock=market_at(alpaca, when)).results["FP-4.7"]


def test_orders_stuck_in_session_only(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    resting = make_order("AAPL", 1, status="new", order_type="limit", limit_price=200,
                         submitted_at=OPEN - timedelta(hours=3))
    alpaca.orders = [resting, make_order("NVDA", 1, status="accepted", submitted_at=OPEN - timedelta(seconds=30))]
    r = _stuck_run(bot, alpaca, OPEN)
    assert r.status is Status.OK and r.outcome.details["unworked"] == 2  # a resting limit and a fresh order
    alpaca.orders.append(make_order("AMD", 1, status="pending_new", submitted_at=OPEN - timedelta(minutes=5)))
    r = _stuck_run(bot, alpaca, OPEN)
    assert r.status is Status.WARN and "AMD pending_new" in r.outcome.message
    # a market order left from yesterday counts from today's 09:30 open: 30 min unworked
    alpaca.orders.append(make_order("TSLA", 1, status="accepted", submitted_at=OPEN - timedelta(hours=20)))
    r = _stuck_run(bot, alpaca, OPEN)
    assert r.status is Status.ERROR and "oldest TSLA accepted" in r.outcome.message and "30 min" in r.outcome.message
    # the same orders on a Saturday night: they wait for the open, nothing fires
    r = _stuck_run(bot, alpaca, CLOSED)
    assert r.status is Status.SKIPPED and "weekend" in r.outcome.message
    alpaca.orders = [resting]
    assert _stuck_run(bot, alpaca, OPEN).status is Status.OK


def test_rate_limit_headroom(bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    alpaca.rate_limit = 6  # FP-4.1's clock and FP-4.2's account request leave 4
    r = one(bot, "FP-4.8")
    assert r.status is Status.ERROR and "of 6 Alpaca requests left" in r.outcome.message
    assert r.outcome.details["remaining"] <= 5
    alpaca.rate_limit = 20
    r = one(bot, "FP-4.8", config=cfg(tmp_path, "checks:\n  FP-4.8:\n    params: {warn_fraction: 0.99}\n"))
    assert r.status is Status.WARN and r.outcome.details["limit"] == 20
    alpaca.rate_limit = 1_000_000
    r = one(bot, "FP-4.8")
    assert r.status is Status.OK
    assert {o.name for o in r.outcome.observations} == {"trading_alpaca_rate_limit_remaining",
                                                        "trading_alpaca_rate_limit_limit"}


def test_clock_skew_against_the_broker_fails_and_recovers(bot: BotRoot) -> None:
    """The host clock drifts ahead, then behind, then NTP corrects it."""
    def measure(skew: float) -> Result:
        return one(bot, "FP-4.9", clock=lambda: time.time() + skew)

    assert measure(0.0).status is Status.OK
    for skew, expected, word in ((120.0, Status.ERROR, "ahead of"), (-8.0, Status.WARN, "behind")):
        r = measure(skew)
        assert r.status is expected and word in r.outcome.message, r.outcome.message
        assert abs(r.outcome.details["offset_seconds"] + skew) < 2
    r = measure(0.0)  # corrected: recovered
    assert r.status is Status.OK, r.outcome.message


def test_equity_floor(bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    healthy = dict(alpaca.account)
    alpaca.account = {**healthy, "equity": "1500.25"}
    code, data = check_json(bot.path, "--only", "FP-4.1", "FP-4.2", "FP-4.10")
    point = data["failure_points"]["FP-4.10"]
    assert point["status"] == "ERROR" and "$1,500.25 below the floor $2,000.00" in point["last_error"] and code == 2
    alpaca.account = {**healthy, "equity": "2100"}
    assert one(bot, "FP-4.10").status is Status.WARN
    r = one(bot, "FP-4.10", config=cfg(tmp_path, "checks:\n  FP-4.10:\n    params: {min_equity: 50000}\n"))
    assert r.status is Status.ERROR  # the operator's own floor
    alpaca.account = healthy
    assert one(bot, "FP-4.10").status is Status.OK


def test_a_transient_broker_fault_is_fp41s_alert_not_each_points(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    ids = ["FP-4.1", "FP-4.2", "FP-4.3", "FP-4.4", "FP-4.5", "FP-4.6", "FP-4.10"]
    alpaca.set_mode("429", paths=["/v2/orders", "/v2/positions", "/v2/account"])
    r = evaluate(bot.path, only=ids).results
    assert r["FP-4.2"].status is Status.SKIPPED and "reported by FP-4.1" in r["FP-4.2"].outcome.message
    for fp in ("FP-4.3", "FP-4.4", "FP-4.5", "FP-4.6", "FP-4.10"):
        assert r[fp].status is Status.SKIPPED and r[fp].outcome.skipped_by == "FP-4.1", fp
    # run without FP-4.2 the points meet the 429 themselves, and still leave it to FP-4.1
    r = evaluate(bot.path, only=["FP-4.1", "FP-4.4", "FP-4.5", "FP-4.10"]).results
    for fp in ("FP-4.4", "FP-4.5", "FP-4.10"):
        assert r[fp].status is Status.SKIPPED and "reported by FP-4.1" in r[fp].outcome.message, fp
    assert evaluate(bot.path, only=ids).readiness.name == "READY"  # a 429 is a warning at most
    alpaca.set_mode("nonjson", paths=["/v2/orders"])  # broken for this endpoint only: this point's error
    r = evaluate(bot.path, only=["FP-4.1", "FP-4.2", "FP-4.4"]).results
    assert r["FP-4.4"].status is Status.ERROR and "not JSON" in r["FP-4.4"].outcome.message
    alpaca.set_mode("ok")
    assert evaluate(bot.path, only=ids).readiness.name == "READY"
