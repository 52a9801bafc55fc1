"""A fake Alpaca trading API on loopback: the routes, the account and order state, and
Alpaca's faults (a revoked key, a 403 without a ``code``, rate limiting).

Same paths, same JSON shapes (numbers as strings), same error bodies as Alpaca, served by the
shared stand-in server (:mod:`sandbox.simserver`); objects come from :mod:`sandbox.factories`
and the calendar from :mod:`sandbox.nyse`.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from email.message import Message
from typing import Any

from .factories import (
    CLOSED_ORDER_STATUSES,
    REFERENCE_PRICES,
    default_account,
    default_orders,
    default_positions,
    make_asset,
    make_order,
    make_position,
)
from .nyse import ET, generate_calendar, market_clock, parse_when
from .simserver import NONJSON_BODY, SimResponse, SimServer

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
        self._positions = default_positions()
        self._account = default_account(self._positions)
        self._orders = default_orders()
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
            return SimResponse(200, NONJSON_BODY, "text/html; charset=utf-8")
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
            start = parse_when(query["start"]).date() if query.get("start") else None
            end = parse_when(query["end"]).date() if query.get("end") else None
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
            after = parse_when(query["after"]) if query.get("after") else None
            until = parse_when(query["until"]) if query.get("until") else None
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
            submitted = parse_when(str(order["submitted_at"]))
            return (after is None or submitted > after) and (until is None or submitted < until)

        with self.lock:
            selected = sorted(
                (o for o in self._orders if wanted(o)),
                key=lambda o: parse_when(str(o["submitted_at"])),
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
