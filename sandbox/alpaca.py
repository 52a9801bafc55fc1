"""A fake Alpaca trading API on loopback, plus the fault-injecting HTTP server both fakes share.

Why: the exporter, its tests, ``trading-readiness sandbox`` and the benchmarks need real HTTP
against something that answers like Alpaca -- same paths, same JSON shapes (numbers as strings),
same error bodies -- and that can fail on demand the ways Alpaca really fails (a revoked key, a
403 without a ``code``, rate limiting, hangs, an HTML maintenance page) without touching the
network or a real account. Stdlib only, so it runs anywhere the exporter runs.

The shared :class:`SimServer` base lives here (and :mod:`sandbox.uw` imports it) so that
both fakes inject faults, count requests and expose the ``/_admin/`` API identically.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

__all__ = [
    "CLOSED_ORDER_STATUSES",
    "ET",
    "REFERENCE_PRICES",
    "FakeAlpaca",
    "SimResponse",
    "SimServer",
    "generate_calendar",
    "make_asset",
    "make_order",
    "make_position",
    "market_clock",
    "market_hours",
    "nyse_holidays",
]

_log = logging.getLogger(__name__)

ET = ZoneInfo("America/New_York")

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
_MAX_BODY = 1 << 20
_FAULT_MODES = frozenset({"401", "403", "429", "500", "nonjson"})
_NONJSON_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Service Temporarily Unavailable</title></head>"
    b"<body><h1>We'll be back soon</h1><p>Scheduled maintenance in progress.</p></body></html>\n"
)


def _utcnow() -> datetime:
    """Wall-clock time; the default ``time_source`` of both fakes."""
    return datetime.now(UTC)


def _stable_id(*parts: object) -> str:
    """Deterministic UUID so the same symbol always gets the same asset/position id."""
    return str(uuid.uuid5(_ID_NAMESPACE, ":".join(str(p) for p in parts)))


def _iso_z(moment: datetime) -> str:
    """Alpaca's timestamp style for orders/accounts: UTC with a ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(value: float, places: int = 2) -> str:
    """Quantities, prices and ratios as Alpaca sends them: a decimal string, no trailing zeros."""
    text = f"{round(value, places) + 0.0:.{places}f}"  # + 0.0 turns -0.0 into 0.0
    return text.rstrip("0").rstrip(".") if "." in text else text


def _money(value: float) -> str:
    """Account and position amounts keep cents, e.g. ``"25000.00"``."""
    return f"{value:.2f}"


def _parse_when(text: str) -> datetime:
    """Parse an ISO timestamp or date as Alpaca accepts them (naive means UTC)."""
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Market calendar (NYSE rules), shared with the UW fake for its market-hours-aware data.
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Realistic Alpaca JSON builders (public: tests and the sandbox use them to seed state).
# --------------------------------------------------------------------------------------------


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
        "id": _stable_id("asset", symbol),
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
        "asset_id": _stable_id("asset", symbol),
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": "us_equity",
        "asset_marginable": True,
        "qty": _num(qty, 9),
        "avg_entry_price": _num(avg_entry_price, 4),
        "side": side,
        "market_value": _money(market_value),
        "cost_basis": _money(cost_basis),
        "unrealized_pl": _money(unrealized),
        "unrealized_plpc": _num(unrealized / abs(cost_basis) if cost_basis else 0.0, 10),
        "unrealized_intraday_pl": _money(intraday),
        "unrealized_intraday_plpc": _num(intraday / abs(qty * lastday) if qty and lastday else 0.0, 10),
        "current_price": _num(price, 4),
        "lastday_price": _num(lastday, 4),
        "change_today": _num((price - lastday) / lastday if lastday else 0.0, 10),
        "qty_available": _num(qty, 9),
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
    submitted = submitted_at or _utcnow()
    filled = status == "filled"
    if filled and filled_avg_price is None:
        filled_avg_price = limit_price or REFERENCE_PRICES.get(symbol, 100.0)
    terminal_at = _iso_z(submitted + timedelta(milliseconds=350))
    return {
        "id": order_id or str(uuid.uuid4()),
        "client_order_id": client_order_id or str(uuid.uuid4()),
        "created_at": _iso_z(submitted),
        "updated_at": terminal_at if status in CLOSED_ORDER_STATUSES else _iso_z(submitted),
        "submitted_at": _iso_z(submitted),
        "filled_at": terminal_at if filled else None,
        "expired_at": terminal_at if status == "expired" else None,
        "canceled_at": terminal_at if status == "canceled" else None,
        "failed_at": terminal_at if status == "rejected" else None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": _stable_id("asset", symbol),
        "symbol": symbol,
        "asset_class": "us_equity",
        "notional": None if notional is None else _num(notional),
        "qty": None if qty is None else _num(qty, 9),
        "filled_qty": _num(qty or 0, 9) if filled else "0",
        "filled_avg_price": None if filled_avg_price is None else _num(filled_avg_price, 4),
        "order_class": "",
        "order_type": order_type,
        "type": order_type,
        "side": side,
        "position_intent": f"{side}_to_{'open' if side == 'buy' else 'close'}",
        "time_in_force": time_in_force,
        "limit_price": None if limit_price is None else _num(limit_price, 4),
        "stop_price": None if stop_price is None else _num(stop_price, 4),
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


def _default_positions() -> list[dict[str, Any]]:
    return [make_position("AAPL", 10, 228.40), make_position("NVDA", 25, 181.20)]


def _default_account(positions: list[dict[str, Any]]) -> dict[str, Any]:
    """A margin paper account consistent with the positions: buying power = 2 x (equity - IM)."""
    long_value = sum(float(p["market_value"]) for p in positions if p["side"] == "long")
    initial_margin = long_value * 0.5
    buying_power = 25000.0
    equity = buying_power / 2 + initial_margin
    cash = equity - long_value
    account_number = "PA3SIM0NT8QZ"
    return {
        "id": _stable_id("account", account_number),
        "admin_configurations": {},
        "user_configurations": None,
        "account_number": account_number,
        "status": "ACTIVE",
        "crypto_status": "ACTIVE",
        "options_approved_level": 2,
        "options_trading_level": 2,
        "currency": "USD",
        "buying_power": _money(buying_power),
        "regt_buying_power": _money(buying_power),
        "effective_buying_power": _money(buying_power),
        "non_marginable_buying_power": _money(cash),
        "options_buying_power": _money(cash),
        "cash": _money(cash),
        "accrued_fees": "0",
        "portfolio_value": _money(equity),
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": "2025-03-11T17:02:41.155741Z",
        "trade_suspended_by_user": False,
        "multiplier": "2",
        "shorting_enabled": True,
        "equity": _money(equity),
        "last_equity": _money(equity - 85.85),
        "long_market_value": _money(long_value),
        "short_market_value": "0",
        "position_market_value": _money(long_value),
        "initial_margin": _money(initial_margin),
        "maintenance_margin": _money(long_value * 0.3),
        "last_maintenance_margin": _money(long_value * 0.3),
        "sma": _money(equity),
        "balance_asof": (_utcnow().astimezone(ET).date() - timedelta(days=1)).isoformat(),
        "crypto_tier": 1,
        "intraday_adjustments": "0",
        "pending_reg_taf_fees": "0",
    }


def _default_orders() -> list[dict[str, Any]]:
    """The two fills that opened the default positions (so ``status=closed`` is not empty)."""
    base = _utcnow() - timedelta(days=2)
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


# --------------------------------------------------------------------------------------------
# Shared server machinery.
# --------------------------------------------------------------------------------------------


@dataclass
class SimResponse:
    """One HTTP answer, built by route code and written by the request handler."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> SimResponse:
        """Serialise ``payload`` compactly, like the real APIs."""
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), headers=dict(headers or {}))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _HTTPServer(ThreadingHTTPServer):
    """Knows its owning fake, whether it is closing, and its live sockets (to cut them on stop)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: SimServer) -> None:
        self.sim = sim
        self.closing = False
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        """Remember open connections so stop() can unblock idle keep-alive readers."""
        with self.connections_lock:
            if alive:
                self.connections.add(conn)
            else:
                self.connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients vanishing mid-answer (timeouts, hang tests) are normal here, not errors."""
        _log.debug("sim connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: reads the request, asks the fake for an answer, writes it."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "sim"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are dropped after this many seconds

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        if self.server.closing:
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._send(SimResponse.of_json(400, {"message": "bad Content-Length"}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        client = self.client_address[0]
        answer = self.server.sim._answer(method, self.path, self.headers, body, client, self.server)
        if answer is None:  # server stopping: drop the connection without an answer
            self.close_connection = True
            return
        self._send(answer)

    def _send(self, answer: SimResponse) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


def _parse_mode(mode: str, extra: frozenset[str]) -> tuple[str, float]:
    """Validate a fault mode; returns ``(kind, delay_seconds)``."""
    if mode.startswith("slow:"):
        try:
            delay = float(mode[5:])
        except ValueError:
            raise ValueError(f"bad slow mode {mode!r}: expected slow:<seconds>") from None
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"bad slow mode {mode!r}: delay must be a finite number >= 0")
        return "slow", delay
    if mode in {"ok", "hang"} | _FAULT_MODES | extra:
        return mode, 0.0
    known = sorted({"ok", "hang", "slow:<seconds>"} | _FAULT_MODES | extra)
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(known)}")


class SimServer:
    """Loopback HTTP server with fault modes, per-path request counters and an ``/_admin/`` API.

    Subclasses provide authentication, fault bodies, quota accounting and the routes. State is
    guarded by ``lock`` (re-entrant) so tests can mutate it while requests are in flight.
    """

    #: Extra modes a subclass understands besides ok/hang/slow and the generic faults.
    extra_modes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.lock = threading.RLock()
        self.time_source: Callable[[], datetime] = _utcnow
        self._cond = threading.Condition(self.lock)
        self._mode = "ok"
        self._mode_kind = "ok"
        self._mode_delay = 0.0
        self._mode_paths: tuple[str, ...] | None = None
        self._counts: Counter[str] = Counter()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 picks a free port) and serve in a daemon thread."""
        with self.lock:
            if self._httpd is not None:
                raise RuntimeError(f"{type(self).__name__} already started on {self.url}")
            httpd = _HTTPServer((self.host, self.port), self)
            self._httpd = httpd
            self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; returns promptly even while requests hang (they are dropped)."""
        with self._cond:
            httpd = self._httpd
            if httpd is None:
                return
            self._httpd = None
            httpd.closing = True
            self._cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        with httpd.connections_lock:
            live = list(httpd.connections)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43211`` (no trailing slash, no API version)."""
        if self.port == 0:
            raise RuntimeError(f"{type(self).__name__} has no port yet: call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- fault injection and counters -------------------------------------------------------

    def set_mode(self, mode: str, paths: list[str] | None = None) -> None:
        """Switch fault mode for requests whose path starts with one of ``paths`` (None: all)."""
        kind, delay = _parse_mode(mode, self.extra_modes)
        if paths is not None and (
            isinstance(paths, str) or not all(isinstance(p, str) and p.startswith("/") for p in paths)
        ):
            raise ValueError("paths must be a list of path prefixes starting with '/'")
        with self._cond:
            self._mode, self._mode_kind, self._mode_delay = mode, kind, delay
            self._mode_paths = None if paths is None else tuple(paths)
            self._cond.notify_all()  # release hanging requests the new mode no longer covers

    @property
    def mode(self) -> str:
        """The current mode string as last passed to set_mode()."""
        return self._mode

    def request_count(self, path_prefix: str = "") -> int:
        """API requests received (admin calls excluded) whose path starts with ``path_prefix``."""
        with self.lock:
            return sum(n for path, n in self._counts.items() if path.startswith(path_prefix))

    def _mode_for(self, path: str) -> tuple[str, float]:
        with self.lock:
            paths = self._mode_paths
            if paths is None or any(path.startswith(p) for p in paths):
                return self._mode_kind, self._mode_delay
            return "ok", 0.0

    def _wait(self, httpd: _HTTPServer, done: Callable[[], bool] | None, timeout: float | None) -> bool:
        """Block until ``done()`` or ``timeout``; False when the server is stopping meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not httpd.closing:
                if done is not None and done():
                    return True
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(min(remaining, 1.0))
            return False

    # -- request pipeline -------------------------------------------------------------------

    def _answer(
        self, method: str, raw_path: str, headers: Message, body: bytes, client: str, httpd: _HTTPServer
    ) -> SimResponse | None:
        """Admin routing, counting, fault modes, auth, quota, then the subclass routes."""
        split = urlsplit(raw_path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if path.startswith("/_admin/"):
            if not _is_loopback(client):
                return SimResponse.of_json(403, {"message": "admin API is loopback only"})
            return self._admin(method, path, body)
        with self.lock:
            self._counts[path] += 1
            quota_headers, over_quota = self._consume_quota()
        kind, delay = self._mode_for(path)
        while kind in ("hang", "slow"):
            if kind == "hang":
                ok = self._wait(httpd, lambda: self._mode_for(path)[0] != "hang", None)
            else:
                ok = self._wait(httpd, None, delay)
            if not ok:
                return None
            kind, delay = self._mode_for(path) if kind == "hang" else ("ok", 0.0)
        if kind in _FAULT_MODES:
            answer = self._fault(kind)
        elif not self._authorized(headers):
            answer = self._unauthorized()
        elif over_quota is not None:
            answer = over_quota
        else:
            try:
                answer = self._route(method, path, query, body, kind)
            except Exception:
                _log.exception("%s: error answering %s %s", type(self).__name__, method, raw_path)
                answer = self._fault("500")
        answer.headers = {**quota_headers, **answer.headers}
        return answer

    def _admin(self, method: str, path: str, body: bytes) -> SimResponse:
        try:
            payload = json.loads(body) if body else {}
            if method == "GET" and path == "/_admin/state":
                return SimResponse.of_json(200, self.state())
            if method == "POST" and path == "/_admin/mode":
                if not isinstance(payload, dict) or not isinstance(payload.get("mode"), str):
                    raise ValueError('expected {"mode": "...", "paths": [...]|null}')
                self.set_mode(payload["mode"], payload.get("paths"))
                return SimResponse.of_json(200, {"mode": self._mode, "paths": payload.get("paths")})
            if method == "POST" and path == "/_admin/state":
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object")
                self.apply_state(payload)
                return SimResponse.of_json(200, self.state())
        except (ValueError, TypeError, KeyError) as exc:
            return SimResponse.of_json(400, {"message": str(exc)})
        return SimResponse.of_json(404, {"message": f"no admin route {method} {path}"})

    def state(self) -> dict[str, Any]:
        """Snapshot for ``GET /_admin/state``; subclasses add their own state."""
        with self.lock:
            return {
                "mode": self._mode,
                "paths": None if self._mode_paths is None else list(self._mode_paths),
                "request_counts": dict(self._counts),
            }

    # -- subclass hooks ---------------------------------------------------------------------

    def apply_state(self, payload: Mapping[str, Any]) -> None:
        """Apply ``POST /_admin/state``; the base has no mutable state of its own."""
        raise ValueError(f"{type(self).__name__} has no settable state")

    def _consume_quota(self) -> tuple[dict[str, str], SimResponse | None]:
        """Count one request against the quota: headers for every answer, and a rejection if over."""
        return {}, None

    def _authorized(self, headers: Message) -> bool:
        raise NotImplementedError

    def _unauthorized(self) -> SimResponse:
        return self._fault("401")

    def _fault(self, kind: str) -> SimResponse:
        raise NotImplementedError

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, mode: str) -> SimResponse:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Alpaca.
# --------------------------------------------------------------------------------------------

_ORDER_TYPES = frozenset({"market", "limit", "stop", "stop_limit", "trailing_stop"})
_TIME_IN_FORCE = frozenset({"day", "gtc", "opg", "cls", "ioc", "fok"})
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/v2/account"), "_get_account"),
    ("GET", re.compile(r"/v2/clock"), "_get_clock"),
    ("GET", re.compile(r"/v2/calendar"), "_get_calendar"),
    ("GET", re.compile(r"/v2/positions"), "_get_positions"),
    ("GET", re.compile(r"/v2/positions/(?P<key>[^/]+)"), "_get_position"),
    ("GET", re.compile(r"/v2/orders"), "_get_orders"),
    ("POST", re.compile(r"/v2/orders"), "_post_order"),
    ("GET", re.compile(r"/v2/orders:by_client_order_id"), "_get_order_by_client_id"),
    ("GET", re.compile(r"/v2/orders/(?P<key>[^/]+)"), "_get_order"),
    ("GET", re.compile(r"/v2/assets/(?P<key>[^/]+)"), "_get_asset"),
]


def _alpaca_error(status: int, code: int, message: str) -> SimResponse:
    return SimResponse.of_json(status, {"code": code, "message": message})


class FakeAlpaca(SimServer):
    """Answers like ``paper-api.alpaca.markets`` for the read paths the exporter probes.

    Point alpaca-py at it with ``TradingClient(key, secret, url_override=srv.url)``. ``POST
    /v2/orders`` works but records every attempt in ``submitted_orders`` so tests can prove that
    a probe never trades.
    """

    def __init__(
        self,
        key: str = "PKTEST",
        secret: str = "SECRETTEST",  # noqa: S107 - a fake's test credential, not a secret
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.key = key
        self.secret = secret
        #: Requests per wall-clock minute before 429 (Alpaca's default is 200).
        self.rate_limit: int = 200
        self._rl_window = 0
        self._rl_used = 0
        self._positions = _default_positions()
        self._account = _default_account(self._positions)
        self._orders = _default_orders()
        self._assets = {symbol: make_asset(symbol) for symbol in REFERENCE_PRICES}
        self._clock: dict[str, Any] | None = None
        self._calendar: list[dict[str, Any]] | None = None
        self._generated_calendar: tuple[date, list[dict[str, Any]]] | None = None
        self._submitted: list[dict[str, Any]] = []
        #: Fill market orders at once while the clock is open, moving the position like a paper
        #: account does (off: orders stay ``accepted``, the probe tests' "nothing fills").
        self.fill_market_orders = False
        #: When set, every new order is recorded and answered ``rejected`` with this reason.
        self.reject_orders: str | None = None
        #: When set to (HTTP status, message), every new order is recorded in ``submitted_orders``
        #: and refused with that status and ``{"code": ..., "message": ...}``, no order created
        #: (403 ``40310000`` or 422 ``42210000``, as Alpaca refuses a submission).
        self.refuse_orders: tuple[int, str] | None = None
        #: How far the broker's clock runs ahead of this host's (negative: behind), in seconds.
        self.clock_skew_seconds = 0.0

    # -- state (assignments take the lock; in-place edits of the live objects are also seen) --

    @property
    def account(self) -> dict[str, Any]:
        """``GET /v2/account`` body."""
        return self._account

    @account.setter
    def account(self, value: dict[str, Any]) -> None:
        with self.lock:
            self._account = value

    @property
    def clock(self) -> dict[str, Any] | None:
        """None: computed from ``time_source`` and the calendar; a dict overrides those fields."""
        return self._clock

    @clock.setter
    def clock(self, value: dict[str, Any] | None) -> None:
        with self.lock:
            self._clock = value

    @property
    def calendar(self) -> list[dict[str, Any]]:
        """Explicit entries if set, else NYSE-rule days from 30 days ago to 30 days ahead."""
        with self.lock:
            if self._calendar is not None:
                return self._calendar
            today = self.time_source().astimezone(ET).date()
            if self._generated_calendar is None or self._generated_calendar[0] != today:
                days = timedelta(days=30)
                self._generated_calendar = (today, generate_calendar(today - days, today + days))
            return self._generated_calendar[1]

    @calendar.setter
    def calendar(self, value: list[dict[str, Any]] | None) -> None:
        with self.lock:
            self._calendar = value

    @property
    def positions(self) -> list[dict[str, Any]]:
        """``GET /v2/positions`` body."""
        return self._positions

    @positions.setter
    def positions(self, value: list[dict[str, Any]]) -> None:
        with self.lock:
            self._positions = value

    @property
    def orders(self) -> list[dict[str, Any]]:
        """All known orders, open and closed; ``GET /v2/orders`` filters them."""
        return self._orders

    @orders.setter
    def orders(self, value: list[dict[str, Any]]) -> None:
        with self.lock:
            self._orders = value

    @property
    def assets(self) -> dict[str, dict[str, Any]]:
        """Symbol -> ``GET /v2/assets/{symbol}`` body."""
        return self._assets

    @assets.setter
    def assets(self, value: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            self._assets = value

    @property
    def submitted_orders(self) -> list[dict[str, Any]]:
        """Raw JSON bodies of every ``POST /v2/orders`` that passed auth, accepted or not."""
        return self._submitted

    def state(self) -> dict[str, Any]:
        """Everything a sandbox operator may want to see, as JSON."""
        with self.lock:
            snapshot = super().state()
            snapshot.update(
                account=self._account,
                clock=self._clock,
                effective_clock=self._effective_clock(),
                positions=self._positions,
                orders=self._orders,
                submitted_orders=self._submitted,
                rate_limit=self.rate_limit,
                rate_limit_used=self._rl_used,
            )
            return copy.deepcopy(snapshot)

    def apply_state(self, payload: Mapping[str, Any]) -> None:
        """``POST /_admin/state``: account is merged, the other keys replace."""
        checks: dict[str, Callable[[Any], bool]] = {
            "account": lambda v: isinstance(v, dict),
            "positions": lambda v: isinstance(v, list),
            "orders": lambda v: isinstance(v, list),
            "clock": lambda v: v is None or isinstance(v, dict),
            "calendar": lambda v: v is None or isinstance(v, list),
            "assets": lambda v: isinstance(v, dict),
            "submitted_orders": lambda v: isinstance(v, list),
            "rate_limit": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        }
        unknown = set(payload) - checks.keys()
        if unknown:
            raise ValueError(f"unknown state keys: {sorted(unknown)}")
        for key, value in payload.items():
            if not checks[key](value):
                raise ValueError(f"bad type for {key!r}")
        with self.lock:
            if "account" in payload:
                self._account = {**self._account, **payload["account"]}
            if "positions" in payload:
                self._positions = payload["positions"]
            if "orders" in payload:
                self._orders = payload["orders"]
            if "clock" in payload:
                self._clock = payload["clock"]
            if "calendar" in payload:
                self._calendar = payload["calendar"]
            if "assets" in payload:
                self._assets = payload["assets"]
            if "submitted_orders" in payload:
                self._submitted = payload["submitted_orders"]
            if "rate_limit" in payload:
                self.rate_limit = payload["rate_limit"]

    # -- pipeline hooks ---------------------------------------------------------------------

    def _consume_quota(self) -> tuple[dict[str, str], SimResponse | None]:
        window = int(self.time_source().timestamp() // 60) * 60
        if window != self._rl_window:
            self._rl_window, self._rl_used = window, 0
        self._rl_used += 1
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - self._rl_used)),
            "X-RateLimit-Reset": str(window + 60),
        }
        over = self._rl_used > self.rate_limit
        return headers, self._fault("429") if over else None

    def _authorized(self, headers: Message) -> bool:
        key, secret = headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")
        return key == self.key and secret == self.secret

    def _fault(self, kind: str) -> SimResponse:
        if kind == "401":
            return _alpaca_error(401, 40110000, "request is not authorized")
        if kind == "403":
            return SimResponse.of_json(403, {"message": "forbidden."})
        if kind == "429":
            answer = _alpaca_error(429, 42910000, "rate limit exceeded")
            answer.headers["X-RateLimit-Remaining"] = "0"
            return answer
        if kind == "nonjson":
            return SimResponse(200, _NONJSON_BODY, "text/html; charset=utf-8")
        return _alpaca_error(500, 50010000, "internal server error occurred")

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, mode: str) -> SimResponse:
        known_path = False
        for route_method, pattern, handler_name in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            known_path = True
            if route_method == method:
                handler: Callable[..., SimResponse] = getattr(self, handler_name)
                answer = handler(query, body, **match.groupdict())
                answer.headers.setdefault("X-Request-ID", uuid.uuid4().hex)
                return answer
        if known_path:
            return _alpaca_error(405, 40510000, "method not allowed")
        return _alpaca_error(404, 40410000, "endpoint not found")

    # -- routes -----------------------------------------------------------------------------

    def _get_account(self, query: dict[str, str], body: bytes) -> SimResponse:
        with self.lock:
            return SimResponse.of_json(200, self._account)

    def _effective_clock(self) -> dict[str, Any]:
        with self.lock:
            clock = market_clock(self.time_source() + timedelta(seconds=self.clock_skew_seconds), self.calendar)
            if self._clock is not None:
                clock.update(self._clock)
            return clock

    def _get_clock(self, query: dict[str, str], body: bytes) -> SimResponse:
        return SimResponse.of_json(200, self._effective_clock())

    def _get_calendar(self, query: dict[str, str], body: bytes) -> SimResponse:
        try:
            start = _parse_when(query["start"]).date() if query.get("start") else None
            end = _parse_when(query["end"]).date() if query.get("end") else None
        except ValueError:
            return _alpaca_error(422, 42210000, "invalid start or end date")
        with self.lock:
            if self._calendar is None and (start or end):
                today = self.time_source().astimezone(ET).date()
                lo = start or today - timedelta(days=30)
                hi = min(end or lo + timedelta(days=366), lo + timedelta(days=3660))
                entries = generate_calendar(lo, hi)
            else:
                entries = [
                    e
                    for e in self.calendar
                    if (start is None or str(e["date"]) >= start.isoformat())
                    and (end is None or str(e["date"]) <= end.isoformat())
                ]
            return SimResponse.of_json(200, entries)

    def _get_positions(self, query: dict[str, str], body: bytes) -> SimResponse:
        with self.lock:
            return SimResponse.of_json(200, self._positions)

    def _get_position(self, query: dict[str, str], body: bytes, key: str) -> SimResponse:
        with self.lock:
            for position in self._positions:
                if key.upper() == str(position.get("symbol", "")).upper() or key == position.get("asset_id"):
                    return SimResponse.of_json(200, position)
        return _alpaca_error(404, 40410000, "position does not exist")

    def _get_orders(self, query: dict[str, str], body: bytes) -> SimResponse:
        status = query.get("status") or "open"
        direction = query.get("direction") or "desc"
        if status not in ("open", "closed", "all"):
            return _alpaca_error(422, 42210000, f"invalid status: {status}")
        if direction not in ("asc", "desc"):
            return _alpaca_error(422, 42210000, f"invalid direction: {direction}")
        try:
            limit = int(query.get("limit") or 50)
            after = _parse_when(query["after"]) if query.get("after") else None
            until = _parse_when(query["until"]) if query.get("until") else None
        except ValueError:
            return _alpaca_error(422, 42210000, "invalid limit, after or until")
        if limit < 1:
            return _alpaca_error(422, 42210000, "limit must be positive")
        symbols = {s.strip().upper() for s in query.get("symbols", "").split(",") if s.strip()}
        side = query.get("side")

        def wanted(order: Mapping[str, Any]) -> bool:
            closed = order.get("status") in CLOSED_ORDER_STATUSES
            if (status == "open" and closed) or (status == "closed" and not closed):
                return False
            if symbols and str(order.get("symbol", "")).upper() not in symbols:
                return False
            if side and order.get("side") != side:
                return False
            submitted = _parse_when(str(order["submitted_at"]))
            return (after is None or submitted > after) and (until is None or submitted < until)

        with self.lock:
            selected = sorted(
                (o for o in self._orders if wanted(o)),
                key=lambda o: _parse_when(str(o["submitted_at"])),
                reverse=direction == "desc",
            )
            return SimResponse.of_json(200, selected[: min(limit, 500)])

    def _get_order(self, query: dict[str, str], body: bytes, key: str) -> SimResponse:
        with self.lock:
            for order in self._orders:
                if order.get("id") == key:
                    return SimResponse.of_json(200, order)
        return _alpaca_error(404, 40410000, "order not found")

    def _get_order_by_client_id(self, query: dict[str, str], body: bytes) -> SimResponse:
        wanted = query.get("client_order_id")
        with self.lock:
            for order in self._orders:
                if wanted and order.get("client_order_id") == wanted:
                    return SimResponse.of_json(200, order)
        return _alpaca_error(404, 40410000, "order not found")

    def _get_asset(self, query: dict[str, str], body: bytes, key: str) -> SimResponse:
        with self.lock:
            asset = self._assets.get(key.upper()) or next(
                (a for a in self._assets.values() if a.get("id") == key), None
            )
            if asset is not None:
                return SimResponse.of_json(200, asset)
        return _alpaca_error(404, 40410000, "asset not found")

    def _post_order(self, query: dict[str, str], body: bytes) -> SimResponse:
        """Validate like Alpaca and accept; nothing fills, but the attempt is always recorded."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _alpaca_error(400, 40010000, "request body format is invalid")
        with self.lock:
            self._submitted.append(copy.deepcopy(payload))
            account = dict(self._account)
            assets = self._assets
            symbol = str(payload.get("symbol") or "").upper()
            asset = assets.get(symbol)
            refuse = self.refuse_orders
        if refuse is not None:
            status_code, message = refuse
            code = {403: 40310000, 422: 42210000}.get(status_code, status_code * 100000)
            return _alpaca_error(status_code, code, message)
        if (
            account.get("status") != "ACTIVE"
            or account.get("trading_blocked")
            or account.get("account_blocked")
            or account.get("trade_suspended_by_user")
        ):
            return _alpaca_error(403, 40310000, "account is not authorized to trade")
        if asset is None:
            return _alpaca_error(422, 42210000, f'asset "{symbol}" not found')
        if not asset.get("tradable") or asset.get("status") != "active":
            return _alpaca_error(422, 42210000, f"asset {symbol} is not tradable")
        side = payload.get("side")
        order_type = payload.get("type") or payload.get("order_type") or "market"
        tif = payload.get("time_in_force")
        qty, notional = payload.get("qty"), payload.get("notional")
        problem = None
        if side not in ("buy", "sell"):
            problem = "side must be buy or sell"
        elif order_type not in _ORDER_TYPES:
            problem = f"invalid order type: {order_type}"
        elif tif not in _TIME_IN_FORCE:
            problem = "invalid time_in_force"
        elif (qty is None) == (notional is None):
            problem = "qty or notional is required, but not both"
        elif order_type in ("limit", "stop_limit") and payload.get("limit_price") is None:
            problem = "limit_price is required for limit orders"
        elif order_type in ("stop", "stop_limit") and payload.get("stop_price") is None:
            problem = "stop_price is required for stop orders"
        if problem is not None:
            return _alpaca_error(422, 40010001, problem)
        try:
            qty_f, notional_f, limit_f, stop_f = (
                None if payload.get(k) is None else float(payload[k])
                for k in ("qty", "notional", "limit_price", "stop_price")
            )
        except (TypeError, ValueError):
            return _alpaca_error(422, 40010001, "qty, notional and prices must be numbers")
        with self.lock:
            client_id = payload.get("client_order_id")
            if client_id and any(o.get("client_order_id") == client_id for o in self._orders):
                return _alpaca_error(422, 40010001, "client_order_id must be unique")
            status = "accepted"
            if self.reject_orders is not None:
                status = "rejected"
            elif self.fill_market_orders and order_type == "market" and self._effective_clock()["is_open"]:
                status = "filled"
                price = REFERENCE_PRICES.get(symbol, 100.0)
                if qty_f is None and notional_f is not None:
                    qty_f = round(notional_f / price, 9)
                moved = qty_f or 0.0
                self._fill(symbol, moved if side == "buy" else -moved, price)
            order = make_order(
                symbol,
                qty_f,
                str(side),
                status=status,
                order_type=str(order_type),
                time_in_force=str(tif),
                limit_price=limit_f,
                stop_price=stop_f,
                notional=notional_f,
                submitted_at=self.time_source(),
                client_order_id=client_id,
                extended_hours=bool(payload.get("extended_hours", False)),
            )
            if status == "rejected":
                order["reject_reason"] = self.reject_orders
            self._orders.append(order)
            return SimResponse.of_json(200, order)

    def _fill(self, symbol: str, qty: float, price: float) -> None:
        """Move ``symbol``'s position by ``qty`` (negative sells) at ``price``; caller holds the lock."""
        for i, pos in enumerate(self._positions):
            if pos.get("symbol") == symbol:
                held, entry = float(pos["qty"]), float(pos["avg_entry_price"])
                total = round(held + qty, 9)
                if total == 0:
                    del self._positions[i]
                else:
                    basis = (price if held * total < 0 else entry if abs(total) < abs(held)
                             else (held * entry + qty * price) / total)
                    self._positions[i] = make_position(symbol, total, round(basis, 4))
                return
        if qty:
            self._positions = [*self._positions, make_position(symbol, qty, price)]
