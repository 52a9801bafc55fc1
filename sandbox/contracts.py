"""Deterministic option contracts for the UW stand-in: seeded randomness, stable ids, strikes,
OCC symbols and expiries, and the latest regular session (what UW's data refers to)."""

from __future__ import annotations

import random
import uuid
import zlib
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from .factories import REFERENCE_PRICES
from .nyse import ET, market_hours

ID_NAMESPACE = uuid.UUID("0b7f4a8e-5d1c-4f3a-8e62-9c4d2a1b7e35")


def rng(*parts: object) -> random.Random:
    """Seeded per ticker and slot so the same instant always yields the same data."""
    return random.Random(":".join(str(p) for p in parts))


def uid(*parts: object) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, ":".join(str(p) for p in parts)))


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def price_of(ticker: str) -> float:
    """Reference price, or a stable made-up one for tickers the table does not know."""
    known = REFERENCE_PRICES.get(ticker)
    return known if known is not None else 20.0 + zlib.crc32(ticker.encode()) % 400


def strike(price: float, otm: float, call: bool) -> float:
    step = 5.0 if price >= 200 else 2.5 if price >= 50 else 1.0
    raw = price * (1 + otm if call else 1 - otm)
    return max(step, round(raw / step) * step)


def occ(ticker: str, expiry: date, call: bool, strike: float) -> str:
    """OCC option symbol, e.g. ``NVDA261127C00180000``."""
    return f"{ticker}{expiry:%y%m%d}{'C' if call else 'P'}{round(strike * 1000):08d}"


def next_friday(day: date) -> date:
    return day + timedelta(days=(4 - day.weekday()) % 7)


def monthly(day: date) -> date:
    """Third Friday of next month: the standard monthly expiry."""
    first = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return next_friday(first) + timedelta(days=14)


def latest_session(now_et: datetime) -> tuple[datetime, datetime] | None:
    """Today's regular session if it has begun, else the most recent earlier one."""
    day = now_et.date()
    for _ in range(15):
        hours = market_hours(day)
        if hours is not None:
            open_at, close_at = (datetime.combine(day, dtime.fromisoformat(h), tzinfo=ET) for h in hours)
            if open_at <= now_et:
                return open_at, close_at
        day -= timedelta(days=1)
    return None
