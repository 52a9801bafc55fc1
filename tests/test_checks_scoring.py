"""Scoring & Evaluation FP-2.2 ... FP-2.7: each broken from the bot's own files, then recovered."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.bot.context import Context
from exporter.bot.market import NY
from exporter.bot.weights import ENTRY_COMPONENTS
from exporter.checks import registry
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot, iso, write_json
from sandbox.uw import FakeUW

from .conftest import evaluate, market_at
from .test_checks_data import CLOSED, OPEN, observed, run


@pytest.fixture
def sbot(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> BotRoot:
    market_at(alpaca, OPEN)
    root = BotRoot(tmp_path / "bot", now=OPEN.timestamp()).healthy(alpaca.url, uw.url)
    for rel in ("logs/run.jsonl", "state/blocked_trades.jsonl"):  # each test writes its own cycles
        root.p(rel).unlink()
    root.cycles_with_blocks(3, clusters=2, orders=1)
    return root


def at(seconds: float) -> datetime:
    return OPEN + timedelta(seconds=seconds)


# --- FP-2.2 ----------------------------------------------------------------------------------
def test_nan_scores_and_scoring_errors(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    assert run(sbot, "FP-2.2", alpaca).status is Status.OK
    # json writes NaN as a bare token, as Python's json in the bot does
    sbot.cycles_with_blocks(2, blocked={"score_below_min": 2}, score=float("nan"), end=t + 120)
    r = run(sbot, "FP-2.2", alpaca, when=at(120))
    assert r.status is Status.WARN and "4 of 4 recent blocked candidates" in r.outcome.message
    sbot.block("score_below_min", at=t + 150, score=None)
    sbot.cycles_with_blocks(1, end=t + 180)
    assert run(sbot, "FP-2.2", alpaca, when=at(180)).outcome.details["non_finite_scores"] == 5
    # a scoring error logged by the cycle, with finite scores around it
    end = t + 2200
    sbot.cycles_with_blocks(3, blocked={"score_below_min": 1}, end=end - 120)
    sbot.run_error("composite score failed: division by zero", at=end - 60, stage="scoring")
    sbot.cycles_with_blocks(1, end=end)
    r = run(sbot, "FP-2.2", alpaca, when=at(2200))
    assert r.status is Status.WARN and "division by zero" in r.outcome.message
    # clean cycles later: recovered
    sbot.cycles_with_blocks(5, blocked={"score_below_min": 1}, end=end + 2000)
    assert run(sbot, "FP-2.2", alpaca, when=at(4200)).status is Status.OK


# --- FP-2.3 ----------------------------------------------------------------------------------
def test_nothing_reaches_the_threshold(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    t = OPEN.timestamp()
    sbot.cycles_with_blocks(10, blocked={"score_below_min": 3}, orders=0, score=2.4, end=t + 600)
    r = run(sbot, "FP-2.3", alpaca, when=at(600))
    assert r.status is Status.WARN, r.outcome.message
    assert "no candidate reached the threshold in the last 10" in r.outcome.message
    assert "best score 2.4" in r.outcome.message and "MIN_EXEC_SCORE 2" in r.outcome.message
    # closed: not judged
    assert run(sbot, "FP-2.3", alpaca, when=CLOSED).status is Status.SKIPPED
    # a cooldown refusing a candidate that was below the bar anyway proves nothing
    sbot.cycles_with_blocks(1, blocked={"score_below_min": 2, "symbol_on_cooldown": 1}, orders=0, end=t + 660)
    assert run(sbot, "FP-2.3", alpaca, when=at(660)).status is Status.WARN
    # one candidate above the bar (refused by a cooldown) passes the threshold: recovered
    sbot.block("symbol_on_cooldown", at=t + 690, score=2.6)
    sbot.cycles_with_blocks(1, orders=0, end=t + 720)
    r = run(sbot, "FP-2.3", alpaca, when=at(720))
    assert r.status is Status.OK and r.outcome.details["reached_threshold"] == 1, r.outcome.message


# --- FP-2.4 ----------------------------------------------------------------------------------
def test_enrichment_missing_for_most_tickers(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    data = json.loads(sbot.p("data/uw_flow_cache.json").read_text())
    for sym, entry in data.items():
        if not sym.startswith("_") and sym not in ("NVDA", "AAPL"):
            entry.update(dark_pool={}, greeks={}, insider={})
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.4", alpaca)
    assert r.status is Status.WARN and "only 2 of 12 tickers" in r.outcome.message
    assert run(sbot, "FP-2.4", alpaca, when=CLOSED).status is Status.SKIPPED
    sbot.write_cache()
    assert run(sbot, "FP-2.4", alpaca).status is Status.OK
    sbot.run_error("enrichment failed for greeks endpoint", at=OPEN.timestamp() + 30)
    r = run(sbot, "FP-2.4", alpaca, when=at(30))
    assert r.status is Status.WARN and "enrichment errors" in r.outcome.message


# --- FP-2.5 ----------------------------------------------------------------------------------
def test_regime_input_missing_or_stale(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    data = json.loads(sbot.p("data/uw_flow_cache.json").read_text())
    del data["_market_tide"]
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.5", alpaca)
    assert r.status is Status.WARN and "no _market_tide" in r.outcome.message
    data["_market_tide"] = {"data": []}
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    assert "no data points" in run(sbot, "FP-2.5", alpaca).outcome.message
    data["_market_tide"] = {"data": [{"net_call_premium": "1", "timestamp": iso(OPEN.timestamp() - 7200)}]}
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.5", alpaca)
    assert r.status is Status.WARN and "2.0 h old" in r.outcome.message
    assert run(sbot, "FP-2.5", alpaca, when=CLOSED).status is Status.SKIPPED
    sbot.write_cache()
    assert run(sbot, "FP-2.5", alpaca).status is Status.OK


def real_tide(fetched_at: float) -> dict:
    """``_market_tide`` as the real daemon writes it (realbot daemon/ cache, shifted in time): one
    tide point under ``data`` (a dict, not a list), five minutes older than the fetch."""
    return {"data": {"date": "2026-11-24", "net_call_premium": "660338.0000", "net_put_premium": "-547564.0000",
                     "net_volume": 23558,
                     "timestamp": datetime.fromtimestamp(fetched_at - 300, NY).isoformat()},
            "last_update": int(fetched_at)}


def test_regime_from_the_real_tide_shape(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """The real daemon stores one tide point as a dict and polls it at most every 600 s, so the
    tide lags ``_metadata.last_update``: a healthy bot is OK, a rate-limited block is no data."""
    t = OPEN.timestamp()
    data = json.loads(sbot.p("data/uw_flow_cache.json").read_text())
    data["_market_tide"] = real_tide(t - 435)  # the recording's lag behind _metadata.last_update
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.5", alpaca)
    assert r.status is Status.OK, r.outcome.message
    assert r.outcome.details["tide_points"] == 1 and "1 point" in r.outcome.message
    assert observed(r, "trading_market_tide_timestamp_seconds") == {(): t - 435}
    # one missed 600 s poll on top of that lag is still a healthy daemon
    data["_market_tide"] = real_tide(t - 1500)
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    assert run(sbot, "FP-2.5", alpaca).status is Status.OK
    # a tide point an hour old is stale input to the regime
    data["_market_tide"] = real_tide(t - 3600)
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.5", alpaca)
    assert r.status is Status.WARN and "60 min old" in r.outcome.message, r.outcome.message
    # after a 429 a block reads {"data": [], "_rate_limited": true}: no data, whatever its stamp
    for empty in ({"data": [], "_rate_limited": True}, {"data": {}, "last_update": int(t)}):
        data["_market_tide"] = empty
        write_json(sbot.p("data/uw_flow_cache.json"), data)
        r = run(sbot, "FP-2.5", alpaca)
        assert r.status is Status.WARN and "no data points" in r.outcome.message, empty
    # other bots keep a list of points: still read
    data["_market_tide"] = {"data": [real_tide(t - 60)["data"], real_tide(t - 360)["data"]], "last_update": t - 60}
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.5", alpaca)
    assert r.status is Status.OK and r.outcome.details["tide_points"] == 2, r.outcome.message


def test_yesterdays_tide_just_after_the_open(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """The daemon polls the tide only from 09:30 ET: in the first minutes of the session the
    cache still holds the previous session's point, which is not a stale regime yet."""
    data = json.loads(sbot.p("data/uw_flow_cache.json").read_text())
    opened = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
    data["_market_tide"] = real_tide((opened - timedelta(hours=17, minutes=35)).timestamp())  # 15:55 ET
    write_json(sbot.p("data/uw_flow_cache.json"), data)
    r = run(sbot, "FP-2.5", alpaca, when=opened + timedelta(minutes=10))
    assert r.status is Status.OK and "before the open" in r.outcome.message, r.outcome.message
    r = run(sbot, "FP-2.5", alpaca, when=opened + timedelta(minutes=45))
    assert r.status is Status.WARN and "old" in r.outcome.message, r.outcome.message


# --- FP-2.1 / FP-2.6 on a fresh install -------------------------------------------------------
def test_fresh_install_trades_on_default_weights(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """main.py runs without state/signal_weights.json: the optimizer's _load_state falls back to
    built-in default weights and only save_state (after the first learning update) writes the
    file. Its absence is the normal state of a fresh install, not a fault and not a failed save."""
    sbot.p("state/signal_weights.json").unlink()
    rep = evaluate(sbot.path, only=["FP-2.1", "FP-2.6"], clock=market_at(alpaca, OPEN)).results
    r = rep["FP-2.1"]
    assert r.status is Status.OK, r.outcome.message
    assert "built-in default weights" in r.outcome.message and r.outcome.details["source"] == "defaults"
    assert observed(r, "trading_weights_components") == {(): len(ENTRY_COMPONENTS)}
    r = rep["FP-2.6"]
    assert r.status is Status.SKIPPED and "not saved yet" in r.outcome.message, r.outcome.message
    assert run(sbot, "FP-2.6", alpaca).status is Status.SKIPPED  # alone too: nothing failed to save
    # a file that exists but is torn or not an object is still an error: the learned weights are lost
    sbot.torn("state/signal_weights.json")
    assert run(sbot, "FP-2.1", alpaca).status is Status.ERROR
    write_json(sbot.p("state/signal_weights.json"), [])
    r = run(sbot, "FP-2.1", alpaca)
    assert r.status is Status.ERROR and "not a JSON object" in r.outcome.message
    sbot.write_weights()
    r = run(sbot, "FP-2.1", alpaca)
    assert r.status is Status.OK and r.outcome.details["source"] == "file"


# --- FP-2.6 ----------------------------------------------------------------------------------
def test_weights_not_saved_for_too_long(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    data = json.loads(sbot.p("state/signal_weights.json").read_text())
    data["saved_at"] = OPEN.timestamp() - 5 * 86400
    write_json(sbot.p("state/signal_weights.json"), data)
    r = run(sbot, "FP-2.6", alpaca)
    assert r.status is Status.WARN and "not saved for 5.0 days" in r.outcome.message
    del data["saved_at"]
    write_json(sbot.p("state/signal_weights.json"), data)
    assert "no numeric saved_at" in run(sbot, "FP-2.6", alpaca).outcome.message
    sbot.write_weights()
    assert run(sbot, "FP-2.6", alpaca).status is Status.OK
    # FP-2.1 owns a file that stays broken; FP-2.6 is skipped then
    sbot.torn("state/signal_weights.json")
    rep = evaluate(sbot.path, only=["FP-2.1", "FP-2.6"], clock=market_at(alpaca, OPEN)).results
    assert rep["FP-2.1"].status is Status.ERROR and rep["FP-2.6"].status is Status.SKIPPED


def test_weights_file_gone_when_run_alone(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """Without FP-2.1 beside it (`check --only FP-2.6`), FP-2.6 reports the broken file itself; a file
    that was never written is no failed save (the bot trades on default weights until then)."""
    sbot.p("state/signal_weights.json").unlink()
    r = run(sbot, "FP-2.6", alpaca)
    assert r.status is Status.SKIPPED and r.outcome.message.startswith("signal_weights.json not saved yet")
    sbot.torn("state/signal_weights.json")
    r = run(sbot, "FP-2.6", alpaca, config=None)
    assert r.status is Status.ERROR and "is not valid JSON" in r.outcome.message and "(see FP-2.1)" in r.outcome.message
    sbot.write_weights()
    r = run(sbot, "FP-2.6", alpaca)
    assert r.status is Status.OK and r.outcome.message == "saved 0 s ago", r.outcome.message


def test_torn_weight_writes_are_counted(sbot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("checks:\n  FP-2.6: {params: {torn_warn_count: 2, retry_delay_seconds: 0.1}}\n")
    clock_at = [OPEN.timestamp()]
    market_at(alpaca, OPEN)
    ctx = Context(load_config(str(cfg), str(sbot.path)), environ={}, clock=lambda: clock_at[0])
    eng = Engine(ctx, registry())
    path = sbot.p("state/signal_weights.json")

    def torn_write() -> None:
        good = path.read_text()
        path.write_text(good[: len(good) // 2])  # the bot is mid-write...
        fixer = threading.Timer(0.05, lambda: path.write_text(good))  # ...and finishes
        fixer.start()
        try:
            r = eng.run(["FP-2.6"])["FP-2.6"]
        finally:
            fixer.join()
        assert r.status is not Status.ERROR, r.outcome.message

    torn_write()
    assert eng.run(["FP-2.6"])["FP-2.6"].outcome.details["torn_reads"] == 1
    sbot.write_weights()
    torn_write()
    r = eng.run(["FP-2.6"])["FP-2.6"]
    assert r.status is Status.WARN and "2 torn reads" in r.outcome.message
    clock_at[0] += 3700  # an hour without torn reads: recovered
    assert eng.run(["FP-2.6"])["FP-2.6"].status is Status.OK


# --- FP-2.7 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, expected, text", [
    ('{"default": 2.7, "symbols": {"NVDA": ', Status.ERROR, "not valid JSON"),
    ("[2.7, 3.0]", Status.ERROR, "not a JSON object"),
    ('{"default": 2.7, "symbols": {"NVDA": NaN}}', Status.ERROR, "symbols.NVDA is not finite"),
    ('{"default": 2.7, "symbols": {"NVDA": 45}}', Status.WARN, "symbols.NVDA = 45 outside [0, 10]"),
    ('{"updated_at": "2026-11-24"}', Status.WARN, "no numeric threshold"),
])
def test_threshold_file_invalid(sbot: BotRoot, alpaca: FakeAlpaca, content: str, expected: Status, text: str) -> None:
    sbot.p("state/uw_thresholds_hierarchical.json").write_text(content)
    r = run(sbot, "FP-2.7", alpaca)
    assert r.status is expected and text in r.outcome.message, r.outcome.message
    sbot.thresholds({"default": 2.7, "symbols": {"NVDA": 2.9, "TSLA": 3.1}, "source": "learner"})
    r = run(sbot, "FP-2.7", alpaca)
    assert r.status is Status.OK and r.outcome.details["thresholds"] == 3
    sbot.p("state/uw_thresholds_hierarchical.json").unlink()
    r = run(sbot, "FP-2.7", alpaca)
    assert r.status is Status.OK and "ENTRY_THRESHOLD_BASE" in r.outcome.message


def test_rate_limited_and_zeroed_blocks_are_not_enrichment(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """After UW 429s the real daemon leaves `{"data": [], "_rate_limited": true}` blocks and a dark
    pool zeroed to print_count 0, all with a fresh last_update; the flow summary and the tide copy
    every ticker carries are not intel either."""
    cache = json.loads(sbot.p("data/uw_flow_cache.json").read_text())
    now = int(OPEN.timestamp())
    for sym in [k for k in cache if not k.startswith("_")]:
        entry = {k: v for k, v in cache[sym].items() if not isinstance(v, dict)}
        entry.update(flow={"sentiment": "BULLISH", "total_premium": 1e6, "last_update": now},
                     market_tide={"date": "2026-11-24", "net_call_premium": "1"},
                     dark_pool={"sentiment": "NEUTRAL", "total_premium": 0, "print_count": 0, "last_update": now},
                     etf_flow={"data": [], "_rate_limited": True}, calendar={})
        cache[sym] = entry
    sbot.p("data/uw_flow_cache.json").write_text(json.dumps(cache))
    r = evaluate(sbot.path, only=["FP-2.4"], clock=market_at(alpaca, OPEN)).results["FP-2.4"]
    assert r.status is Status.WARN and r.outcome.details["tickers_enriched"] == 0, r.outcome.message
    cache[sym]["greeks"] = {"gamma": 0.12, "last_update": now}  # one real block on one ticker
    sbot.p("data/uw_flow_cache.json").write_text(json.dumps(cache))
    r = evaluate(sbot.path, only=["FP-2.4"], clock=market_at(alpaca, OPEN)).results["FP-2.4"]
    assert r.outcome.details["tickers_enriched"] == 1
