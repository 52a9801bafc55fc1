"""The market session, from the broker's clock and calendar.

Freshness limits that ignore market hours page all night and restart-loop the daemon, so every
activity check asks this module which phase the market is in. The broker's clock is the truth
(holidays, half days); when it cannot be reached the phase is computed from America/New_York
regular hours and marked ``source="local"`` so nobody mistakes it for the broker's word.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)


@dataclass(frozen=True)
class Session:
    phase: str  # "open", "premarket" (within the pre-market window before the open) or "closed"
    now: datetime
    next_open: datetime | None
    next_close: datetime | None
    source: str  # "broker" or "local"
    reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.phase == "open"

    def describe(self) -> str:
        if self.is_open:
            return "market open"
        return f"market closed ({self.reason})" if self.reason else "market closed"

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "is_open": self.is_open,
            "next_open": self.next_open.isoformat() if self.next_open else None,
            "next_close": self.next_close.isoformat() if self.next_close else None,
            "source": self.source,
            "reason": self.reason,
        }


def parse_ts(value: Any) -> datetime | None:
    """Parse an ISO timestamp (Alpaca sends offsets like -05:00 and nanoseconds) to aware UTC."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Python's fromisoformat takes at most microseconds
    if "." in text:
        head, _, rest = text.partition(".")
        # only the leading digits are the fraction; "-05:00" after them is the offset
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _closed_reason(now: datetime, calendar_days: set[date] | None) -> str:
    local = now.astimezone(NY)
    if local.weekday() >= 5:
        return "weekend"
    if calendar_days is not None and local.date() not in calendar_days:
        return "holiday"
    if local.time() < REGULAR_OPEN:
        return "before the open"
    return "after the close"


def from_clock(clock: dict[str, Any], now: datetime, premarket_seconds: float,
               calendar_days: set[date] | None = None) -> Session:
    """Build the session from a ``/v2/clock`` answer fetched earlier; ``now`` moves it forward."""
    next_open = parse_ts(clock.get("next_open"))
    next_close = parse_ts(clock.get("next_close"))
    is_open = bool(clock.get("is_open"))
    # a cached clock stays right across a boundary: open until next_close, closed until next_open
    if is_open and next_close is not None and now >= next_close:
        is_open = False
    elif not is_open and next_open is not None and now >= next_open and (next_close is None or now < next_close):
        is_open = True
    if is_open:
        return Session("open", now, next_open, next_close, "broker")
    phase = "closed"
    if next_open is not None and 0 <= (next_open - now).total_seconds() <= premarket_seconds:
        phase = "premarket"
    return Session(phase, now, next_open, next_close, "broker", _closed_reason(now, calendar_days))


def local_session(now: datetime, premarket_seconds: float) -> Session:
    """Regular hours in America/New_York, no holidays: used only when the broker is unreachable."""
    local = now.astimezone(NY)

    def at(d: date, t: time) -> datetime:
        return datetime.combine(d, t, NY).astimezone(UTC)

    def next_trading_day(d: date) -> date:
        d += timedelta(days=1)
        while d.weekday() >= 5:
            d += timedelta(days=1)
        return d

    today = local.date()
    if today.weekday() < 5 and REGULAR_OPEN <= local.time() < REGULAR_CLOSE:
        nxt = next_trading_day(today)
        return Session("open", now, at(nxt, REGULAR_OPEN), at(today, REGULAR_CLOSE), "local")
    if today.weekday() < 5 and local.time() < REGULAR_OPEN:
        open_day = today
    else:
        open_day = next_trading_day(today)
    next_open = at(open_day, REGULAR_OPEN)
    phase = "premarket" if (next_open - now).total_seconds() <= premarket_seconds else "closed"
    return Session(phase, now, next_open, at(open_day, REGULAR_CLOSE), "local", _closed_reason(now, None))


def calendar_days(calendar: Any) -> set[date]:
    """The trading days in a ``/v2/calendar`` answer."""
    days: set[date] = set()
    if isinstance(calendar, list):
        for entry in calendar:
            if isinstance(entry, dict) and isinstance(entry.get("date"), str):
                try:
                    days.add(date.fromisoformat(entry["date"][:10]))
                except ValueError:
                    continue
    return days


def session_close_times(calendar: Any) -> dict[date, datetime]:
    """Close time per trading day (half days close early), as aware UTC datetimes."""
    out: dict[date, datetime] = {}
    if not isinstance(calendar, list):
        return out
    for entry in calendar:
        try:
            d = date.fromisoformat(str(entry["date"])[:10])
            hh, mm = str(entry["close"]).split(":")[:2]
            out[d] = datetime.combine(d, time(int(hh), int(mm)), NY).astimezone(UTC)
        except (KeyError, ValueError, TypeError):
            continue
    return out
