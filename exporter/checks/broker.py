"""Execution & Broker (FP-4.x): Alpaca reachability, credentials, account and orders."""

from __future__ import annotations

from typing import Any

from ..broker import BrokerError
from ..context import Context
from ..engine import check
from ..model import Outcome
from .common import number


def account(ctx: Context) -> dict[str, Any]:
    data = ctx.broker_get("/account")
    if not isinstance(data, dict):
        raise BrokerError("bad_response", "Alpaca /v2/account did not return an object")
    return data


@check("FP-4.1")
def alpaca_reachable(ctx: Context, p: dict[str, Any]) -> Outcome:
    if not ctx.broker.configured:
        # without credentials the clock request cannot be made; FP-4.2 names the missing variable
        return Outcome.skipped("Alpaca credentials are not set (see FP-4.2)")
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
    from ..botenv import ALPACA_KEY_VARS

    key_var = env.which(*ALPACA_KEY_VARS)
    details = {"key_variable": key_var, "key_source": env.source.get(key_var or "", "")}
    try:
        account(ctx)
    except BrokerError as exc:
        if exc.kind in ("auth", "forbidden"):
            return Outcome.error(f"{exc} using {key_var} from {details['key_source']}", http_status=exc.status,
                                 code=exc.code, **details)
        return Outcome.error(f"cannot verify credentials: {exc}", problem=exc.kind, **details)
    return Outcome.ok(f"Alpaca accepted the credentials ({key_var})", **details)


@check("FP-4.3")
def buying_power(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        acct = account(ctx)
    except BrokerError as exc:
        return Outcome.error(f"cannot read the account: {exc}")
    bp, equity = number(acct.get("buying_power")), number(acct.get("equity"))
    status = str(acct.get("status", "")).upper()
    flags = [f for f in ("trading_blocked", "account_blocked", "trade_suspended_by_user") if acct.get(f) is True]
    details = {"status": status, "buying_power": bp, "equity": equity, "blocked_flags": flags,
               "min_buying_power": p["min_buying_power"]}
    out: Outcome
    if status != "ACTIVE" or flags:
        why = ([f"account status {status or 'missing'}"] if status != "ACTIVE" else []) + flags
        out = Outcome.error("account cannot trade: " + ", ".join(why), **details)
    elif bp is None:
        out = Outcome.error("account has no numeric buying_power", **details)
    elif bp < p["min_buying_power"]:
        out = Outcome.warn(f"buying power ${bp:,.2f} below the minimum ${p['min_buying_power']:,.2f}", **details)
    else:
        out = Outcome.ok(f"buying power ${bp:,.2f}, account ACTIVE", **details)
    return out.observe("trading_account_buying_power_usd", bp).observe("trading_account_equity_usd", equity)
