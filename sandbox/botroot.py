"""Writes a realistic stock-bot root (BOT.md layout) for tests, the sandbox and benchmarks.

``BotRoot.healthy()`` produces a root on which every check is OK (given running processes and
loopback servers); the ``break_*``/setter methods reproduce each way BOT.md says it can fail.
Files are written in the shapes stock-bot writes them (the recorded files of the bot's README):
the cache's ``_market_tide`` is one point under ``data``, ``data/uw_api_quota.jsonl`` holds an
attempt line and a sent line per call, ``state/uw_usage_state.json`` counts the calls sent,
``logs/orders.jsonl`` and ``state/execution_failures.jsonl`` hold the bot's order outcomes.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.bot.weights import ENTRY_COMPONENTS

from . import layout

EXIT_COMPONENTS = ("time_decay", "profit_target", "stop_loss", "flow_reversal", "regime_shift",
                   "trailing", "volatility")
TICKERS = ("NVDA", "AAPL", "TSLA", "AMD", "MSFT", "META", "AMZN", "GOOGL", "SPY", "QQQ", "NFLX", "AVGO")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def iso_bot(ts: float) -> str:
    """main.py's ISO stamps (run, orders, execution failures): ``...+00:00``."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def dt_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


UW_BASE = "https://api.unusualwhales.com"


def tide_point(now: float) -> dict[str, Any]:
    """One market-tide point as UW sends it (the daemon keeps the first of UW's list)."""
    return {"date": datetime.fromtimestamp(now, UTC).date().isoformat(), "net_call_premium": "1200000.0000",
            "net_put_premium": "-800000.0000", "net_volume": 23558, "timestamp": iso_bot(now - 300)}


def write_json(path: Path, data: Any, atomic: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not atomic:
        path.write_text(json.dumps(data))
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def ticker_entry(symbol: str, now: float, rng: random.Random, trades: int = 4) -> dict[str, Any]:
    flow = []
    for i in range(trades):
        premium = rng.randint(100_000, 2_000_000)
        flow.append({
            "ticker": symbol, "type": rng.choice(["call", "put"]), "total_premium": str(premium),
            "strike": str(rng.randint(50, 900)), "expiry": iso(now + 86400 * rng.randint(1, 7))[:10],
            "created_at": iso(now - 60 * i), "has_sweep": True, "volume": rng.randint(100, 5000),
            "open_interest": rng.randint(100, 20000), "underlying_price": str(rng.randint(50, 900)),
        })
    calls = sum(int(str(t["total_premium"])) for t in flow if t["type"] == "call")
    puts = sum(int(str(t["total_premium"])) for t in flow if t["type"] == "put")
    summary = {"sentiment": "BULLISH" if calls >= puts else "BEARISH", "conviction": round(rng.random(), 3),
               "total_premium": calls + puts, "call_premium": calls, "put_premium": puts,
               "net_premium": calls - puts, "trade_count": len(flow)}
    notional = float(rng.randint(10**6, 10**8))
    return {
        "market_tide": tide_point(now), "flow_trades": flow, **summary,
        "flow": {**summary, "last_update": int(now)}, "_last_update": int(now),
        "dark_pool": {"sentiment": summary["sentiment"], "total_premium": notional, "total_notional": notional,
                      "total_notional_1h": round(notional / 4, 2), "print_count": rng.randint(5, 100),
                      "last_update": int(now)},
        "greeks": {"gamma_exposure": rng.random()}, "insider": {},
    }


def weight_band(rng: random.Random) -> dict[str, Any]:
    lo, hi = 0.25, 2.5
    return {"min_weight": lo, "max_weight": hi, "neutral": 1.0, "current": round(rng.uniform(0.5, 2.0), 4),
            "sample_count": rng.randint(10, 500), "wins": rng.randint(0, 100), "losses": rng.randint(0, 100)}


class BotRoot:
    """A bot root on disk. Times default to now; pass ``now`` for a controlled clock."""

    def __init__(self, path: Path, now: float | None = None, seed: int = 7) -> None:
        self.path = Path(path)
        self.now = time.time() if now is None else now
        self.rng = random.Random(seed)
        for d in ("data", "state", "logs"):
            (self.path / d).mkdir(parents=True, exist_ok=True)

    def p(self, rel: str | Path) -> Path:
        return self.path / rel

    # --- the healthy layout ------------------------------------------------------------------
    def healthy(self, alpaca_url: str | None = None, uw_url: str | None = None,
                key: str = "PKTEST", secret: str = "SECRETTEST",  # noqa: S107 (sandbox credentials)
                uw_token: str = "uw-test-token",  # noqa: S107
                tickers: tuple[str, ...] = TICKERS) -> BotRoot:
        env = {"ALPACA_KEY": key, "ALPACA_SECRET": secret, "UW_API_KEY": uw_token, "TRADING_MODE": "PAPER",
               "MAX_CONCURRENT_POSITIONS": "16", "MAX_NEW_POSITIONS_PER_CYCLE": "6", "MIN_EXEC_SCORE": "2.0",
               "ENTRY_THRESHOLD_BASE": "2.7", "COOLDOWN_MINUTES_PER_TICKER": "15", "UW_DAILY_LIMIT": "50000"}
        if alpaca_url:
            env["ALPACA_BASE_URL"] = alpaca_url
        if uw_url:
            env["UW_BASE_URL"] = uw_url
        self.write_env(env)
        self.write_cache(tickers)
        self.write_weights()
        write_json(self.p(layout.GOVERNOR_FREEZES), {"performance_freeze": False,
                                                           "performance_freeze_reason": ""})
        write_json(self.p(layout.KILL_SWITCH), {"enabled": False})
        write_json(self.p(layout.SELF_HEALING_THRESHOLD),
                   {"adjustment": 0.0, "activated_at": None, "consecutive_losses": 0})
        write_json(self.p(layout.THRESHOLDS), {"default": 2.7, "symbols": {"NVDA": 2.9}})
        self.heartbeat()
        write_json(self.p(layout.SUPERVISOR_HEALTH), {
            "overall_status": "OK", "services": {"trading-bot": "OK", "uw-daemon": "OK"},
            "timestamp": iso(self.now), "details": {}})
        self.run_cycles(5)
        self.daemon_cycles(5)
        self.uw_calls(20, every=30.0)
        self.order(at=self.now - 90)
        append_jsonl(self.p(layout.BLOCKED_TRADES), [
            {"timestamp": iso(self.now - 120), "symbol": "AMD", "reason": "score_below_min", "score": 1.4}])
        for script in ("main.py", "uw_flow_daemon.py", "deploy_supervisor.py"):
            self.p(script).write_text("# stock-bot placeholder\n")
        return self

    def write_env(self, env: dict[str, str]) -> None:
        self.p(".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    def set_env(self, **changes: str | None) -> None:
        def name(line: str) -> str:
            return line.split("=", 1)[0].strip().removeprefix("export ").strip()

        lines = [ln for ln in self.p(".env").read_text().splitlines() if name(ln) not in changes]
        lines += [f"{k}={v}" for k, v in changes.items() if v is not None]
        self.p(".env").write_text("\n".join(lines) + "\n")

    def write_cache(self, tickers: tuple[str, ...] = TICKERS, last_update: float | None = None,
                    trades: int = 4, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {t: ticker_entry(t, self.now, self.rng, trades) for t in tickers}
        data["_metadata"] = {"last_update": self.now if last_update is None else last_update,
                             "updated_by": "uw_flow_daemon", "ticker_count": len(tickers)}
        data["_market_tide"] = {"data": tide_point(self.now), "last_update": int(self.now)}
        data["_top_net_impact"] = {"data": [{"ticker": t, "net_premium": "1000000.0"} for t in tickers[:5]],
                                   "last_update": int(self.now)}
        if extra:
            data.update(extra)
        write_json(self.p(layout.UW_CACHE), data)
        return data

    def write_weights(self, bands: dict[str, Any] | None = None) -> dict[str, Any]:
        entry = bands if bands is not None else {c: weight_band(self.rng) for c in ENTRY_COMPONENTS}
        data = {
            "entry_weights": {"weight_bands": entry, "base_weights": {c: 1.0 for c in ENTRY_COMPONENTS}},
            "exit_model": {"weight_bands": {c: weight_band(self.rng) for c in EXIT_COMPONENTS}},
            "learner": {"updates": 42, "last_trade_id": "t-1"},
            "saved_at": self.now,
        }
        write_json(self.p(layout.WEIGHTS), data)
        return data

    def heartbeat(self, ts: float | None = None, iter_count: int = 100) -> None:
        write_json(self.p(layout.HEARTBEAT),
                   {"last_heartbeat_ts": self.now if ts is None else ts, "iter_count": iter_count, "running": True})

    def run_cycles(self, n: int, clusters: int = 3, orders: int = 1, every: float = 60.0,
                   end: float | None = None, **extra: Any) -> None:
        end = self.now if end is None else end
        lines: list[dict[str, Any]] = []
        for i in range(n - 1, -1, -1):
            t = end - every * i
            if orders:  # main.py's decision lines: event_type, no msg or _ts
                lines.append({"ts": iso_bot(t - 1), "event_type": "trade_intent", "symbol": "NVDA", "side": "buy",
                              "score": 3.1, "strategy_id": "equity"})
            lines.append({"ts": iso(t), "_ts": t, "msg": "complete", "clusters": clusters, "orders": orders,
                          "market_open": True, "engine_status": "ok", "errors_this_cycle": [],
                          "strategy_id": "equity", **extra})
        append_jsonl(self.p(layout.RUN_LOG), lines)

    def daemon_cycles(self, n: int, every: float = 300.0, end: float | None = None, start_cycle: int = 1) -> None:
        end = self.now if end is None else end
        append_jsonl(self.p(layout.DAEMON_LOG), [
            {"event": "uw_flow_cycle", "cycle": start_cycle + k,
             "timestamp": iso_bot(end - every * (n - 1 - k)), "ts": int(end - every * (n - 1 - k)),
             "source": "uw_flow_daemon", "_ts": int(end - every * (n - 1 - k)),
             "_dt": dt_text(end - every * (n - 1 - k))} for k in range(n)])

    # --- the bot's UW client and order logs, as stock-bot writes them -------------------------
    def uw_calls(self, n: int, end: float | None = None, every: float = 1.0, blocked: int = 0,
                 path: str = "/api/option-trades/flow-alerts") -> None:
        """``n`` UW calls sent by the daemon ending at ``end``: an attempt line and a sent line each
        in data/uw_api_quota.jsonl, plus ``blocked`` attempts its limiter refused (attempt line
        only); state/uw_usage_state.json counts the calls sent today (UTC)."""
        end = self.now if end is None else end
        lines: list[dict[str, Any]] = []
        url = UW_BASE + path
        for k in range(n):
            t = int(end - every * (n - 1 - k))
            lines.append({"ts": t, "url": url, "params": {}, "source": "uw_flow_daemon"})
            lines.append({"ts": t, "url": url, "params": {}, "source": "src/uw/uw_client", "endpoint_name": "default"})
        lines += [{"ts": int(end), "url": url, "params": {}, "source": "uw_flow_daemon"}] * blocked
        append_jsonl(self.p(layout.QUOTA_LOG), lines)
        self.uw_usage(self.uw_usage_count() + n, at=end)

    def uw_usage_count(self) -> int:
        try:
            data = json.loads(self.p(layout.UW_USAGE_STATE).read_text())
            return int(data["calls_today"]) if data.get("date") == datetime.fromtimestamp(
                self.now, UTC).date().isoformat() else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def uw_usage(self, calls_today: int, at: float | None = None, day: str | None = None,
                 by_endpoint: dict[str, int] | None = None) -> None:
        """state/uw_usage_state.json: ``date`` is the UTC day of ``at`` unless ``day`` is given."""
        at = self.now if at is None else at
        write_json(self.p(layout.UW_USAGE_STATE), {
            "by_endpoint": by_endpoint if by_endpoint is not None else {"default": calls_today},
            "calls_today": calls_today,
            "date": day or datetime.fromtimestamp(at, UTC).date().isoformat(),
            "minute_window": [at - 0.5 * k for k in range(min(calls_today, 5))][::-1]})

    def uw_api_error(self, http_status: int = 429, kind: str = "rate_limit", at: float | None = None,
                     path: str = "/api/option-trades/flow-alerts", body: Any = None,
                     params: dict[str, Any] | None = None) -> None:
        """One line of reports/uw_health/uw_api_errors.jsonl (``kind`` is ``uw_api_error_type``)."""
        at = self.now if at is None else at
        if body is None:
            body = {"message": "Too Many Requests"} if http_status == 429 else {"data": []}
        append_jsonl(self.p(layout.UW_ERRORS_LOG), [{
            "ts": float(at), "http_status": http_status, "endpoint": UW_BASE + path,
            "response_body_truncated": json.dumps(body)[:2000], "request_params": params or {},
            "uw_api_error_type": kind, "caller": f"{self.path}/uw_flow_daemon.py:339:_get"}])

    def order(self, symbol: str = "NVDA", side: str = "buy", at: float | None = None,
              action: str = "submit_limit_filled", **extra: Any) -> None:
        """A logs/orders.jsonl line for an order that went through."""
        at = self.now if at is None else at
        append_jsonl(self.p(layout.ORDERS_LOG), [{
            "ts": iso_bot(at), "type": "order", "action": action, "symbol": symbol, "side": side,
            "limit_price": 100.0, "filled_price": 100.0, "attempt": 1, "strategy_id": "equity", **extra}])

    def order_failure(self, symbol: str = "AAPL", action: str = "scale_out_failed", at: float | None = None,
                      error: str = "orders refused by test server", **extra: Any) -> None:
        """A refused submission, as main.py logs it: a logs/orders.jsonl line with ``error`` and a
        state/execution_failures.jsonl line with ``details.error``."""
        at = self.now if at is None else at
        fields = {"fraction": 0.5} if action == "scale_out_failed" else {"side": "buy"}
        fields.update(extra)
        append_jsonl(self.p(layout.ORDERS_LOG), [{
            "ts": iso_bot(at), "type": "order", "action": action, "symbol": symbol, **fields, "error": error,
            "strategy_id": "equity"}])
        append_jsonl(self.p(layout.EXECUTION_FAILURES), [{
            "timestamp": iso_bot(at), "symbol": symbol, "failure_type": action,
            "details": {**fields, "error": error}}])

    # --- writers for the log-based points (quota, funnel, gates, stage errors) ----------------
    def cycles_with_blocks(self, n: int, blocked: dict[str, int] | None = None, clusters: int = 3,
                           orders: int = 0, every: float = 60.0, end: float | None = None,
                           score: float | None = 1.5, **extra: Any) -> None:
        """``n`` cycles ending at ``end``; before each "complete" line, ``blocked`` reason -> count
        lines in state/blocked_trades.jsonl, as main.py writes them during the cycle."""
        end = self.now if end is None else end
        runs: list[dict[str, Any]] = []
        blocks: list[dict[str, Any]] = []
        for i in range(n - 1, -1, -1):
            t = end - every * i
            k = 0
            for reason, count in (blocked or {}).items():
                for _ in range(count):
                    k += 1
                    sym = TICKERS[(i + k) % len(TICKERS)]
                    blocks.append({"timestamp": iso(t - every / 2 + k * 0.01), "symbol": sym, "reason": reason,
                                   "score": score})
            runs.append({"ts": iso(t), "_ts": t, "msg": "complete", "clusters": clusters, "orders": orders, **extra})
        if blocks:
            append_jsonl(self.p(layout.BLOCKED_TRADES), blocks)
        append_jsonl(self.p(layout.RUN_LOG), runs)

    def block(self, reason: str, at: float | None = None, symbol: str = "AMD", score: Any = 1.4,
              **extra: Any) -> None:
        at = self.now if at is None else at
        append_jsonl(self.p(layout.BLOCKED_TRADES),
                     [{"timestamp": iso(at), "symbol": symbol, "reason": reason, "score": score, **extra}])

    def run_error(self, error: Any, at: float | None = None, msg: str = "cycle_error", **extra: Any) -> None:
        """A failed cycle as main.py logs it: no "complete" line, an ``error`` instead."""
        at = self.now if at is None else at
        append_jsonl(self.p(layout.RUN_LOG), [{"ts": iso(at), "_ts": at, "msg": msg, "error": error, **extra}])

    def quota_requests(self, n: int, end: float | None = None, every: float = 1.0, **extra: Any) -> None:
        """``n`` one-line UW requests in data/uw_api_quota.jsonl ending at ``end`` (``status=429`` for
        a 429): a shape of our own, not stock-bot's; ``uw_calls``, ``uw_usage`` and
        ``uw_api_error`` write what the bot writes."""
        end = self.now if end is None else end
        append_jsonl(self.p(layout.QUOTA_LOG), [
            {"ts": end - every * (n - 1 - k), "url": "/api/option-trades/flow-alerts", "source": "uw_flow_daemon",
             **extra} for k in range(n)])

    def self_healing(self, adjustment: float = 0.5, activated_at: float | None = None, losses: int = 3) -> None:
        write_json(self.p(layout.SELF_HEALING_THRESHOLD),
                   {"adjustment": adjustment, "activated_at": activated_at, "consecutive_losses": losses})

    def thresholds(self, data: Any) -> None:
        write_json(self.p(layout.THRESHOLDS), data)

    # --- the ways it fails -------------------------------------------------------------------
    def freeze(self, key: str = "max_drawdown_exceeded", as_object: bool = True, reason: str = "drawdown 8%") -> None:
        path = self.p(layout.GOVERNOR_FREEZES)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = {"active": True, "reason": reason, "timestamp": iso(self.now)} if as_object else True
        write_json(path, data)

    def safe_mode(self) -> None:
        self.p(layout.SAFE_MODE_FLAG).write_text("set by health monitor\n")

    def kill_switch(self, enabled: bool = True) -> None:
        write_json(self.p(layout.KILL_SWITCH), {"enabled": enabled})

    def torn(self, rel: str | Path) -> None:
        """Leave a half-written JSON file, as a non-atomic writer interrupted mid-write does."""
        path = self.p(rel)
        text = path.read_text() if path.exists() else '{"a": 1, "b": [1, 2, 3]}'
        path.write_text(text[: max(1, len(text) // 2)])
