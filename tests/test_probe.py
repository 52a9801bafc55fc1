"""The signal-injection probe on real bot roots against the loopback broker (issue #8)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.factories import make_asset, make_position

from .conftest import run_cli


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and directory under the bot root: content hash, size and mtime (ns)."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = (digest, st.st_size, st.st_mtime_ns)
    return out


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def market_open(alpaca: FakeAlpaca) -> None:
    now = time.time()
    alpaca.clock = {"is_open": True, "next_close": iso(now + 3 * 3600), "next_open": iso(now + 86400)}


def probe(bot: BotRoot, *extra: str) -> tuple[int, dict[str, Any]]:
    before = snapshot(bot.path)
    r = run_cli("--bot-root", str(bot.path), "probe", "--json", *extra)
    assert r.stdout, r.stderr
    assert snapshot(bot.path) == before, "the probe changed the bot root"
    return r.returncode, json.loads(r.stdout)


def stage(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["stages"] if s["stage"] == name)


def test_healthy_probe_reaches_execution_and_never_submits(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    market_open(alpaca)
    code, data = probe(bot)
    assert code == 0, data
    assert data["outcome"] == "execute" and data["would_execute"] is True
    assert [s["status"] for s in data["stages"]] == ["passed"] * 6
    assert stage(data, "threshold")["details"]["threshold"] == 2.7  # SPY: the file's default
    execution = stage(data, "execution")
    assert execution["details"]["order"]["symbol"] == "SPY"
    assert execution["details"]["submitted"] is False
    assert alpaca.submitted_orders == []
    assert alpaca.request_count("/v2/assets/SPY") >= 1 and alpaca.request_count("/v2/account") >= 1
    # the human output names every stage
    r = run_cli("--bot-root", str(bot.path), "probe")
    assert r.returncode == 0
    for name in ("cache_read", "cluster", "score", "threshold", "gates", "execution"):
        assert name in r.stdout
    assert "would execute" in r.stdout


def test_a_fresh_install_is_scored_with_the_default_weights(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    """Without state/signal_weights.json main.py scores with its built-in default weights."""
    market_open(alpaca)
    bot.p("state/signal_weights.json").unlink()
    code, data = probe(bot)
    assert code == 0, data
    score = stage(data, "score")
    assert score["status"] == "passed" and "built-in default weights" in score["reason"], score


def _freeze(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.freeze("max_drawdown_exceeded", reason="drawdown 8%")


def _kill(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.kill_switch(True)


def _safe_mode(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.safe_mode()


def _max_positions(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.set_env(MAX_CONCURRENT_POSITIONS="2")  # the fake broker holds AAPL and NVDA


def _threshold(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.thresholds({"default": 2.7, "symbols": {"SPY": 4.5}})


def _self_healing(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.thresholds({"default": 3.6})
    bot.self_healing(adjustment=0.5, activated_at=time.time() - 600)


def _min_exec(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.set_env(MIN_EXEC_SCORE="4.2")


def _self_healing_min_exec(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    # entry threshold 2.7 + 0.5 = 3.2 passes the score 4; the execution floor 3.6 + 0.5 does not
    bot.set_env(MIN_EXEC_SCORE="3.6")
    bot.self_healing(adjustment=0.5, activated_at=time.time() - 600)


def _entry_threshold_base(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    # no per-symbol file: the bot falls back to ENTRY_THRESHOLD_BASE
    bot.p("state/uw_thresholds_hierarchical.json").unlink()
    bot.set_env(ENTRY_THRESHOLD_BASE="4.4")


def _cooldown_order(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    from sandbox.factories import make_order

    alpaca.orders = [*alpaca.orders, make_order("SPY", 1, "buy", status="filled",
                                                submitted_at=datetime.now(UTC))]


def _cooldown_blocked(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.block("symbol_on_cooldown", at=time.time() - 120, symbol="SPY", score=3.1)


def _closed(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    # an evening: the next open is further away than the pre-market window (market.premarket_seconds)
    now = time.time()
    alpaca.clock = {"is_open": False, "next_open": iso(now + 5 * 3600), "next_close": iso(now + 11 * 3600)}


def _buying_power(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    alpaca.account = {**alpaca.account, "buying_power": "250.00"}


def _untradable(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    alpaca.assets = {**alpaca.assets, "SPY": make_asset("SPY", tradable=False)}


def _unknown_asset(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    alpaca.assets = {k: v for k, v in alpaca.assets.items() if k != "SPY"}


def _weights(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.torn("state/signal_weights.json")


def _no_cache(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.p("data/uw_flow_cache.json").unlink()


REFUSALS = [
    (_freeze, "gates", "freeze max_drawdown_exceeded (drawdown 8%)"),
    (_kill, "gates", "kill switch enabled"),
    (_safe_mode, "gates", "safe mode flag present"),
    (_max_positions, "gates", "max_positions_reached: 2 open positions, MAX_CONCURRENT_POSITIONS=2"),
    (_threshold, "threshold", "score 4 below the threshold in force 4.5"),
    (_self_healing, "threshold", "threshold in force 4.1"),
    (_min_exec, "gates", "score_below_min: score 4 < MIN_EXEC_SCORE 4.2"),
    (_self_healing_min_exec, "gates",
     "score_below_min: score 4 < MIN_EXEC_SCORE 3.6 + active self-healing adjustment 0.5 = 4.1"),
    (_entry_threshold_base, "threshold", "score 4 below the threshold in force 4.4 (ENTRY_THRESHOLD_BASE 4.4)"),
    (_cooldown_order, "gates", "symbol_on_cooldown: 1 SPY order(s) in the last 15 min"),
    (_cooldown_blocked, "gates", "symbol_on_cooldown: the bot logged SPY on cooldown"),
    (_closed, "execution", "market_closed"),
    (_buying_power, "execution", "insufficient buying power: 250.0 < notional 1000.00"),
    (_untradable, "execution", "asset SPY is not tradable"),
    (_unknown_asset, "execution", "asset SPY unknown to the broker"),
    (_weights, "score", "adaptive weights"),
    (_no_cache, "cache_read", "the bot cannot read its UW cache"),
]


@pytest.mark.parametrize(("breaker", "where", "why"), REFUSALS, ids=[b.__name__.strip("_") for b, _, _ in REFUSALS])
def test_each_gate_blocks_at_its_stage_with_its_reason(bot: BotRoot, alpaca: FakeAlpaca, breaker: Any,
                                                       where: str, why: str) -> None:
    market_open(alpaca)
    breaker(bot, alpaca)
    code, data = probe(bot)
    assert code == 2, data
    assert data["outcome"] == "blocked"
    assert data["blocked_stage"] == where
    assert why in data["blocked_reason"]
    statuses = [s["status"] for s in data["stages"]]
    i = statuses.index("blocked")
    assert statuses[:i] == ["passed"] * i and statuses[i + 1:] == ["not_reached"] * (5 - i)
    assert alpaca.submitted_orders == []


@pytest.mark.parametrize(("thresholds", "env", "threshold", "source"), [
    (None, {"ENTRY_THRESHOLD_BASE": "3.1"}, 3.1, "ENTRY_THRESHOLD_BASE"),
    (None, {"ENTRY_THRESHOLD_BASE": ""}, 2.7, "built-in 2.7"),
    ({"symbols": {"NVDA": 3.9}}, {"ENTRY_THRESHOLD_BASE": "3.3"}, 3.3, "ENTRY_THRESHOLD_BASE"),
    ({"default": 2.9, "symbols": {"SPY": 3.4}}, {"ENTRY_THRESHOLD_BASE": "2.0"}, 3.4,
     "state/uw_thresholds_hierarchical.json for SPY"),
])
def test_threshold_in_force_follows_the_bots_fallbacks(bot: BotRoot, alpaca: FakeAlpaca, thresholds: Any,
                                                       env: dict[str, str], threshold: float, source: str) -> None:
    """Per-symbol file, then its default, then ENTRY_THRESHOLD_BASE, then 2.7 -- as the bot reads them."""
    market_open(alpaca)
    if thresholds is None:
        bot.p("state/uw_thresholds_hierarchical.json").unlink()
    else:
        bot.thresholds(thresholds)
    if env:
        bot.set_env(**env)
    code, data = probe(bot)
    assert code == 0, data
    details = stage(data, "threshold")["details"]
    assert (details["threshold"], details["source"]) == (threshold, source)


def test_shortly_before_the_open_the_order_is_validated_for_the_open(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    """A pre-market verification asks "will it trade at the open?", not "is it open now?"."""
    now = time.time()
    # 20 min 20 s ahead: the reason rounds to whole minutes, so "in 20 min" holds however slow the probe runs
    # up to 50 s (a loaded machine must not turn it into "in 19 min")
    alpaca.clock = {"is_open": False, "next_open": iso(now + 20 * 60 + 20), "next_close": iso(now + 7 * 3600)}
    code, data = probe(bot)
    assert code == 0, data
    execution = stage(data, "execution")
    assert execution["details"]["at_open"] is True and execution["details"]["submitted"] is False
    assert "validated for the open" in execution["reason"] and "in 20 min" in execution["reason"]
    assert alpaca.submitted_orders == []
    # the broker still refuses what it would refuse at the open
    alpaca.account = {**alpaca.account, "buying_power": "250.00"}
    code, data = probe(bot)
    assert code == 2 and "insufficient buying power" in data["blocked_reason"]


def test_blocked_text_output_names_stage_and_reason(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    market_open(alpaca)
    bot.kill_switch(True)
    r = run_cli("--bot-root", str(bot.path), "probe")
    assert r.returncode == 2
    assert "blocked at gates: kill_switch: kill switch enabled" in r.stdout


def test_positions_below_cap_pass(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    market_open(alpaca)
    bot.set_env(MAX_CONCURRENT_POSITIONS="3")
    code, data = probe(bot)
    assert code == 0, data
    assert stage(data, "gates")["details"]["open_positions"] == 2
    alpaca.positions = [*alpaca.positions, make_position("MSFT", 3, 500.0)]
    code, data = probe(bot)
    assert code == 2 and data["blocked_stage"] == "gates"


def test_unreachable_broker_is_an_error_not_a_block(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    bot.set_env(ALPACA_BASE_URL="http://127.0.0.1:9")  # nothing listens on the discard port
    code, data = probe(bot)
    assert code == 3, data
    assert data["outcome"] == "error"
    assert "broker unreachable" in data["blocked_reason"]
    assert "SECRETTEST" not in json.dumps(data)


def test_config_errors_exit_3_with_one_line(bot: BotRoot, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("probe:\n  notional: -5\n")
    r = run_cli("--config", str(cfg), "--bot-root", str(bot.path), "probe")
    assert r.returncode == 3
    assert "probe.notional" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text("probe:\n  adapter: no_such_module:Thing\n")
    r = run_cli("--config", str(cfg), "--bot-root", str(bot.path), "probe", "--json")
    assert r.returncode == 3
    assert "cannot import no_such_module" in json.loads(r.stdout)["error"]


ADAPTER = '''
from exporter.tools.pipeline import StageResult

class MyBot:
    def cache_read(self, ctx, s): return StageResult.passed("cache_read", "mine")
    def cluster(self, ctx, s): return StageResult.passed("cluster", "mine")
    def score(self, ctx, s): return StageResult.passed("score", f"scored {s.score}")
    def threshold(self, ctx, s):
        if s.score < 9:
            return StageResult.blocked("threshold", f"custom threshold 9 above {s.score}")
        return StageResult.passed("threshold", "ok")
    def gates(self, ctx, s): raise RuntimeError("gate exploded")
    def execution(self, ctx, s): return StageResult.passed("execution", "mine")
'''


def test_configured_adapter_runs_the_bots_own_stages(bot: BotRoot, tmp_path: Path) -> None:
    (tmp_path / "mybot_adapter.py").write_text(ADAPTER)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("probe:\n  adapter: mybot_adapter:MyBot\n  symbol: NVDA\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = run_cli("--config", str(cfg), "--bot-root", str(bot.path), "probe", "--json", env=env)
    data = json.loads(r.stdout)
    assert r.returncode == 2 and data["blocked_stage"] == "threshold"
    assert data["blocked_reason"] == "custom threshold 9 above 4.0"
    cfg.write_text("probe:\n  adapter: mybot_adapter:MyBot\n  score: 9.5\n")
    r = run_cli("--config", str(cfg), "--bot-root", str(bot.path), "probe", "--json", env=env)
    data = json.loads(r.stdout)
    assert r.returncode == 3 and data["blocked_stage"] == "gates"
    assert "RuntimeError: gate exploded" in data["blocked_reason"]
