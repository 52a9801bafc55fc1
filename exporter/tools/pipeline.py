"""The decision path a probe traces, as a pluggable adapter, and stock-bot's own flow.

A probe that does not follow the bot's real decision path proves nothing (the old injection
test compared against a hard-coded threshold and called it verification). So the stages are
an adapter: a bot can plug in its real stage functions with ``probe.adapter: "module:object"``;
the built-in :class:`StockBotAdapter` follows stock-bot's flow (BOT.md "The signal flow") from
its state files, its environment and the broker.

Every stage only reads: the probe must never write into the bot's state or logs, and the
execution stage builds and validates the order against the broker but never submits it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..bot.broker import BrokerError
from ..bot.context import Context
from ..bot.freeze import freeze_state
from ..bot.readers import FileProblem, read_json
from ..bot.values import number
from ..bot.weights import ENTRY_COMPONENTS, band_problems

STAGES = ("cache_read", "cluster", "score", "threshold", "gates", "execution")

#: stock-bot's cluster rules (BOT.md): flow trades with premium >= 100k expiring within 7 days,
#: same ticker and direction within 600 s, at least 3 sweeps.
MIN_PREMIUM = 100_000.0
MAX_EXPIRY_DAYS = 7
CLUSTER_WINDOW_SECONDS = 600.0
MIN_SWEEPS = 3
#: how much of the blocked-trades log a cooldown lookup reads (it grows to hundreds of MB)
BLOCKED_TAIL_BYTES = 512 * 1024


class AdapterError(Exception):
    """The configured adapter cannot be loaded or does not implement the stages."""


@dataclass
class StageResult:
    """One stage of the trace. ``status`` is passed, blocked or error (could not evaluate)."""

    stage: str
    status: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def passed(cls, stage: str, reason: str, **details: Any) -> StageResult:
        return cls(stage, "passed", reason, details)

    @classmethod
    def blocked(cls, stage: str, reason: str, **details: Any) -> StageResult:
        return cls(stage, "blocked", reason, details)

    @classmethod
    def error(cls, stage: str, reason: str, **details: Any) -> StageResult:
        return cls(stage, "error", reason, details)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "status": self.status, "reason": self.reason, "details": self.details}


@dataclass
class ProbeSignal:
    """The synthetic signal, built in memory only. Stages fill in what they computed."""

    symbol: str
    score: float
    notional: float
    direction: str = "bullish"
    created_at: float = 0.0
    flow_trades: list[dict[str, Any]] = field(default_factory=list)
    #: filled in as the trace goes: clusters, threshold, order, ...
    trace: dict[str, Any] = field(default_factory=dict)


def synthetic_flow(symbol: str, now: float, direction: str = "bullish", sweeps: int = 4) -> list[dict[str, Any]]:
    """Flow alerts that satisfy stock-bot's cluster rules: >= 3 sweeps, premium >= 100k,
    expiry within 7 days, same direction within 600 s."""
    kind = "call" if direction == "bullish" else "put"
    expiry = (datetime.fromtimestamp(now, UTC) + timedelta(days=3)).date().isoformat()
    return [{"ticker": symbol, "type": kind, "total_premium": str(250_000 + 10_000 * i), "expiry": expiry,
             "created_at": datetime.fromtimestamp(now - 60 * i, UTC).isoformat().replace("+00:00", "Z"),
             "has_sweep": True, "volume": 500, "open_interest": 1000, "synthetic": True}
            for i in range(sweeps)]


@runtime_checkable
class PipelineAdapter(Protocol):
    """The bot's decision path, one method per stage, each returning a :class:`StageResult`.

    Stages run in :data:`STAGES` order and the trace stops at the first stage that does not
    pass. A stage must not write into the bot's state or logs and ``execution`` must never
    submit an order: it builds the order and validates it against the broker.
    """

    def cache_read(self, ctx: Context, signal: ProbeSignal) -> StageResult: ...
    def cluster(self, ctx: Context, signal: ProbeSignal) -> StageResult: ...
    def score(self, ctx: Context, signal: ProbeSignal) -> StageResult: ...
    def threshold(self, ctx: Context, signal: ProbeSignal) -> StageResult: ...
    def gates(self, ctx: Context, signal: ProbeSignal) -> StageResult: ...
    def execution(self, ctx: Context, signal: ProbeSignal) -> StageResult: ...


def load_adapter(spec: str | None) -> PipelineAdapter:
    """``None`` → the built-in stock-bot adapter; else ``"module:object"`` (a class is instantiated)."""
    if not spec:
        return StockBotAdapter()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AdapterError(f"probe.adapter must be 'module:object', got {spec!r}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterError(f"probe.adapter {spec!r}: cannot import {module_name} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AdapterError(f"probe.adapter {spec!r}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    missing = [s for s in STAGES if not callable(getattr(obj, s, None))]
    if missing:
        raise AdapterError(f"probe.adapter {spec!r} does not implement stage(s) {', '.join(missing)}")
    return obj  # type: ignore[no-any-return]


# --- helpers of the built-in adapter ---------------------------------------------------------------
def _iso_ts(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def clusters_of(trades: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """stock-bot's clustering: filter (premium, expiry), then group by direction within 600 s."""
    today = datetime.fromtimestamp(now, UTC).date()
    kept: list[tuple[float, str]] = []
    for t in trades:
        premium = number(t.get("total_premium")) or 0.0
        try:
            expiry = datetime.fromisoformat(str(t.get("expiry"))[:10]).date()
        except ValueError:
            continue
        ts = _iso_ts(t.get("created_at"))
        if premium < MIN_PREMIUM or ts is None or not 0 <= (expiry - today).days <= MAX_EXPIRY_DAYS:
            continue
        if not t.get("has_sweep", True):
            continue
        kept.append((ts, "bullish" if t.get("type") == "call" else "bearish"))
    clusters: list[dict[str, Any]] = []
    for direction in ("bullish", "bearish"):
        times = sorted(ts for ts, d in kept if d == direction)
        start = 0
        for end in range(len(times)):
            while times[end] - times[start] > CLUSTER_WINDOW_SECONDS:
                start += 1
            if end - start + 1 >= MIN_SWEEPS and (end + 1 == len(times)
                                                 or times[end + 1] - times[start] > CLUSTER_WINDOW_SECONDS):
                clusters.append({"direction": direction, "sweeps": end - start + 1})
    return clusters


def _tail_lines(path: Path, limit: int = BLOCKED_TAIL_BYTES) -> list[dict[str, Any]]:
    """The complete JSON lines in the last ``limit`` bytes of a log, read-only."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - limit))
            raw = fh.read(limit)
    except OSError:
        return []
    lines = raw.split(b"\n")
    if size > limit:
        lines = lines[1:]  # the first piece may be the end of a line
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # torn, foreign, or nested deeper than the parser goes
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def symbol_threshold(data: Any, symbol: str) -> float | None:
    """The per-symbol threshold in ``uw_thresholds_hierarchical.json``: ``symbols.<SYM>`` (a number
    or ``{"threshold": x}``) or a top-level ``<SYM>`` entry."""
    if not isinstance(data, dict):
        return None
    for node in (data.get("symbols"), data):
        if isinstance(node, dict) and symbol in node:
            value = node[symbol]
            if isinstance(value, dict):
                value = value.get("threshold", value.get("entry_threshold"))
            n = number(value)
            if n is not None:
                return n
    return None


class StockBotAdapter:
    """stock-bot's flow (BOT.md), read from its files, its environment and the broker."""

    name = "stock-bot (built-in)"

    def cache_read(self, ctx: Context, signal: ProbeSignal) -> StageResult:
        path = ctx.path("uw_cache")
        try:
            cache = read_json(path, retries=3, delay=0.2)
        except FileProblem as exc:
            return StageResult.blocked("cache_read", f"the bot cannot read its UW cache: {exc}", path=str(path))
        if not isinstance(cache, dict):
            return StageResult.blocked("cache_read", f"{path.name} is not a JSON object: the bot finds no tickers")
        symbols = [k for k in cache if not k.startswith("_")]
        meta = cache.get("_metadata") if isinstance(cache.get("_metadata"), dict) else {}
        updated = number(meta.get("last_update")) if meta else None
        details: dict[str, Any] = {"symbols_in_cache": len(symbols), "symbol_in_cache": signal.symbol in cache}
        if updated is not None:
            details["cache_age_seconds"] = round(ctx.now() - updated, 1)
        # the synthetic trades join the symbol's entry in memory only; the file is never touched
        entry = cache.get(signal.symbol) if isinstance(cache.get(signal.symbol), dict) else {}
        signal.trace["cache_entry_keys"] = sorted(entry)[:20] if entry else []
        return StageResult.passed("cache_read", f"cache readable with {len(symbols)} symbols; "
                                  f"{len(signal.flow_trades)} synthetic {signal.symbol} flow trades injected "
                                  "in memory", **details)

    def cluster(self, ctx: Context, signal: ProbeSignal) -> StageResult:
        clusters = clusters_of(signal.flow_trades, ctx.now())
        signal.trace["clusters"] = clusters
        mine = [c for c in clusters if c["direction"] == signal.direction]
        rules = (f"premium >= {MIN_PREMIUM:,.0f}, expiry <= {MAX_EXPIRY_DAYS} days, >= {MIN_SWEEPS} sweeps "
                 f"within {CLUSTER_WINDOW_SECONDS:g} s")
        if not mine:
            return StageResult.blocked("cluster", f"no {signal.direction} cluster formed ({rules})", rules=rules)
        return StageResult.passed("cluster", f"1 {signal.direction} cluster of {mine[0]['sweeps']} sweeps ({rules})",
                                  sweeps=mine[0]["sweeps"])

    def score(self, ctx: Context, signal: ProbeSignal) -> StageResult:
        try:
            weights = read_json(ctx.path("weights"), retries=3, delay=0.2)
        except FileProblem as exc:
            if exc.kind == "missing":
                # adaptive_signal_optimizer._load_state: no file means the built-in default bands
                if not math.isfinite(signal.score):
                    return StageResult.blocked("score", f"composite score {signal.score} is not finite")
                return StageResult.passed("score", f"composite score {signal.score:g} (known probe score; "
                                          f"{ctx.path('weights').name} absent: the bot scores with its built-in "
                                          "default weights until the learner's first save)",
                                          score=signal.score, weights="defaults")
            return StageResult.blocked("score", f"the bot cannot score without its adaptive weights: {exc}")
        entry = weights.get("entry_weights") if isinstance(weights, dict) else None
        problems, valid = band_problems(entry.get("weight_bands") if isinstance(entry, dict) else None)
        if problems:
            return StageResult.blocked("score", "adaptive weights not initialised ("
                                       + "; ".join(problems[:3]) + "): the composite score cannot be computed",
                                       valid_components=valid)
        if not math.isfinite(signal.score):
            return StageResult.blocked("score", f"composite score {signal.score} is not finite")
        return StageResult.passed("score", f"composite score {signal.score:g} (known probe score; "
                                  f"{valid}/{len(ENTRY_COMPONENTS)} weight components initialised)",
                                  score=signal.score)

    def threshold(self, ctx: Context, signal: ProbeSignal) -> StageResult:
        base: float | None = None
        source = ""
        try:
            data = read_json(ctx.path("thresholds"), retries=3, delay=0.2)
        except FileProblem as exc:
            if exc.kind != "missing":
                return StageResult.error("threshold", f"per-symbol thresholds unreadable: {exc}")
            data = None
        base = symbol_threshold(data, signal.symbol)
        if base is not None:
            source = f"state/uw_thresholds_hierarchical.json for {signal.symbol}"
        elif isinstance(data, dict) and number(data.get("default")) is not None:
            base, source = number(data.get("default")), "state/uw_thresholds_hierarchical.json default"
        else:
            try:
                if ctx.env.get("ENTRY_THRESHOLD_BASE"):
                    base, source = ctx.env.number("ENTRY_THRESHOLD_BASE", 2.7), "ENTRY_THRESHOLD_BASE"
            except ValueError as exc:
                return StageResult.error("threshold", f"{exc}: the entry threshold is unknown")
            if base is None:
                base, source = 2.7, "built-in 2.7"
        assert base is not None
        adjustment = 0.0
        try:
            sh = read_json(ctx.path("self_healing_threshold"), retries=3, delay=0.2)
        except FileProblem:
            sh = None
        if isinstance(sh, dict):
            adj = number(sh.get("adjustment")) or 0.0
            if sh.get("activated_at") not in (None, False, 0, "") and adj > 0:
                adjustment = adj
        effective = base + adjustment
        signal.trace["threshold"] = effective
        signal.trace["self_healing_adjustment"] = adjustment
        details = {"threshold": effective, "base_threshold": base, "source": source,
                   "self_healing_adjustment": adjustment, "score": signal.score}
        text = f"threshold in force {effective:g} ({source} {base:g}" + (
            f" + active self-healing adjustment {adjustment:g})" if adjustment else ")")
        if signal.score < effective:
            return StageResult.blocked("threshold", f"score {signal.score:g} below the {text}", **details)
        return StageResult.passed("threshold", f"score {signal.score:g} >= {text}", **details)

    def gates(self, ctx: Context, signal: ProbeSignal) -> StageResult:
        blocking, fdetails = freeze_state(ctx)
        if blocking:
            gate = ("kill_switch" if fdetails.get("kill_switch") else
                    "safe_mode" if fdetails.get("safe_mode") else "freeze")
            return StageResult.blocked("gates", f"{gate}: " + "; ".join(blocking), gate=gate, blocking=blocking)
        try:
            cap = int(ctx.env.number("MAX_CONCURRENT_POSITIONS", 16))
            min_exec = ctx.env.number("MIN_EXEC_SCORE", 0.0)
            cooldown_min = ctx.env.number("COOLDOWN_MINUTES_PER_TICKER", 15)
        except ValueError as exc:
            return StageResult.error("gates", f"{exc}: cannot evaluate the gates")
        try:
            positions = ctx.broker_get("/positions")
        except BrokerError as exc:
            return StageResult.error("gates", f"broker unreachable or refusing: cannot list positions ({exc})")
        if not isinstance(positions, list):
            return StageResult.error("gates", "Alpaca /v2/positions did not return a list")
        # an active self-healing adjustment raises the execution floor as well as the entry threshold
        adjustment = float(signal.trace.get("self_healing_adjustment") or 0.0)
        floor = min_exec + adjustment
        floor_text = f"MIN_EXEC_SCORE {min_exec:g}" + (
            f" + active self-healing adjustment {adjustment:g} = {floor:g}" if adjustment and min_exec else "")
        details: dict[str, Any] = {"open_positions": len(positions), "max_positions": cap,
                                   "min_exec_score": min_exec, "effective_min_exec_score": floor,
                                   "cooldown_minutes": cooldown_min}
        if len(positions) >= cap:
            return StageResult.blocked("gates", f"max_positions_reached: {len(positions)} open positions, "
                                       f"MAX_CONCURRENT_POSITIONS={cap}", gate="max_positions", **details)
        # the bot's cooldown: a recent order or a recent cooldown block for the same symbol
        since = ctx.now() - cooldown_min * 60
        after = datetime.fromtimestamp(since, UTC).isoformat().replace("+00:00", "Z")
        try:
            orders = ctx.broker_get("/orders", {"status": "all", "symbols": signal.symbol, "after": after,
                                                "limit": 50})
        except BrokerError as exc:
            return StageResult.error("gates", f"broker unreachable or refusing: cannot list recent orders ({exc})")
        recent = [o for o in orders if isinstance(o, dict)] if isinstance(orders, list) else []
        if recent:
            return StageResult.blocked("gates", f"symbol_on_cooldown: {len(recent)} {signal.symbol} order(s) in the "
                                       f"last {cooldown_min:g} min (COOLDOWN_MINUTES_PER_TICKER)",
                                       gate="cooldown", **details)
        for rec in reversed(_tail_lines(ctx.path("blocked_trades"))):
            ts = _iso_ts(rec.get("timestamp"))
            if ts is None or ts < since:
                continue
            if rec.get("symbol") == signal.symbol and rec.get("reason") == "symbol_on_cooldown":
                return StageResult.blocked("gates", f"symbol_on_cooldown: the bot logged {signal.symbol} on cooldown "
                                           f"within the last {cooldown_min:g} min", gate="cooldown", **details)
        if min_exec and signal.score < floor:
            return StageResult.blocked("gates", f"score_below_min: score {signal.score:g} < {floor_text}",
                                       gate="min_exec_score", **details)
        return StageResult.passed("gates", f"no freeze, kill switch or safe mode; {len(positions)} of {cap} "
                                  f"positions; {signal.symbol} not on cooldown; score >= {floor_text}", **details)

    def execution(self, ctx: Context, signal: ProbeSignal) -> StageResult:
        order = {"symbol": signal.symbol, "notional": f"{signal.notional:.2f}",
                 "side": "buy" if signal.direction == "bullish" else "sell", "type": "market",
                 "time_in_force": "day", "client_order_id": f"trading-readiness-probe-{int(ctx.now())}"}
        signal.trace["order"] = order
        details: dict[str, Any] = {"order": order, "submitted": False}
        try:
            account = ctx.broker_get("/account")
            asset = ctx.broker_get(f"/assets/{signal.symbol}")
        except BrokerError as exc:
            if exc.kind == "not_found":
                return StageResult.blocked("execution", f"asset {signal.symbol} unknown to the broker",
                                           check="asset", **details)
            return StageResult.error("execution", f"broker unreachable or refusing: {exc}", **details)
        if not isinstance(account, dict) or not isinstance(asset, dict):
            return StageResult.error("execution", "broker answered account or asset with an unexpected body")
        for flag in ("trading_blocked", "account_blocked", "trade_suspended_by_user"):
            if account.get(flag):
                return StageResult.blocked("execution", f"account {flag}: the broker refuses orders",
                                           check="account", **details)
        if account.get("status") not in (None, "ACTIVE"):
            return StageResult.blocked("execution", f"account status {account.get('status')}, not ACTIVE",
                                       check="account", **details)
        if not asset.get("tradable") or asset.get("status") != "active":
            return StageResult.blocked("execution", f"asset {signal.symbol} is not tradable (tradable="
                                       f"{asset.get('tradable')}, status={asset.get('status')})",
                                       check="asset", **details)
        if not asset.get("fractionable", True):
            return StageResult.blocked("execution", f"asset {signal.symbol} is not fractionable: a notional order "
                                       "is refused", check="asset", **details)
        buying_power = number(account.get("buying_power"))
        details["buying_power"] = buying_power
        if buying_power is None or buying_power < signal.notional:
            return StageResult.blocked("execution", f"insufficient buying power: {buying_power} < notional "
                                       f"{signal.notional:.2f}", check="buying_power", **details)
        session = ctx.session()
        details["market"] = session.to_json()
        if not session.is_open:
            # Shortly before the open the question a (pre-market) verification asks is "will it
            # trade at the open?": an order that validates now is good for the open, and calling
            # that BLOCKED would make every pre-market verification a false alarm.
            window = max(float(ctx.config["market"]["premarket_seconds"]),
                         float(ctx.config["exporter"]["premarket_verify_offset_seconds"]))
            until_open = (session.next_open - session.now).total_seconds() if session.next_open else None
            if session.next_open is not None and until_open is not None and 0 < until_open <= window:
                details["at_open"] = True
                return StageResult.passed(
                    "execution", f"order validated for the open, not submitted: buy ${signal.notional:.2f} "
                    f"{signal.symbol} (asset tradable, buying power {buying_power:,.2f}; market opens "
                    f"{session.next_open.isoformat()} per the {session.source} clock, in {until_open / 60:.0f} min)",
                    **details)
            when = f"; next open {session.next_open.isoformat()}" if session.next_open else ""
            return StageResult.blocked("execution", f"market_closed: {session.describe()} per the "
                                       f"{session.source} clock{when}", check="market_session", **details)
        return StageResult.passed("execution", f"order validated, not submitted: buy ${signal.notional:.2f} "
                                  f"{signal.symbol} (asset tradable, market open, buying power "
                                  f"{buying_power:,.2f})", **details)
