"""Execution & Broker (FP-4.x): Alpaca reachability, credentials, account and orders."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..bot import market
from ..bot.alpaca import (
    account,
    account_or_failure,
    broker_failed,
    broker_offset,
    broker_read,
    positions_or_failure,
    require_credentials,
)
from ..bot.broker import BrokerError
from ..bot.context import Context
from ..bot.orders import recorded_failures
from ..bot.readers import FileProblem, read_json
from ..bot.values import age_text, number
from ..core.engine import check
from ..core.model import Outcome, Status, iso_utc


@check("FP-4.1")
def alpaca_reachable(ctx: Context, p: dict[str, Any]) -> Outcome:
    if not ctx.broker.configured:
        # without credentials the clock request cannot be made (the credentials are FP-4.2's: it
        # depends on this point, so this point cannot skip for it)
        return Outcome.skipped("Alpaca credentials are not set: no request can be made")
    try:
        clock = ctx.broker_get("/clock")
    except BrokerError as exc:
        if exc.kind in ("auth", "forbidden"):
            return Outcome.ok(f"Alpaca reachable (answered HTTP {exc.status}; credentials: see FP-4.2)",
                              http_status=exc.status).observe("trading_alpaca_up", 1)
        if exc.kind == "rate_limit":
            return Outcome.warn(str(exc), http_status=429).observe("trading_alpaca_up", 1)
        return Outcome.error(str(exc), problem=exc.kind, http_status=exc.status).observe("trading_alpaca_up", 0)
    if not isinstance(clock, dict) or "is_open" not in clock:
        return Outcome.error("Alpaca /v2/clock answer has no is_open").observe("trading_alpaca_up", 0)
    if not isinstance(clock["is_open"], bool):
        # "false" or "maybe" would read as an open market to every in-session point
        return Outcome.error(f"Alpaca /v2/clock answer has a non-boolean is_open ({str(clock['is_open'])[:40]!r})"
                             ).observe("trading_alpaca_up", 0)
    is_open = bool(clock["is_open"])
    return (Outcome.ok(f"Alpaca answered the clock (market {'open' if is_open else 'closed'})",
                       is_open=is_open, next_open=clock.get("next_open"), next_close=clock.get("next_close"))
            .observe("trading_alpaca_up", 1).observe("trading_market_open", is_open))


@check("FP-4.2")
def alpaca_auth(ctx: Context, p: dict[str, Any]) -> Outcome:
    env = ctx.env
    if not env.alpaca_key or not env.alpaca_secret:
        missing = [label for label, value in (("key (ALPACA_KEY, ALPACA_API_KEY or APCA_API_KEY_ID)", env.alpaca_key),
                                              ("secret (ALPACA_SECRET, ALPACA_API_SECRET or APCA_API_SECRET_KEY)",
                                               env.alpaca_secret)) if not value]
        return Outcome.error("Alpaca " + " and ".join(missing) + " not set in the environment or .env")
    from ..bot.botenv import ALPACA_KEY_VARS

    key_var = env.which(*ALPACA_KEY_VARS)
    details = {"key_variable": key_var, "key_source": env.source.get(key_var or "", "")}
    try:
        account(ctx)
    except BrokerError as exc:
        if exc.kind in ("auth", "forbidden"):
            return Outcome.error(f"{exc} using {key_var} from {details['key_source']}", http_status=exc.status,
                                 code=exc.code, **details)
        out = broker_failed(exc, "verify the credentials", ctx)
        out.details.update(details)
        return out
    return Outcome.ok(f"Alpaca accepted the credentials ({key_var})", **details)


@check("FP-4.3")
def buying_power(ctx: Context, p: dict[str, Any]) -> Outcome:
    # account status and blocked flags are FP-4.6's: one blocked account is one critical there,
    # and this point is skipped while FP-4.6 fails
    acct = account_or_failure(ctx)
    if isinstance(acct, Outcome):
        return acct
    bp, equity = number(acct.get("buying_power")), number(acct.get("equity"))
    details = {"buying_power": bp, "equity": equity, "min_buying_power": p["min_buying_power"]}
    out: Outcome
    if bp is None:
        out = Outcome.error("account has no numeric buying_power", **details)
    elif bp < p["min_buying_power"]:
        out = Outcome.warn(f"buying power ${bp:,.2f} below the minimum ${p['min_buying_power']:,.2f}", **details)
    else:
        out = Outcome.ok(f"buying power ${bp:,.2f}", **details)
    return out.observe("trading_account_buying_power_usd", bp).observe("trading_account_equity_usd", equity)


def _when(order: dict[str, Any], *keys: str) -> datetime | None:
    for k in keys:
        dt = market.parse_ts(order.get(k))
        if dt is not None:
            return dt
    return None


def _orders(ctx: Context, status: str, limit: int) -> list[dict[str, Any]]:
    data = broker_read(ctx, "/orders", {"status": status, "limit": limit, "direction": "desc"})
    if not isinstance(data, list):
        raise BrokerError("bad_response", f"Alpaca /v2/orders?status={status} did not return a list")
    return [o for o in data if isinstance(o, dict)]


# --- FP-4.4: orders the broker refused -------------------------------------------------------
@check("FP-4.4")
def order_rejections(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Rejected orders mean the bot decided to trade and the broker said no: trades are lost.

    Two sources: orders the broker lists as ``rejected``, and submissions the bot itself recorded
    as failed (the broker refused the request, so no order exists to list)."""
    now = ctx.now()
    since = now - float(p["window_seconds"])
    window = age_text(float(p["window_seconds"]))
    problems: list[str] = []
    failures, submissions = recorded_failures(ctx, since, float(p["same_failure_seconds"]), problems)
    details: dict[str, Any] = {"window_seconds": p["window_seconds"], "failures_recorded": len(failures),
                               "submissions_recorded": submissions,
                               "recorded_failures": [{"symbol": f.symbol, "type": f.kind, "error": f.error,
                                                      "at": iso_utc(f.t), "sources": f.sources}
                                                     for f in failures[-10:]]}
    if problems:
        details["log_problems"] = problems
    broker_problem: Outcome | None = None
    recent: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    try:
        closed = _orders(ctx, "closed", int(p["recent_orders"]))
    except BrokerError as exc:
        broker_problem = broker_failed(exc, "list recent orders", ctx)
    else:
        recent = [o for o in closed
                  if (t := _when(o, "submitted_at", "created_at")) is not None and t.timestamp() >= since]
        rejected = [o for o in recent if str(o.get("status", "")).lower() == "rejected"]
        details.update(recent_orders=len(recent), rejected=len(rejected),
                       rejected_orders=[{"symbol": o.get("symbol"), "side": o.get("side"),
                                         "type": o.get("type") or o.get("order_type"),
                                         "submitted_at": o.get("submitted_at")} for o in rejected[:10]])
    log_note = "cannot count the bot's own failed submissions from " + "; ".join(problems) if problems else ""
    if broker_problem is not None and not failures:
        # nothing the bot recorded: without the broker's list there is nothing more to judge
        broker_problem.details.update(details)
        if log_note and broker_problem.status is not Status.ERROR:
            return Outcome.warn(f"{log_note}; and {broker_problem.message}", **details).observe(
                "trading_order_failures_recorded", None)
        if log_note:
            broker_problem.message += f"; {log_note}"
        return broker_problem.observe("trading_order_failures_recorded", None if log_note else 0)
    refused = len(rejected) + len(failures)
    # a failed submission never becomes an order: the attempts are the closed orders plus the
    # failures, or the submissions the bot recorded if it recorded more
    attempts = max(len(recent) + len(failures), submissions)
    share = refused / attempts if attempts else 0.0
    details["refused_share"] = round(share, 3)
    parts: list[str] = []
    if failures:
        latest = failures[-1]
        n = len(failures)
        parts.append(f"{n} failed submission{'s' if n != 1 else ''} recorded by the bot (latest {latest.kind} "
                     f"{latest.symbol} at {iso_utc(latest.t)}: {latest.error!r}, in {' and '.join(latest.sources)})")
    if rejected:
        last = rejected[0]
        parts.append(f"{len(rejected)} of {len(recent)} closed orders of the last {window} rejected by the broker "
                     f"(latest {last.get('side', '?')} {last.get('symbol', '?')} at {last.get('submitted_at')})")
    out: Outcome
    if not refused:
        text = (f"no rejected order among {len(recent)} closed orders of the last {window}; "
                "no failed submission recorded by the bot")
        out = Outcome.warn(log_note, **details) if log_note else Outcome.ok(text, **details)
    else:
        text = (f"{refused} of {attempts} orders of the last {window} refused: " + "; ".join(parts)
                if failures else parts[0])
        if broker_problem is not None:
            text += f" (the broker's order list is not counted: {broker_problem.message})"
        if log_note:
            text += f"; {log_note}"
        over = refused >= int(p["error_min_rejections"]) and share >= float(p["error_share"])
        # an order endpoint failing on its own (broker_failed's ERROR) stays an error here
        broken = broker_problem is not None and broker_problem.status is Status.ERROR
        out = Outcome.error(text, **details) if over or broken else Outcome.warn(text, **details)
    out.observe("trading_order_failures_recorded", len(failures))
    if broker_problem is None:
        out.observe("trading_orders_rejected", len(rejected)).observe("trading_orders_recent", len(recent))
    return out


def _position_qty(pos: dict[str, Any]) -> float | None:
    q = number(pos.get("qty"))
    if q is None:
        return None
    # Alpaca sends short quantities negative; some bots store abs(qty) with side=short
    return -abs(q) if str(pos.get("side", "")).lower() == "short" else q


def _bot_positions(raw: Any) -> dict[str, float | None]:
    """symbol -> qty from the shapes bots use: {sym: qty}, {sym: {qty}}, [{symbol, qty}], {positions: ...}."""
    if isinstance(raw, dict) and isinstance(raw.get("positions"), (list, dict)):
        raw = raw["positions"]
    out: dict[str, float | None] = {}
    if isinstance(raw, dict):
        for sym, v in raw.items():
            if str(sym).startswith("_"):
                continue
            out[str(sym).upper()] = _position_qty(v) if isinstance(v, dict) else number(v)
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and item.get("symbol"):
                out[str(item["symbol"]).upper()] = _position_qty(item)
    else:
        raise ValueError(f"expected an object or a list, got {type(raw).__name__}")
    return out


@check("FP-4.5")
def position_reconciliation(ctx: Context, p: dict[str, Any]) -> Outcome:
    """A bot that believes it holds what the broker does not (or the reverse) sizes and exits wrongly."""
    raw = positions_or_failure(ctx)
    if isinstance(raw, Outcome):
        return raw
    problems: list[str] = []
    broker: dict[str, float] = {}
    for pos in raw:
        sym = str(pos.get("symbol", "")).upper() if isinstance(pos, dict) else ""
        if not sym:
            problems.append("a position without a symbol")
            continue
        qty = _position_qty(pos)
        if qty is None or qty == 0:
            problems.append(f"{sym} has an invalid quantity {pos.get('qty')!r}")
            continue
        if str(pos.get("side", "")).lower() == "long" and (number(pos.get("qty")) or 0) < 0:
            problems.append(f"{sym} is long with a negative quantity")
        if sym in broker:
            problems.append(f"{sym} listed twice by the broker")
        broker[sym] = broker.get(sym, 0.0) + qty
    details: dict[str, Any] = {"broker_positions": len(broker), "symbols": sorted(broker)}
    bot_file = str(p["bot_positions_file"] or "")
    if not bot_file:
        details["bot_side"] = ("none: the bot keeps no position file in its documented layout; set "
                               "checks.FP-4.5.params.bot_positions_file to compare one")
        compared = "broker positions checked for consistency only (no bot-side record configured)"
    else:
        path = ctx.config.resolve(bot_file)
        details["bot_side"] = str(path)
        try:
            bot = ctx.files.get(path, lambda f: _bot_positions(read_json(f, 3, 0.2)), kind="FP-4.5")
        except FileProblem as exc:
            return Outcome.warn(f"bot position record unreadable: {exc}", **details)
        except ValueError as exc:
            return Outcome.warn(f"bot position record {path.name} has an unknown shape ({exc})", **details)
        tol = float(p["qty_tolerance"])
        only_broker = sorted(set(broker) - set(bot))
        only_bot = sorted(s for s in set(bot) - set(broker) if (bot[s] or 0) != 0)
        differ = sorted(s for s in set(bot) & set(broker)
                        if bot[s] is None or abs((bot[s] or 0) - broker[s]) > tol)
        if only_broker:
            problems.append("held at the broker but unknown to the bot: " + ", ".join(only_broker))
        if only_bot:
            problems.append("the bot believes it holds, the broker does not: " + ", ".join(only_bot))
        for s in differ:
            problems.append(f"{s} quantity: bot {bot[s]}, broker {broker[s]:g}")
        details.update(bot_positions=len(bot), only_at_broker=only_broker, only_in_bot=only_bot, qty_differs=differ)
        compared = f"{len(broker)} broker positions match {path.name}"
    details["problems"] = problems
    out = (Outcome.warn("positions do not reconcile: " + "; ".join(problems[:5]), **details) if problems
           else Outcome.ok(compared, **details))
    return out.observe("trading_position_mismatches", len(problems))


@check("FP-4.6")
def account_status(ctx: Context, p: dict[str, Any]) -> Outcome:
    """An account that is not ACTIVE or is blocked refuses every order, whatever the buying power."""
    acct = account_or_failure(ctx)
    if isinstance(acct, Outcome):
        return acct
    status = str(acct.get("status", "")).upper()
    flags = [f for f in ("trading_blocked", "account_blocked", "trade_suspended_by_user") if acct.get(f) is True]
    details = {"status": status, "blocked_flags": flags, "transfers_blocked": acct.get("transfers_blocked") is True}
    blocked = status != "ACTIVE" or bool(flags)
    out = (Outcome.error("account cannot trade: " + ", ".join(
        ([f"account status {status or 'missing'}"] if status != "ACTIVE" else []) + flags), **details)
        if blocked else Outcome.ok("account ACTIVE, no trading block", **details))
    return out.observe("trading_account_blocked", blocked)


STUCK_STATUSES = ("pending_new", "accepted", "new", "accepted_for_bidding")


@check("FP-4.7")
def stuck_orders(ctx: Context, p: dict[str, Any]) -> Outcome:
    """An order the broker never works (or a market order never filled) ties up buying power and
    the position slot, and usually means routing or the exchange is refusing to act."""
    session = ctx.session()
    try:
        open_orders = _orders(ctx, "open", 500)
    except BrokerError as exc:
        return broker_failed(exc, "list open orders", ctx)
    waiting = [o for o in open_orders if str(o.get("status", "")).lower() in STUCK_STATUSES]
    details: dict[str, Any] = {"open_orders": len(open_orders), "unworked": len(waiting), "market": session.phase}
    if not session.is_open:
        # orders placed or left outside the session legitimately wait for the open
        return Outcome.skipped(f"{session.describe()}: {len(waiting)} open orders wait for the session",
                               **details).observe("trading_orders_stuck", None)
    now = session.now
    opened = datetime.combine(now.astimezone(market.NY).date(), market.REGULAR_OPEN, market.NY).astimezone(UTC)
    resting = {str(t).lower() for t in p["resting_types"]}
    stuck: list[tuple[float, dict[str, Any]]] = []
    for o in waiting:
        status = str(o.get("status", "")).lower()
        otype = str(o.get("type") or o.get("order_type") or "").lower()
        if status == "new" and otype in resting:
            continue  # a limit/stop order acknowledged by the exchange rests on the book by design
        submitted = _when(o, "submitted_at", "created_at")
        if submitted is None:
            continue
        age = (now - max(submitted, opened)).total_seconds()
        if age > float(p["max_age_seconds"]):
            stuck.append((age, o))
    stuck.sort(key=lambda x: -x[0])
    details["stuck"] = [{"symbol": o.get("symbol"), "status": o.get("status"), "type": o.get("type"),
                         "age_seconds": round(a)} for a, o in stuck[:10]]
    if not stuck:
        out = Outcome.ok(f"{len(open_orders)} open orders, none unworked longer than "
                         f"{age_text(float(p['max_age_seconds']))}", **details)
    else:
        age, o = stuck[0]
        text = (f"{len(stuck)} orders not worked by the broker (oldest {o.get('symbol')} {o.get('status')} "
                f"{o.get('type') or ''} for {age_text(age)})")
        out = Outcome.error(text, **details) if age > float(p["error_age_seconds"]) else Outcome.warn(text, **details)
    return out.observe("trading_orders_stuck", len(stuck))


@check("FP-4.8")
def rate_limit_headroom(ctx: Context, p: dict[str, Any]) -> Outcome:
    """The bot shares the key's request budget with us; with no headroom its orders get 429s."""
    rl = ctx.broker.rate_limit
    if "remaining" not in rl:
        return Outcome.skipped("Alpaca sent no X-RateLimit-Remaining header yet (nothing to judge)")
    remaining, limit = rl["remaining"], rl.get("limit")
    details: dict[str, Any] = {"remaining": remaining, "limit": limit, "reset": rl.get("reset")}
    text = f"{remaining}" + (f" of {limit}" if limit else "") + " Alpaca requests left in this window"
    share = remaining / limit if limit else None
    out: Outcome
    if remaining <= int(p["error_remaining"]):
        out = Outcome.error(text + " (orders will be answered 429)", **details)
    elif share is not None and share < float(p["warn_fraction"]):
        out = Outcome.warn(text + f" (below {float(p['warn_fraction']):.0%})", **details)
    else:
        out = Outcome.ok(text, **details)
    return out.observe("trading_alpaca_rate_limit_remaining", remaining).observe(
        "trading_alpaca_rate_limit_limit", limit)


@check("FP-4.9")
def clock_skew(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Cooldowns, freshness limits and market-hours logic all compare local time with the
    market's; a skewed host clock trades outside the session or judges fresh data stale."""
    require_credentials(ctx)
    try:
        offset, err = broker_offset(ctx)
    except BrokerError as exc:
        return broker_failed(exc, "read the broker clock", ctx)
    details = {"offset_seconds": round(offset, 3), "uncertainty_seconds": round(err, 3)}
    skew = abs(offset) - err  # the part of the difference the round trip cannot explain
    direction = "ahead of" if offset < 0 else "behind"
    text = (f"local clock {abs(offset):.1f} s {direction} the broker clock (round-trip bound ±{err:.2f} s)"
            if skew >= 0.05 else f"local clock agrees with the broker clock within ±{max(err, abs(offset)):.2f} s")
    if skew > float(p["error_seconds"]):
        out = Outcome.error(text, **details)
    elif skew > float(p["warn_seconds"]):
        out = Outcome.warn(text, **details)
    else:
        out = Outcome.ok(text, **details)
    return out.observe("trading_clock_offset_seconds", offset)


@check("FP-4.10")
def equity_floor(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Below the floor the account may lose margin or the operator's risk budget is spent."""
    acct = account_or_failure(ctx)
    if isinstance(acct, Outcome):
        return acct
    equity = number(acct.get("equity"))
    floor = float(p["min_equity"])
    warn_at = floor * (1 + float(p["warn_margin_fraction"]))
    details = {"equity": equity, "min_equity": floor, "warn_below": warn_at}
    out: Outcome
    if equity is None:
        out = Outcome.error("account has no numeric equity", **details)
    elif equity < floor:
        out = Outcome.error(f"equity ${equity:,.2f} below the floor ${floor:,.2f}", **details)
    elif equity < warn_at:
        out = Outcome.warn(f"equity ${equity:,.2f} within {float(p['warn_margin_fraction']):.0%} of the floor "
                           f"${floor:,.2f}", **details)
    else:
        out = Outcome.ok(f"equity ${equity:,.2f} above the floor ${floor:,.2f}", **details)
    # equity is also FP-4.3's gauge, but FP-4.3 is skipped while the account is blocked
    return out.observe("trading_account_equity_floor_usd", floor).observe("trading_account_equity_usd", equity)
