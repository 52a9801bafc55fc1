"""The NYSE calendar for the stand-ins: holidays, early closes, sessions and Alpaca's clock.

Shared by the Alpaca and UW stand-ins (market-hours-aware data) and the simulated bot.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

ET = ZoneInfo("America/New_York")


def parse_when(text: str) -> datetime:
    """Parse an ISO timestamp or date as Alpaca accepts them (naive means UTC)."""
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def _last_weekday(year: int, month: int, weekday: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous algorithm); Good Friday is two days earlier."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ll = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 19 * ll) // 433
    month = (h + ll - 7 * m + 90) // 25
    day = (h + ll - 7 * m + 33 * month + 19) % 32
    return date(year, month, day)


def _observed(day: date) -> date:
    if day.weekday() == 5:
        return day - timedelta(days=1)
    if day.weekday() == 6:
        return day + timedelta(days=1)
    return day


@functools.lru_cache(maxsize=64)
def nyse_holidays(year: int) -> dict[date, str]:
    """Full-day NYSE closures of ``year`` (a Saturday New Year's Day is not observed)."""
    holidays: dict[date, str] = {}
    new_year = date(year, 1, 1)
    if new_year.weekday() != 5:
        holidays[_observed(new_year)] = "New Year's Day"
    holidays[_nth_weekday(year, 1, 0, 3)] = "Martin Luther King, Jr. Day"
    holidays[_nth_weekday(year, 2, 0, 3)] = "Washington's Birthday"
    holidays[_easter(year) - timedelta(days=2)] = "Good Friday"
    holidays[_last_weekday(year, 5, 0)] = "Memorial Day"
    if year >= 2022:
        holidays[_observed(date(year, 6, 19))] = "Juneteenth National Independence Day"
    holidays[_observed(date(year, 7, 4))] = "Independence Day"
    holidays[_nth_weekday(year, 9, 0, 1)] = "Labor Day"
    holidays[_nth_weekday(year, 11, 3, 4)] = "Thanksgiving Day"
    holidays[_observed(date(year, 12, 25))] = "Christmas Day"
    return holidays


@functools.lru_cache(maxsize=64)
def _early_closes(year: int) -> frozenset[date]:
    """13:00 closes: July 3 and Dec 24 when Mon-Thu, and the day after Thanksgiving."""
    days = {_nth_weekday(year, 11, 3, 4) + timedelta(days=1)}
    for candidate in (date(year, 7, 3), date(year, 12, 24)):
        if candidate.weekday() <= 3:
            days.add(candidate)
    return frozenset(days - nyse_holidays(year).keys())


def market_hours(day: date) -> tuple[str, str] | None:
    """Regular-session ``(open, close)`` as ``"HH:MM"`` for ``day`` by NYSE rules, None if closed."""
    if day.weekday() >= 5 or day in nyse_holidays(day.year):
        return None
    return ("09:30", "13:00") if day in _early_closes(day.year) else ("09:30", "16:00")


def _next_trading_day(day: date) -> date:
    nxt = day + timedelta(days=1)
    while market_hours(nxt) is None:
        nxt += timedelta(days=1)
    return nxt


def generate_calendar(start: date, end: date) -> list[dict[str, Any]]:
    """Alpaca ``/v2/calendar`` entries for trading days in ``[start, end]`` by NYSE rules."""
    entries: list[dict[str, Any]] = []
    day = start
    while day <= end:
        hours = market_hours(day)
        if hours is not None:
            entries.append(
                {
                    "date": day.isoformat(),
                    "open": hours[0],
                    "close": hours[1],
                    "session_open": "0400",
                    "session_close": "1700" if hours[1] == "13:00" else "2000",
                    "settlement_date": _next_trading_day(day).isoformat(),
                }
            )
        day += timedelta(days=1)
    return entries


class _Sessions:
    """Regular sessions from explicit calendar entries, falling back to NYSE rules outside them."""

    def __init__(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self._explicit: dict[date, tuple[datetime, datetime]] = {}
        for entry in entries:
            day = date.fromisoformat(str(entry["date"]))
            self._explicit[day] = (self._at(day, str(entry["open"])), self._at(day, str(entry["close"])))
        self._lo = min(self._explicit, default=None)
        self._hi = max(self._explicit, default=None)

    @staticmethod
    def _at(day: date, hhmm: str) -> datetime:
        return datetime.combine(day, dtime.fromisoformat(hhmm), tzinfo=ET)

    def get(self, day: date) -> tuple[datetime, datetime] | None:
        """The session on ``day``; inside the explicit range a missing date means closed."""
        if self._lo is not None and self._hi is not None and self._lo <= day <= self._hi:
            return self._explicit.get(day)
        hours = market_hours(day)
        return None if hours is None else (self._at(day, hours[0]), self._at(day, hours[1]))

    def after(self, day: date) -> tuple[datetime, datetime]:
        """The first session strictly after ``day``."""
        for offset in range(1, 400):
            session = self.get(day + timedelta(days=offset))
            if session is not None:
                return session
        raise RuntimeError(f"no trading session within 400 days after {day}")


def market_clock(now: datetime, calendar: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Alpaca ``/v2/clock`` JSON at ``now`` (aware), honouring ``calendar`` entries over rules."""
    sessions = _Sessions(calendar)
    now_et = now.astimezone(ET)
    today = sessions.get(now_et.date())
    if today is not None and today[0] <= now_et < today[1]:
        is_open, next_open, next_close = True, sessions.after(now_et.date())[0], today[1]
    elif today is not None and now_et < today[0]:
        is_open, (next_open, next_close) = False, today
    else:
        is_open, (next_open, next_close) = False, sessions.after(now_et.date())
    return {
        "timestamp": now_et.isoformat(timespec="microseconds"),
        "is_open": is_open,
        "next_open": next_open.isoformat(timespec="seconds"),
        "next_close": next_close.isoformat(timespec="seconds"),
    }
