"""A simulated stock-bot ``main.py``: a real process that reads the cache and decides like the bot.

Why: FP-1.7, FP-2.x, FP-3.x and FP-6.1 watch what ``main.py`` leaves behind -- its heartbeat,
``logs/run.jsonl`` and ``state/blocked_trades.jsonl`` -- and its side effect on the cache. This
process, run with the bot root as its working directory (through the ``main.py`` launcher the
sandbox writes), does one cycle every ``SANDBOX_BOT_INTERVAL`` seconds:

1. stamps ``state/bot_heartbeat.json``;
2. reads ``data/uw_flow_cache.json`` (re-reading a torn file once, like the bot);
3. clusters flow trades as BOT.md describes (premium >= 100k, expiry <= 7 days, same ticker and
   direction within 600 s, at least 3 sweeps) and scores them with the adaptive weights;
4. applies the gates: freeze, kill switch and safe mode first (``freeze_active``), then per new
   cluster market closed, max positions, cooldown, score below ``MIN_EXEC_SCORE`` and the
   per-cycle cap, logging each refusal to ``state/blocked_trades.jsonl``;
5. submits a market order to the broker for what passes (one ``logs/submit_order_called.jsonl``
   line per submission, and ``trade_intent``/``entry_decision_made`` decision lines with
   ``event_type`` and no ``msg`` in ``logs/run.jsonl``, as main.py mixes them in);
6. when the broker refuses a submission (an HTTP error such as 403
   ``{"code":40310000,"message":...}``), logs it as main.py does: a ``logs/orders.jsonl`` line
   (``type: "order"``, ``action`` ``market_fail`` for an entry or ``scale_out_failed``, ``error``
   = the broker's message, ISO ``ts``) and a ``state/execution_failures.jsonl`` line
   (``timestamp``, ``symbol``, ``failure_type``, ``details.error``); a refused entry is tried
   again next cycle;
7. re-writes the cache with re-stamped ``_last_update`` per ticker -- exactly the habit that makes
   a dead daemon look fresh by file mtime (BOT.md);
8. logs one ``complete`` line (or a ``cycle_error`` line) to ``logs/run.jsonl``; its ``orders``
   counts entry orders only.

It runs without ``state/signal_weights.json`` (built-in weights, like main.py on a fresh
install). Like main.py in PAPER mode it refuses to start unless the broker URL is the paper host
-- and, being a sandbox, unless it is a loopback address: it never talks to a remote broker.

A cluster is a candidate once (keyed by ticker, direction and its newest alert), so a quiet
market does not turn into a flood of cooldown refusals.

Fault flags in ``.sandbox/flags/`` (written by the sandbox): ``bot-no-clusters`` makes the flow
filter keep nothing (cycles complete with 0 clusters); ``bot-cluster-errors`` makes cluster
generation fail (a ``cycle_error`` line of stage ``clusters``, no ``complete`` line);
``bot-gate`` holds a block reason (``expectancy_blocked:<why>``, ``regime_gate``, ...) that
refuses every cluster of every cycle, logged as the real bot logs each refusal;
``bot-scale-out`` makes it scale half of every held position out each cycle (``action:
"scale_out"``, or ``scale_out_failed`` when the broker refuses), as main.py did on the recorded
root whose broker refused every order.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import requests

from exporter.bot.botenv import BotEnv

from . import layout
from .daemon import FLAGS, append, orphaned, write_atomic

CACHE = layout.UW_CACHE
HEARTBEAT = layout.HEARTBEAT
RUN_LOG = layout.RUN_LOG
BLOCKED = layout.BLOCKED_TRADES
WEIGHTS = layout.WEIGHTS
FREEZES = layout.GOVERNOR_FREEZES
SAFE_MODE = layout.SAFE_MODE_FLAG
KILL_SWITCH = layout.KILL_SWITCH
ORDERS_LOG = layout.ORDERS_LOG
EXECUTION_FAILURES = layout.EXECUTION_FAILURES
SUBMIT_LOG = layout.SUBMIT_ORDER_LOG
PAPER_HOST = "paper-api.alpaca.markets"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MIN_PREMIUM = 100_000.0
MAX_EXPIRY_DAYS = 7
CLUSTER_WINDOW = 600.0
MIN_SWEEPS = 3

_stopping = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stopping
    _stopping = True


def iso(ts: float) -> str:
    """main.py's ISO timestamps: ``2026-12-06T20:10:20.231287+00:00``."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


class BrokerRefused(RuntimeError):
    """The broker answered an HTTP error; ``message`` is its ``message`` field."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(message)
        self.what, self.status, self.message = what, status, message


def refuse_url(mode: str, url: str) -> str | None:
    """Why the bot will not start with this broker URL, or None."""
    host = (urlsplit(url).hostname or "").lower()
    if mode.upper() == "PAPER" and host != PAPER_HOST and host not in LOOPBACK:
        return f"TRADING_MODE=PAPER but the Alpaca base URL {url} is not the paper host: refusing to run"
    if host not in LOOPBACK:
        return f"the sandbox bot talks to a loopback broker only, not {host or url!r}: refusing to run"
    return None


def _ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def read_json(path: Path) -> Any:
    """Parse ``path``; a torn read (a writer mid-write) is retried once before it counts."""
    for attempt in range(2):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            if attempt:
                raise
            time.sleep(0.05)
    return None


def clusters_of(cache: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Same ticker and direction within CLUSTER_WINDOW, at least MIN_SWEEPS qualifying sweeps."""
    today = datetime.fromtimestamp(now, UTC).date()
    out: list[dict[str, Any]] = []
    for ticker, block in cache.items():
        if ticker.startswith("_") or not isinstance(block, dict):
            continue
        trades = block.get("flow_trades") or []
        by_side: dict[str, list[tuple[float, float]]] = {}
        for t in trades if isinstance(trades, list) else []:
            if not isinstance(t, dict) or not t.get("has_sweep"):
                continue
            try:
                premium = float(t.get("total_premium") or 0)
                expiry = date.fromisoformat(str(t.get("expiry"))[:10])
            except ValueError:
                continue
            created = _ts(t.get("created_at"))
            if premium < MIN_PREMIUM or created is None or (expiry - today).days > MAX_EXPIRY_DAYS:
                continue
            by_side.setdefault(str(t.get("type")), []).append((created, premium))
        for side, items in by_side.items():
            items.sort()
            newest = items[-1][0] if items else 0.0
            window = [x for x in items if newest - x[0] <= CLUSTER_WINDOW]
            if len(window) >= MIN_SWEEPS:
                out.append({"symbol": ticker, "direction": "bullish" if side == "call" else "bearish",
                            "premium": sum(p for _, p in window), "sweeps": len(window), "newest": newest})
    return out


class Bot:
    def __init__(self, env: BotEnv) -> None:
        self.base = (env.get("ALPACA_BASE_URL", "APCA_API_BASE_URL") or "https://paper-api.alpaca.markets").rstrip("/")
        why = refuse_url(env.get("TRADING_MODE") or "PAPER", self.base)
        if why is not None:
            raise ValueError(why)
        self.headers = {"APCA-API-KEY-ID": env.get("ALPACA_KEY", "ALPACA_API_KEY", "APCA_API_KEY_ID") or "",
                        "APCA-API-SECRET-KEY": env.get("ALPACA_SECRET", "ALPACA_API_SECRET",
                                                       "APCA_API_SECRET_KEY") or ""}
        self.interval = max(0.2, env.number("SANDBOX_BOT_INTERVAL", 60.0))
        self.timeout = max(0.2, env.number("SANDBOX_BOT_TIMEOUT", 5.0))
        self.max_positions = int(env.number("MAX_CONCURRENT_POSITIONS", 16))
        self.max_new = int(env.number("MAX_NEW_POSITIONS_PER_CYCLE", 6))
        self.min_score = env.number("MIN_EXEC_SCORE", 2.0)
        self.cooldown = env.number("COOLDOWN_MINUTES_PER_TICKER", 15) * 60
        self.session = requests.Session()
        self.iter_count = 0
        self.seen: set[tuple[str, str, float]] = set()
        self.last_order: dict[str, float] = {}
        self.market_open = False

    def broker(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.session.request(method, f"{self.base}/v2{path}", json=body, headers=self.headers,
                                 timeout=self.timeout)
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = None
            message = body.get("message") if isinstance(body, dict) else None
            raise BrokerRefused(f"alpaca {method} /v2{path}: HTTP {r.status_code}", r.status_code,
                                str(message) if message else f"HTTP {r.status_code}")
        return r.json()

    def order_failed(self, now: float, action: str, symbol: str, error: str, **fields: Any) -> None:
        """A refused submission, in main.py's two logs."""
        append(ORDERS_LOG, {"ts": iso(now), "type": "order", "action": action, "symbol": symbol, **fields,
                            "error": error, "strategy_id": "equity"})
        details = {k: v for k, v in fields.items() if k in ("fraction", "side", "qty")}
        append(EXECUTION_FAILURES, {"timestamp": iso(now), "symbol": symbol, "failure_type": action,
                                    "details": {**details, "error": error}})

    def submit(self, now: float, symbol: str, side: str, **amount: Any) -> Any:
        append(SUBMIT_LOG, {"ts": time.time(), "msg": "SUBMIT_ORDER_CALLED", "symbol": symbol, "mode": "market",
                            **{k: float(v) for k, v in amount.items()}, "side": side, "strategy_id": "equity"})
        return self.broker("POST", "/orders", {"symbol": symbol, "side": side, "type": "market",
                                               "time_in_force": "day", **amount})

    def scale_out(self, now: float) -> None:
        """Sell half of every held position (the ``bot-scale-out`` flag)."""
        positions = self.broker("GET", "/positions")
        for pos in positions if isinstance(positions, list) else []:
            symbol, qty = str(pos.get("symbol")), abs(float(pos.get("qty") or 0))
            half = round(qty / 2, 6)
            if not half:
                continue
            side = "sell" if float(pos.get("qty") or 0) > 0 else "buy"
            try:
                self.submit(now, symbol, side, qty=str(half))
            except BrokerRefused as exc:
                self.order_failed(now, "scale_out_failed", symbol, exc.message, fraction=0.5)
                continue
            append(ORDERS_LOG, {"ts": iso(now), "type": "order", "action": "scale_out", "symbol": symbol,
                                "qty": half, "fraction": 0.5, "strategy_id": "equity"})

    def gates_closed(self) -> list[str]:
        """Freezes, safe mode and the kill switch: any one blocks every candidate."""
        why: list[str] = []
        try:
            freezes = read_json(FREEZES) if FREEZES.exists() else {}
        except (OSError, json.JSONDecodeError):
            freezes = {}
        for key, value in (freezes.items() if isinstance(freezes, dict) else ()):
            if value is True or (isinstance(value, dict) and value.get("active") is True):
                why.append(key)
        if SAFE_MODE.exists():
            why.append("safe_mode")
        if KILL_SWITCH.exists():
            try:
                ks = read_json(KILL_SWITCH)
                if not isinstance(ks, dict) or ks.get("enabled") is not False:
                    why.append("kill_switch")
            except (OSError, json.JSONDecodeError):
                why.append("kill_switch")
        return why

    def flow_weight(self) -> float:
        try:
            w = read_json(WEIGHTS)["entry_weights"]["weight_bands"]["options_flow"]["current"]
            return float(w) if math.isfinite(float(w)) else 1.0
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return 1.0

    def cycle(self) -> None:
        now = time.time()
        self.iter_count += 1
        write_atomic(HEARTBEAT, {"last_heartbeat_ts": now, "iter_count": self.iter_count, "running": True,
                                 "pid": os.getpid()})
        try:
            cache = read_json(CACHE)
        except FileNotFoundError:
            cache = {}
        except (OSError, json.JSONDecodeError) as exc:
            append(RUN_LOG, {"ts": iso(now), "_ts": int(now), "msg": "cycle_error", "stage": "cache",
                             "error": f"cannot read {CACHE}: {type(exc).__name__}"})
            return
        if not isinstance(cache, dict):
            cache = {}
        if (FLAGS / "bot-cluster-errors").exists():
            append(RUN_LOG, {"ts": iso(now), "_ts": int(now), "msg": "cycle_error", "stage": "clusters",
                             "error": "cluster generation failed: KeyError 'created_at' in flow_trades"})
            self.restamp(cache, now)
            return
        clusters = [] if (FLAGS / "bot-no-clusters").exists() else clusters_of(cache, now)
        closed = self.gates_closed()
        orders = 0
        record: dict[str, Any] = {"ts": iso(now), "_ts": int(now), "msg": "complete", "clusters": len(clusters)}
        try:
            if closed:
                record["freeze_active"] = True
                record["freeze_reasons"] = closed
            else:
                orders = self.decide(clusters, now)
                if (FLAGS / "bot-scale-out").exists():
                    self.scale_out(now)
        except (requests.RequestException, RuntimeError, ValueError) as exc:
            error = (exc.what if isinstance(exc, BrokerRefused) else str(exc) if isinstance(exc, RuntimeError)
                     else type(exc).__name__)
            append(RUN_LOG, {"ts": iso(now), "_ts": int(now), "msg": "cycle_error", "stage": "broker", "error": error})
            self.restamp(cache, now)
            return
        self.restamp(cache, now)
        record.update(orders=orders, market_open=self.market_open, engine_status="ok", errors_this_cycle=[],
                      metrics={"clusters": len(clusters), "orders": orders, "equity_orders": orders,
                               "engine_status": "ok", "errors_this_cycle": []}, strategy_id="equity")
        append(RUN_LOG, record)

    def gate_flag(self) -> str | None:
        """The block reason of an active ``bot-gate`` fault, if any."""
        try:
            reason = (FLAGS / "bot-gate").read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return reason or None

    def decide(self, clusters: list[dict[str, Any]], now: float) -> int:
        gate = self.gate_flag()
        if gate is not None:
            # a gate that refuses everything refuses every cluster again each cycle
            for c in clusters:
                self.seen.add((c["symbol"], c["direction"], c["newest"]))
                append(BLOCKED, {"timestamp": iso(now), "symbol": c["symbol"], "reason": gate,
                                 "score": self.score(c), "direction": c["direction"]})
            return 0
        new = [c for c in clusters if (c["symbol"], c["direction"], c["newest"]) not in self.seen]
        if not new:
            return 0
        clock = self.broker("GET", "/clock")
        self.market_open = bool(clock.get("is_open"))
        positions = self.broker("GET", "/positions")
        held = len(positions) if isinstance(positions, list) else 0
        orders = 0
        for c in sorted(new, key=lambda c: -c["premium"]):
            self.seen.add((c["symbol"], c["direction"], c["newest"]))
            score = self.score(c)
            reason = None
            if not clock.get("is_open"):
                reason = "market_closed"
            elif held >= self.max_positions:
                reason = "max_positions_reached"
            elif now - self.last_order.get(c["symbol"], 0.0) < self.cooldown:
                reason = "symbol_on_cooldown"
            elif score < self.min_score:
                reason = "score_below_min"
            elif orders >= self.max_new:
                reason = "max_new_positions_per_cycle"
            if reason is not None:
                append(BLOCKED, {"timestamp": iso(now), "symbol": c["symbol"], "reason": reason, "score": score,
                                 "direction": c["direction"]})
                continue
            side = "buy" if c["direction"] == "bullish" else "sell"
            append(RUN_LOG, {"ts": iso(time.time()), "event_type": "trade_intent", "symbol": c["symbol"],
                             "side": side, "score": score, "strategy_id": "equity"})
            append(RUN_LOG, {"ts": iso(time.time()), "event_type": "entry_decision_made",
                             "entry_intent_status": "OK", "symbol": c["symbol"], "side": side,
                             "strategy_id": "equity"})
            try:
                order = self.submit(now, c["symbol"], side, notional="1000")
            except BrokerRefused as exc:
                self.order_failed(now, "market_fail", c["symbol"], exc.message, side=side,
                                  error_details={"symbol": c["symbol"], "side": side, "error_type": "APIError",
                                                 "error_message": exc.message, "status_code": exc.status})
                self.seen.discard((c["symbol"], c["direction"], c["newest"]))  # tried again next cycle
                continue
            if isinstance(order, dict) and order.get("status") == "rejected":
                append(BLOCKED, {"timestamp": iso(now), "symbol": c["symbol"], "reason": "order_validation_failed",
                                 "score": score, "error": f"rejected by the broker: {order.get('reject_reason')}"})
                continue
            self.last_order[c["symbol"]] = now
            orders += 1
            held += 1
        return orders

    def score(self, c: dict[str, Any]) -> float:
        return round(1.0 + min(3.0, c["premium"] / 1e6) * self.flow_weight(), 3)

    def restamp(self, cache: dict[str, Any], now: float) -> None:
        """main.py re-stamps tickers and rewrites the whole file: the file mtime lies after this."""
        if not cache or (FLAGS / "bot-stop-writing-cache").exists():
            return
        for key, block in cache.items():
            if not key.startswith("_") and isinstance(block, dict):
                block["_last_update"] = now
        write_atomic(CACHE, cache)


def main() -> int:
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        bot = Bot(BotEnv.load(Path.cwd()))
    except ValueError as exc:
        print(f"main.py: {exc}", flush=True)
        return 1
    while not _stopping:
        started = time.monotonic()
        try:
            bot.cycle()
        except OSError as exc:
            print(f"main.py: cycle failed: {exc}", flush=True)
        while not _stopping and time.monotonic() - started < bot.interval:
            time.sleep(min(0.2, bot.interval))
        if orphaned():
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
