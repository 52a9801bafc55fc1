"""Realistic Alpaca JSON objects (numbers as strings, stable ids): assets, positions, orders
and a default account, for tests and the sandbox to seed state with.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from .nyse import ET

#: Ballpark prices so generated positions, orders and UW flow look plausible together.
REFERENCE_PRICES: dict[str, float] = {
    "AAPL": 231.12,
    "NVDA": 178.64,
    "TSLA": 345.20,
    "MSFT": 505.80,
    "AMZN": 222.35,
    "META": 710.45,
    "GOOGL": 248.90,
    "AMD": 162.30,
    "SPY": 664.15,
    "QQQ": 598.70,
    "AVGO": 345.60,
    "NFLX": 1180.25,
}


_ASSET_INFO: dict[str, tuple[str, str]] = {
    "AAPL": ("NASDAQ", "Apple Inc. Common Stock"),
    "NVDA": ("NASDAQ", "NVIDIA Corporation Common Stock"),
    "TSLA": ("NASDAQ", "Tesla, Inc. Common Stock"),
    "MSFT": ("NASDAQ", "Microsoft Corporation Common Stock"),
    "AMZN": ("NASDAQ", "Amazon.com, Inc. Common Stock"),
    "META": ("NASDAQ", "Meta Platforms, Inc. Class A Common Stock"),
    "GOOGL": ("NASDAQ", "Alphabet Inc. Class A Common Stock"),
    "AMD": ("NASDAQ", "Advanced Micro Devices, Inc. Common Stock"),
    "SPY": ("ARCA", "SPDR S&P 500 ETF Trust"),
    "QQQ": ("NASDAQ", "Invesco QQQ Trust, Series 1"),
    "AVGO": ("NASDAQ", "Broadcom Inc. Common Stock"),
    "NFLX": ("NASDAQ", "Netflix, Inc. Common Stock"),
}


#: Terminal order statuses: ``GET /v2/orders?status=closed`` returns these, ``open`` the rest.
CLOSED_ORDER_STATUSES = frozenset({"filled", "canceled", "expired", "replaced", "rejected"})


_ID_NAMESPACE = uuid.UUID("6f1c8a52-2f4e-4d7b-9a51-3c0e2b7d9e10")


def utcnow() -> datetime:
    """Wall-clock time; the default ``time_source`` of both fakes."""
    return datetime.now(UTC)


def stable_id(*parts: object) -> str:
    """Deterministic UUID so the same symbol always gets the same asset/position id."""
    return str(uuid.uuid5(_ID_NAMESPACE, ":".join(str(p) for p in parts)))


def iso_z(moment: datetime) -> str:
    """Alpaca's timestamp style for orders/accounts: UTC with a ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def num(value: float, places: int = 2) -> str:
    """Quantities, prices and ratios as Alpaca sends them: a decimal string, no trailing zeros."""
    text = f"{round(value, places) + 0.0:.{places}f}"  # + 0.0 turns -0.0 into 0.0
    return text.rstrip("0").rstrip(".") if "." in text else text


def money(value: float) -> str:
    """Account and position amounts keep cents, e.g. ``"25000.00"``."""
    return f"{value:.2f}"


def make_asset(
    symbol: str,
    *,
    tradable: bool = True,
    status: str = "active",
    shortable: bool = True,
    fractionable: bool = True,
    exchange: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """An ``/v2/assets/{symbol}`` body as Alpaca sends it (note the ``class`` key)."""
    default_exchange, default_name = _ASSET_INFO.get(symbol, ("NYSE", f"{symbol} Common Stock"))
    return {
        "id": stable_id("asset", symbol),
        "class": "us_equity",
        "exchange": exchange or default_exchange,
        "symbol": symbol,
        "name": name or default_name,
        "status": status,
        "tradable": tradable,
        "marginable": True,
        "maintenance_margin_requirement": 30,
        "margin_requirement_long": "30",
        "margin_requirement_short": "30",
        "shortable": shortable,
        "easy_to_borrow": shortable,
        "fractionable": fractionable,
        "attributes": ["fractional_eh_enabled", "has_options"],
    }


def make_position(
    symbol: str,
    qty: float,
    avg_entry_price: float,
    current_price: float | None = None,
    lastday_price: float | None = None,
) -> dict[str, Any]:
    """A ``/v2/positions`` element with mutually consistent P&L fields; negative qty is short."""
    price = current_price if current_price is not None else REFERENCE_PRICES.get(symbol, avg_entry_price)
    lastday = lastday_price if lastday_price is not None else round(price * 0.995, 2)
    side = "long" if qty >= 0 else "short"
    market_value = qty * price
    cost_basis = qty * avg_entry_price
    unrealized = market_value - cost_basis
    intraday = qty * (price - lastday)
    exchange = _ASSET_INFO.get(symbol, ("NYSE", ""))[0]
    return {
        "asset_id": stable_id("asset", symbol),
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": "us_equity",
        "asset_marginable": True,
        "qty": num(qty, 9),
        "avg_entry_price": num(avg_entry_price, 4),
        "side": side,
        "market_value": money(market_value),
        "cost_basis": money(cost_basis),
        "unrealized_pl": money(unrealized),
        "unrealized_plpc": num(unrealized / abs(cost_basis) if cost_basis else 0.0, 10),
        "unrealized_intraday_pl": money(intraday),
        "unrealized_intraday_plpc": num(intraday / abs(qty * lastday) if qty and lastday else 0.0, 10),
        "current_price": num(price, 4),
        "lastday_price": num(lastday, 4),
        "change_today": num((price - lastday) / lastday if lastday else 0.0, 10),
        "qty_available": num(qty, 9),
    }


def make_order(
    symbol: str,
    qty: float | None = 1,
    side: str = "buy",
    *,
    status: str = "new",
    order_type: str = "market",
    time_in_force: str = "day",
    limit_price: float | None = None,
    stop_price: float | None = None,
    notional: float | None = None,
    submitted_at: datetime | None = None,
    filled_avg_price: float | None = None,
    client_order_id: str | None = None,
    order_id: str | None = None,
    extended_hours: bool = False,
) -> dict[str, Any]:
    """An Alpaca order body; timestamps and fill fields follow ``status`` like the real API."""
    submitted = submitted_at or utcnow()
    filled = status == "filled"
    if filled and filled_avg_price is None:
        filled_avg_price = limit_price or REFERENCE_PRICES.get(symbol, 100.0)
    terminal_at = iso_z(submitted + timedelta(milliseconds=350))
    return {
        "id": order_id or str(uuid.uuid4()),
        "client_order_id": client_order_id or str(uuid.uuid4()),
        "created_at": iso_z(submitted),
        "updated_at": terminal_at if status in CLOSED_ORDER_STATUSES else iso_z(submitted),
        "submitted_at": iso_z(submitted),
        "filled_at": terminal_at if filled else None,
        "expired_at": terminal_at if status == "expired" else None,
        "canceled_at": terminal_at if status == "canceled" else None,
        "failed_at": terminal_at if status == "rejected" else None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": stable_id("asset", symbol),
        "symbol": symbol,
        "asset_class": "us_equity",
        "notional": None if notional is None else num(notional),
        "qty": None if qty is None else num(qty, 9),
        "filled_qty": num(qty or 0, 9) if filled else "0",
        "filled_avg_price": None if filled_avg_price is None else num(filled_avg_price, 4),
        "order_class": "",
        "order_type": order_type,
        "type": order_type,
        "side": side,
        "position_intent": f"{side}_to_{'open' if side == 'buy' else 'close'}",
        "time_in_force": time_in_force,
        "limit_price": None if limit_price is None else num(limit_price, 4),
        "stop_price": None if stop_price is None else num(stop_price, 4),
        "status": status,
        "extended_hours": extended_hours,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "subtag": None,
        "source": None,
        "expires_at": None,
    }


def default_positions() -> list[dict[str, Any]]:
    return [make_position("AAPL", 10, 228.40), make_position("NVDA", 25, 181.20)]


def default_account(positions: list[dict[str, Any]]) -> dict[str, Any]:
    """A margin paper account consistent with the positions: buying power = 2 x (equity - IM)."""
    long_value = sum(float(p["market_value"]) for p in positions if p["side"] == "long")
    initial_margin = long_value * 0.5
    buying_power = 25000.0
    equity = buying_power / 2 + initial_margin
    cash = equity - long_value
    account_number = "PA3SIM0NT8QZ"
    return {
        "id": stable_id("account", account_number),
        "admin_configurations": {},
        "user_configurations": None,
        "account_number": account_number,
        "status": "ACTIVE",
        "crypto_status": "ACTIVE",
        "options_approved_level": 2,
        "options_trading_level": 2,
        "currency": "USD",
        "buying_power": money(buying_power),
        "regt_buying_power": money(buying_power),
        "effective_buying_power": money(buying_power),
        "non_marginable_buying_power": money(cash),
        "options_buying_power": money(cash),
        "cash": money(cash),
        "accrued_fees": "0",
        "portfolio_value": money(equity),
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": "2025-03-11T17:02:41.155741Z",
        "trade_suspended_by_user": False,
        "multiplier": "2",
        "shorting_enabled": True,
        "equity": money(equity),
        "last_equity": money(equity - 85.85),
        "long_market_value": money(long_value),
        "short_market_value": "0",
        "position_market_value": money(long_value),
        "initial_margin": money(initial_margin),
        "maintenance_margin": money(long_value * 0.3),
        "last_maintenance_margin": money(long_value * 0.3),
        "sma": money(equity),
        "balance_asof": (utcnow().astimezone(ET).date() - timedelta(days=1)).isoformat(),
        "crypto_tier": 1,
        "intraday_adjustments": "0",
        "pending_reg_taf_fees": "0",
    }


def default_orders() -> list[dict[str, Any]]:
    """The two fills that opened the default positions (so ``status=closed`` is not empty)."""
    base = utcnow() - timedelta(days=2)
    return [
        make_order("AAPL", 10, "buy", status="filled", submitted_at=base, filled_avg_price=228.40),
        make_order(
            "NVDA",
            25,
            "buy",
            status="filled",
            submitted_at=base + timedelta(minutes=7),
            filled_avg_price=181.20,
        ),
    ]
