"""Execution & Broker FP-4.4 ... FP-4.10: each broken at the loopback broker, then recovered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from exporter.bot.alpaca import broker_read
from exporter.bot.broker import BrokerError
from exporter.bot.context import Context
from exporter.core.config import load as load_config
from exporter.core.model import Result, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot, append_jsonl, write_json
from sandbox.factories import make_order, make_position

from .conftest import check_json, evaluate, market_at, wait_for
from .test_checks_data import observed

T = TypeVar("T")

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


# --- FP-4.4: refusals the bot recorded itself ------------------------------------------------------
#: a line of main/logs/orders.jsonl and of main/state/execution_failures.jsonl from the real bot
#: (realbot recording, main.py _scale_out_partial and tca_data_manager.track_execution_failure):
#: one refused scale-out, written to both files 3 ms apart
REAL_ORDER_FAILURE = {
    "ts": "2026-12-06T20:09:19.281031+00:00", "type": "order", "action": "scale_out_failed", "symbol": "AAPL",
    "fraction": 0.5, "error": "orders refused by test server", "canonical_trade_id": "AAPL|LONG|1796587698",
    "decision_event_id": "a1328ce6-f0e4-478a-8ce0-af08438844b8", "symbol_normalized": "AAPL",
    "time_bucket_id": "300s|1796587500", "fee_excluded_reason": "ALPACA_PAPER_FILL_PAYLOAD_MISSING_FEE_FIELDS",
    "fee_amount": None, "fee_currency": None, "slippage_excluded_reason": "no_decision_mid_or_fill_price",
    "filled_at": None, "fill_qty": None, "fill_price": None, "strategy_id": "equity"}
REAL_EXECUTION_FAILURE = {"timestamp": "2026-12-06T20:09:19.283962+00:00", "symbol": "AAPL",
                          "failure_type": "scale_out_failed",
                          "details": {"fraction": 0.5, "error": "orders refused by test server"}}
REAL_SUBMIT = {"ts": 1796587759.182875, "msg": "SUBMIT_ORDER_CALLED", "symbol": "AAPL", "mode": "market",
               "qty": 5.0, "side": "sell", "strategy_id": "equity"}


def record_refusals(bot: BotRoot, end: float, symbols: tuple[str, ...] = ("AAPL", "MSFT", "NVDA"),
                    cycles: int = 2, action: str = "scale_out_failed", error: str = "orders refused by test server",
                    both: bool = True) -> None:
    """What main.py wrote in the recording: per cycle (60 s apart), one submission per symbol
    ~0.1 s before its failure line in orders.jsonl, and the failure again in
    execution_failures.jsonl a few ms later; the last failure at ``end``."""
    orders, failures, submits = [], [], []
    for c in range(cycles):
        for i, sym in enumerate(symbols):
            t = end - 60 * (cycles - 1 - c) - 0.25 * (len(symbols) - 1 - i)
            submits.append({**REAL_SUBMIT, "ts": t - 0.1, "symbol": sym})
            orders.append({**REAL_ORDER_FAILURE, "ts": datetime.fromtimestamp(t, UTC).isoformat(), "symbol": sym,
                           "symbol_normalized": sym, "action": action, "error": error})
            failures.append({**REAL_EXECUTION_FAILURE, "timestamp": datetime.fromtimestamp(t + 0.003, UTC).isoformat(),
                             "symbol": sym, "failure_type": action, "details": {"fraction": 0.5, "error": error}})
    append_jsonl(bot.p("logs/submit_order_called.jsonl"), submits)
    append_jsonl(bot.p("logs/orders.jsonl"), orders)
    if both:
        append_jsonl(bot.p("state/execution_failures.jsonl"), failures)


def test_refusals_recorded_by_the_bot(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    """The recording: six scale-outs refused by the broker within two minutes, each in
    logs/orders.jsonl and state/execution_failures.jsonl, no order in the broker's closed list,
    and run.jsonl saying orders: 0. Six refusals (not twelve), an error."""
    now = time.time()
    record_refusals(bot, now - 30)
    r = one(bot, "FP-4.4")
    assert r.status is Status.ERROR, r.outcome.message
    msg = r.outcome.message
    assert "6 failed submissions" in msg and "6 of 6" in msg, msg
    assert "NVDA" in msg and "orders refused by test server" in msg and "logs/orders.jsonl" in msg, msg
    assert r.outcome.details["failures_recorded"] == 6 and r.outcome.details["submissions_recorded"] == 6
    assert observed(r, "trading_order_failures_recorded") == {(): 6}
    assert observed(r, "trading_orders_rejected") == {(): 0}


def test_recorded_refusals_are_counted_once_and_in_the_window(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    now = time.time()
    record_refusals(bot, now - 3 * 86400, cycles=3)  # three days ago: outside the window
    now_filled = [make_order("AAPL", 1, status="filled", submitted_at=datetime.now(UTC) - timedelta(minutes=m))
                  for m in range(1, 11)]
    alpaca.orders = now_filled
    r = one(bot, "FP-4.4")
    assert r.status is Status.OK and r.outcome.details["failures_recorded"] == 0, r.outcome.message
    # one close refused (orders.jsonl only: main.py records no execution failure for it) and one
    # market order refused in execution_failures.jsonl only: two failures, a warning among 10 fills
    append_jsonl(bot.p("logs/orders.jsonl"), [
        {"ts": datetime.fromtimestamp(now - 120, UTC).isoformat(), "type": "order", "action": "close_position_failed",
         "symbol": "TSLA", "error": "position not found"}])
    append_jsonl(bot.p("state/execution_failures.jsonl"), [
        {"timestamp": datetime.fromtimestamp(now - 60, UTC).isoformat(), "symbol": "AMD", "failure_type": "market_fail",
         "details": {"error": "insufficient buying power"}}])
    r = one(bot, "FP-4.4")
    assert r.status is Status.WARN, r.outcome.message
    assert r.outcome.details["failures_recorded"] == 2
    assert "AMD" in r.outcome.message and "insufficient buying power" in r.outcome.message
    assert "state/execution_failures.jsonl" in r.outcome.message
    # the same symbol refused twice within a second, each line in both files: two failures
    record_refusals(bot, now - 10, symbols=("META",), cycles=1)
    record_refusals(bot, now - 9, symbols=("META",), cycles=1)
    assert one(bot, "FP-4.4").outcome.details["failures_recorded"] == 4


def test_recorded_refusals_count_while_the_broker_is_down(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    """A broker outage is FP-4.1's alert; failures the bot recorded are this point's facts."""
    record_refusals(bot, time.time() - 30)
    alpaca.set_mode("500")
    rep = evaluate(bot.path, only=["FP-4.1", "FP-4.2", "FP-4.4"])
    assert rep.results["FP-4.1"].status is Status.ERROR
    r = rep.results["FP-4.4"]
    assert r.status is Status.ERROR and "6 failed submissions" in r.outcome.message, r.outcome.message
    assert "FP-4.1" in r.outcome.message  # says why the broker's own list is not counted
    alpaca.set_mode("ok")
    for rel in ("logs/orders.jsonl", "state/execution_failures.jsonl", "logs/submit_order_called.jsonl"):
        bot.p(rel).unlink()
    alpaca.set_mode("500")
    r = evaluate(bot.path, only=["FP-4.1", "FP-4.2", "FP-4.4"]).results["FP-4.4"]
    assert r.status is Status.SKIPPED and r.outcome.skipped_by == "FP-4.1", r.outcome.message


def test_an_unreadable_order_log_is_reported(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.p("logs/orders.jsonl").write_bytes(bytes(range(256)) * 4 + b"\n")
    r = one(bot, "FP-4.4")
    assert r.status is Status.WARN and "orders.jsonl" in r.outcome.message, r.outcome.message
    bot.p("logs/orders.jsonl").unlink()
    bot.p("state/execution_failures.jsonl").mkdir(parents=True)
    r = one(bot, "FP-4.4")
    assert r.status is Status.WARN and "execution_failures.jsonl" in r.outcome.message, r.outcome.message


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


def _in_thread(fn: Callable[[], T]) -> Callable[[float], T]:
    """Start ``fn`` in a thread; the returned join gives its value (or raises what it raised)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the joining test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float) -> T:
        thread.join(timeout)
        assert not thread.is_alive(), f"still running after {timeout} s"
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    return join


def test_an_outage_that_ends_while_the_clock_is_asked_is_not_this_endpoints_error(
        bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    # The whole broker hangs: /v2/positions gets no answer, then the point asks the clock whether
    # the broker answers at all, and the hang ends while that request waits. The clock answers,
    # but only because the outage is over: /v2/positions is asked again, not blamed (an ERROR
    # here would stay for the point's whole 60 s interval after the broker recovered).
    config = cfg(tmp_path, "alpaca: {timeout_seconds: 0.5, cache_seconds: 0.1}\n")
    alpaca.set_mode("hang")
    join = _in_thread(lambda: evaluate(bot.path, only=["FP-4.5"], config=config).results["FP-4.5"])
    wait_for(lambda: alpaca.request_count("/v2/clock"), timeout=5, what="the clock asked after /v2/positions timed out")
    assert alpaca.request_count("/v2/positions") == 1
    alpaca.set_mode("ok")
    r = join(10)
    assert r.status is Status.OK, r.outcome.message
    assert alpaca.request_count("/v2/positions") == 2


def test_an_endpoint_that_fails_on_its_own_is_still_this_points_error(bot: BotRoot, alpaca: FakeAlpaca,
                                                                      tmp_path: Path) -> None:
    config = cfg(tmp_path, "alpaca: {timeout_seconds: 0.3, cache_seconds: 0.1}\n")
    alpaca.set_mode("hang", paths=["/v2/positions"])
    # nothing else was asked while /v2/positions waited: asked again once the clock answers, and
    # blamed when it fails again
    r = evaluate(bot.path, only=["FP-4.5"], config=config).results["FP-4.5"]
    assert r.status is Status.ERROR and "did not answer /positions within 0.3 s" in r.outcome.message
    assert "this endpoint fails on its own" in r.outcome.message
    assert alpaca.request_count("/v2/positions") == 2
    # the broker answered another request while /v2/positions waited: blamed at once, no second wait
    ctx = Context(load_config(str(config), str(bot.path)), environ={})
    join = _in_thread(lambda: broker_read(ctx, "/positions"))
    wait_for(lambda: alpaca.request_count("/v2/positions") == 3, timeout=5, what="/v2/positions asked")
    assert isinstance(ctx.broker.get("/clock"), dict)
    with pytest.raises(BrokerError) as failed:
        join(5)
    assert failed.value.kind == "timeout" and failed.value.others_answered
    assert alpaca.request_count("/v2/positions") == 3
    # a request that fails while the broker answers nothing else says so
    with pytest.raises(BrokerError) as failed:
        ctx.broker.get("/positions")
    assert failed.value.kind == "timeout" and not failed.value.others_answered
