"""A fake Unusual Whales REST API on loopback.

Why: the UW probes, the sandbox and the benchmarks need something that speaks UW's dialect --
bearer auth, ``{"data": [...]}`` bodies, the ``x-uw-daily-req-count``/``x-uw-token-req-limit``
quota headers, a daily quota that resets at 20:00 ET -- and that can fail on demand (bad token,
quota exhausted, hang, or a "successful" empty answer like a daemon swallowing errors sees).

Content is deterministic but anchored to wall-clock time: alerts live in fixed 5-minute slots
and trades in fixed 1-minute slots, each seeded by ticker and slot, so repeated calls agree,
ids are stable and new items appear as time passes. The first three tickers get a burst of
same-direction, short-dated, >=100k-premium sweeps in every slot, which is what stock-bot
clusters into a trade candidate.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from typing import Any, ClassVar

from sandbox import contracts
from sandbox.nyse import ET
from sandbox.simserver import NONJSON_BODY, SimResponse, SimServer

__all__ = ["DEFAULT_TICKERS", "FakeUW"]

#: Liquid names the fake covers unless told otherwise; the first three get sweep clusters.
DEFAULT_TICKERS: tuple[str, ...] = (
    "NVDA",
    "TSLA",
    "AAPL",
    "MSFT",
    "AMZN",
    "META",
    "GOOGL",
    "AMD",
    "SPY",
    "QQQ",
    "AVGO",
    "NFLX",
)

_ETFS = frozenset({"SPY", "QQQ", "IWM", "DIA", "XLF", "XLE", "XLK", "SMH", "TLT", "GLD"})
_HOT_TICKERS = 3
_ALERT_SLOT = 300  # seconds
_ALERT_SLOTS = 12  # one hour of alerts
_TRADE_SLOT = 60
_TICKER_RE = re.compile(r"[A-Z][A-Z0-9.]{0,9}")
_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/api/option-trades/flow-alerts"), "_flow_alerts"),
    (re.compile(r"/api/market/market-tide"), "_market_tide"),
    (re.compile(r"/api/market/top-net-impact"), "_top_net_impact"),
    (re.compile(r"/api/stock/(?P<ticker>[^/]+)/flow-recent"), "_flow_recent"),
    (re.compile(r"/api/darkpool/(?P<ticker>[^/]+)"), "_darkpool"),
]


class _BadRequest(ValueError):
    """A query parameter UW would reject with 422."""


def _int_param(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    if not 1 <= value <= maximum:
        raise _BadRequest(f"{name} must be between 1 and {maximum}")
    return value


class FakeUW(SimServer):
    """Answers like ``api.unusualwhales.com`` for the endpoints stock-bot's daemon polls."""

    extra_modes: ClassVar[frozenset[str]] = frozenset({"empty"})

    def __init__(
        self,
        token: str = "uw-test-token",  # noqa: S107 - a fake's test credential, not a secret
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.token = token
        #: Requests allowed per quota day (UW resets the count at 20:00 America/New_York).
        self.daily_limit: int = 50000
        self._tickers: list[str] = list(DEFAULT_TICKERS)
        self._daily_count = 0
        self._quota_day: date | None = None

    @property
    def tickers(self) -> list[str]:
        """Tickers with data; others answer ``{"data": []}``. The first three are "hot"."""
        return self._tickers

    @tickers.setter
    def tickers(self, value: list[str]) -> None:
        with self.lock:
            self._tickers = value

    @property
    def daily_req_count(self) -> int:
        """Requests counted in the current quota day (what ``x-uw-daily-req-count`` reports)."""
        with self.lock:
            self._roll_quota_day()
            return self._daily_count

    @daily_req_count.setter
    def daily_req_count(self, value: int) -> None:
        with self.lock:
            self._roll_quota_day()
            self._daily_count = value

    def state(self) -> dict[str, Any]:
        """Snapshot for ``GET /_admin/state``."""
        with self.lock:
            snapshot = super().state()
            snapshot.update(
                tickers=list(self._tickers),
                daily_req_count=self.daily_req_count,
                daily_limit=self.daily_limit,
            )
            return snapshot

    def apply_state(self, payload: Mapping[str, Any]) -> None:
        """``POST /_admin/state`` with any of ``tickers``, ``daily_req_count``, ``daily_limit``."""

        def is_count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        checks: dict[str, Callable[[Any], bool]] = {
            "tickers": lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
            "daily_req_count": is_count,
            "daily_limit": is_count,
        }
        unknown = set(payload) - checks.keys()
        if unknown:
            raise ValueError(f"unknown state keys: {sorted(unknown)}")
        for key, value in payload.items():
            if not checks[key](value):
                raise ValueError(f"bad value for {key!r}")
        with self.lock:
            if "tickers" in payload:
                self._tickers = [t.upper() for t in payload["tickers"]]
            if "daily_req_count" in payload:
                self.daily_req_count = payload["daily_req_count"]
            if "daily_limit" in payload:
                self.daily_limit = payload["daily_limit"]

    # -- pipeline hooks ---------------------------------------------------------------------

    def _roll_quota_day(self) -> None:
        # The quota day runs 20:00 ET to 20:00 ET: shifting by 4 h makes it a calendar day.
        day = (self.time_source().astimezone(ET) + timedelta(hours=4)).date()
        if day != self._quota_day:
            self._quota_day, self._daily_count = day, 0

    def _quota_headers(self) -> dict[str, str]:
        return {
            "x-uw-daily-req-count": str(self._daily_count),
            "x-uw-token-req-limit": str(self.daily_limit),
        }

    def _consume_quota(self) -> tuple[dict[str, str], SimResponse | None]:
        self._roll_quota_day()
        self._daily_count += 1
        over = self._daily_count > self.daily_limit
        return self._quota_headers(), self._fault("429") if over else None

    def _authorized(self, headers: Message) -> bool:
        return (headers.get("Authorization") or "").strip() == f"Bearer {self.token}"

    def _fault(self, kind: str) -> SimResponse:
        if kind == "401":
            return SimResponse.of_json(401, {"message": "Unauthorized"})
        if kind == "403":
            return SimResponse.of_json(403, {"message": "Forbidden"})
        if kind == "429":
            with self.lock:
                headers = self._quota_headers()
                headers["x-uw-daily-req-count"] = str(max(self._daily_count, self.daily_limit))
            return SimResponse.of_json(429, {"message": "daily request limit hit"}, headers)
        if kind == "nonjson":
            return SimResponse(200, NONJSON_BODY, "text/html; charset=utf-8")
        return SimResponse.of_json(500, {"message": "Internal Server Error"})

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, mode: str) -> SimResponse:
        for pattern, handler_name in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method != "GET":
                return SimResponse.of_json(405, {"message": "Method Not Allowed"})
            if mode == "empty":
                return SimResponse.of_json(200, {"data": []})
            handler: Callable[..., list[dict[str, Any]]] = getattr(self, handler_name)
            try:
                data = handler(query, self.time_source(), **match.groupdict())
            except _BadRequest as exc:
                return SimResponse.of_json(422, {"message": str(exc)})
            return SimResponse.of_json(200, {"data": data})
        return SimResponse.of_json(404, {"message": "Not Found"})

    def _known(self, ticker: str) -> bool:
        with self.lock:
            return ticker in self._tickers

    def _hot(self, ticker: str) -> bool:
        with self.lock:
            return ticker in self._tickers[:_HOT_TICKERS]

    # -- generated content ------------------------------------------------------------------

    def _flow_alerts(self, query: dict[str, str], now: datetime) -> list[dict[str, Any]]:
        limit = _int_param(query, "limit", 100, 200)
        try:
            min_premium = float(query.get("min_premium") or 0)
        except ValueError:
            raise _BadRequest("min_premium must be a number") from None
        wanted = {t.strip().upper() for t in (query.get("ticker_symbol") or "").split(",") if t.strip()}
        with self.lock:
            tickers = [t for t in self._tickers if not wanted or t in wanted]
        alerts = [
            alert
            for ticker in tickers
            for alert in self._alerts_for(ticker, now)
            if float(alert["total_premium"]) >= min_premium
        ]
        alerts.sort(key=lambda a: a["created_at"], reverse=True)
        return alerts[:limit]

    def _alerts_for(self, ticker: str, now: datetime) -> list[dict[str, Any]]:
        hot = self._hot(ticker)
        current = int(now.timestamp()) // _ALERT_SLOT * _ALERT_SLOT
        day_rng = contracts.rng("bias", ticker, now.astimezone(ET).date())
        bullish = day_rng.random() < 0.6
        alerts: list[dict[str, Any]] = []
        for slot in range(current - (_ALERT_SLOTS - 1) * _ALERT_SLOT, current + 1, _ALERT_SLOT):
            rng = contracts.rng("alert", ticker, slot)
            if hot:
                count, call = 3, bullish
            elif rng.random() < 0.35:
                count, call = 1, rng.random() < 0.55
            else:
                continue
            for index in range(count):
                created = datetime.fromtimestamp(slot + rng.uniform(0, _ALERT_SLOT), UTC)
                if created <= now:
                    alerts.append(self._alert(ticker, slot, index, created, call, hot, rng))
        return alerts

    def _alert(
        self, ticker: str, slot: int, index: int, created: datetime, call: bool, hot: bool, rng: random.Random
    ) -> dict[str, Any]:
        underlying = contracts.price_of(ticker) * (1 + rng.uniform(-0.004, 0.004))
        today = created.astimezone(ET).date()
        short_dated = hot or rng.random() < 0.4
        expiry = contracts.next_friday(today) if short_dated else contracts.monthly(today)
        strike = contracts.strike(underlying, rng.uniform(0.0, 0.06), call)
        option_price = round(rng.uniform(0.6, 9.5), 2)
        premium = rng.uniform(120_000, 900_000) if hot else rng.uniform(25_000, 450_000)
        size = max(1, int(premium / (option_price * 100)))
        premium = size * option_price * 100
        ask_share = rng.uniform(0.72, 0.97)
        volume = size + rng.randint(200, 25_000)
        open_interest = rng.randint(400, 60_000)
        sweep = hot or rng.random() < 0.5
        rule = (
            "RepeatedHitsAscendingFill"
            if hot
            else rng.choice(
                ["RepeatedHits", "RepeatedHitsDescendingFill", "FloorTradeLargeCap", "SweepsFollowedByFloor"]
            )
        )
        start_ms = int(created.timestamp() * 1000) - rng.randint(500, 45_000)
        return {
            "id": contracts.uid("alert", ticker, slot, index),
            "ticker": ticker,
            "type": "call" if call else "put",
            "option_chain": contracts.occ(ticker, expiry, call, strike),
            "strike": f"{strike:g}",
            "expiry": expiry.isoformat(),
            "expiry_count": 1,
            "created_at": contracts.iso_z(created),
            "start_time": start_ms,
            "end_time": int(created.timestamp() * 1000),
            "alert_rule": rule,
            "price": f"{option_price:.2f}",
            "underlying_price": f"{underlying:.2f}",
            "total_premium": f"{premium:.2f}",
            "total_ask_side_prem": f"{premium * ask_share:.2f}",
            "total_bid_side_prem": f"{premium * (1 - ask_share) * 0.8:.2f}",
            "total_size": size,
            "trade_count": rng.randint(4, 60) if sweep else rng.randint(1, 3),
            "volume": volume,
            "open_interest": open_interest,
            "volume_oi_ratio": f"{volume / open_interest:.4f}",
            "has_sweep": sweep,
            "has_floor": rule.startswith("Floor") or rule.endswith("Floor"),
            "has_multileg": False,
            "has_singleleg": True,
            "all_opening_trades": rng.random() < 0.3,
            "issue_type": "ETF" if ticker in _ETFS else "Common Stock",
            "sector": None if ticker in _ETFS else "Technology",
        }

    def _market_tide(self, query: dict[str, str], now: datetime) -> list[dict[str, Any]]:
        """Cumulative 5-minute net premium for today's session so far, else the previous one, newest
        point first (stock-bot's daemon keeps only the first point; on the recorded root it was
        the latest one, 5 minutes old)."""
        now_et = now.astimezone(ET)
        session = contracts.latest_session(now_et)
        if session is None:
            return []
        open_at, close_at = session
        day = open_at.date()
        end = min(now_et, close_at)
        rng = contracts.rng("tide", day)
        calls = puts = 0.0
        volume = 0
        rows: list[dict[str, Any]] = []
        at = open_at
        while at <= end:
            calls += rng.gauss(1.5e6, 6e6)
            puts += rng.gauss(-0.8e6, 5e6)
            volume += rng.randint(-40_000, 60_000)
            rows.append(
                {
                    "date": day.isoformat(),
                    "timestamp": at.isoformat(),
                    "net_call_premium": f"{calls:.2f}",
                    "net_put_premium": f"{puts:.2f}",
                    "net_volume": volume,
                }
            )
            at += timedelta(minutes=5)
        return rows[::-1]

    def _top_net_impact(self, query: dict[str, str], now: datetime) -> list[dict[str, Any]]:
        limit = _int_param(query, "limit", 20, 100)
        day = now.astimezone(ET).date()
        bucket = int(now.timestamp()) // _ALERT_SLOT
        with self.lock:
            tickers = list(self._tickers)
        rows = []
        for ticker in tickers:
            rng = contracts.rng("impact", ticker, bucket)
            call_premium = rng.uniform(2e6, 90e6)
            put_premium = rng.uniform(2e6, 70e6)
            if self._hot(ticker):
                call_premium *= 1.8
            net_calls = call_premium * rng.uniform(-0.3, 0.5)
            net_puts = put_premium * rng.uniform(-0.5, 0.3)
            rows.append(
                {
                    "ticker": ticker,
                    "date": day.isoformat(),
                    "net_premium": f"{net_calls - net_puts:.2f}",
                    "net_call_premium": f"{net_calls:.2f}",
                    "net_put_premium": f"{net_puts:.2f}",
                    "call_premium": f"{call_premium:.2f}",
                    "put_premium": f"{put_premium:.2f}",
                    "issue_type": "ETF" if ticker in _ETFS else "Common Stock",
                }
            )
        rows.sort(key=lambda r: float(r["net_premium"]), reverse=True)
        return rows[:limit]

    def _recent_slots(self, now: datetime, count: int) -> list[int]:
        """Start times of the ``count`` most recent trade slots, newest first."""
        current = int(now.timestamp()) // _TRADE_SLOT * _TRADE_SLOT
        return [current - i * _TRADE_SLOT for i in range(count)]

    def _flow_recent(self, query: dict[str, str], now: datetime, ticker: str) -> list[dict[str, Any]]:
        """Recent individual option trades of one ticker, newest first."""
        ticker = ticker.upper()
        limit = _int_param(query, "limit", 50, 500)
        if not _TICKER_RE.fullmatch(ticker) or not self._known(ticker):
            return []
        trades = []
        for slot in self._recent_slots(now, limit + 1):
            rng = contracts.rng("trade", ticker, slot)
            executed = datetime.fromtimestamp(slot + rng.uniform(0, _TRADE_SLOT), UTC)
            if executed > now:
                continue
            call = rng.random() < 0.55
            underlying = contracts.price_of(ticker) * (1 + rng.uniform(-0.004, 0.004))
            today = executed.astimezone(ET).date()
            expiry = contracts.next_friday(today) if rng.random() < 0.5 else contracts.monthly(today)
            strike = contracts.strike(underlying, rng.uniform(0.0, 0.08), call)
            price = round(rng.uniform(0.3, 12.0), 2)
            size = rng.choice([1, 2, 5, 10, 20, 25, 50, 100, 250])
            spread = max(0.01, round(price * 0.02, 2))
            side = rng.choice(["ask", "ask", "bid", "mid"])
            volume = rng.randint(size, 40_000)
            trades.append(
                {
                    "id": contracts.uid("trade", ticker, slot),
                    "underlying_symbol": ticker,
                    "option_chain_id": contracts.occ(ticker, expiry, call, strike),
                    "option_type": "call" if call else "put",
                    "strike": f"{strike:g}",
                    "expiry": expiry.isoformat(),
                    "executed_at": contracts.iso_z(executed),
                    "price": f"{price:.2f}",
                    "size": size,
                    "premium": f"{price * size * 100:.2f}",
                    "nbbo_ask": f"{price + (spread if side != 'ask' else 0):.2f}",
                    "nbbo_bid": f"{price - (spread if side != 'bid' else 0):.2f}",
                    "underlying_price": f"{underlying:.2f}",
                    "volume": volume,
                    "open_interest": rng.randint(100, 60_000),
                    "ask_vol": volume * 6 // 10,
                    "bid_vol": volume * 3 // 10,
                    "implied_volatility": f"{rng.uniform(0.18, 0.85):.4f}",
                    "delta": f"{rng.uniform(0.1, 0.6) * (1 if call else -1):.4f}",
                    "exchange": rng.choice(["XCBO", "AMXO", "XPHO", "MPRL", "EDGO"]),
                    "tags": [f"{side}_side", "bullish" if (side == "ask") == call else "bearish"],
                    "report_flags": [],
                }
            )
        return trades[:limit]

    def _darkpool(self, query: dict[str, str], now: datetime, ticker: str) -> list[dict[str, Any]]:
        """Recent off-exchange prints of one ticker, newest first."""
        ticker = ticker.upper()
        limit = _int_param(query, "limit", 100, 500)
        if not _TICKER_RE.fullmatch(ticker) or not self._known(ticker):
            return []
        prints = []
        for slot in self._recent_slots(now, limit + 1):
            rng = contracts.rng("darkpool", ticker, slot)
            executed = datetime.fromtimestamp(slot + rng.uniform(0, _TRADE_SLOT), UTC)
            if executed > now:
                continue
            price = contracts.price_of(ticker) * (1 + rng.uniform(-0.003, 0.003))
            size = rng.choice([100, 200, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000])
            prints.append(
                {
                    "ticker": ticker,
                    "executed_at": contracts.iso_z(executed),
                    "price": f"{price:.4f}",
                    "size": size,
                    "premium": f"{price * size:.2f}",
                    "volume": rng.randint(5_000_000, 80_000_000),
                    "nbbo_ask": f"{price + 0.01:.2f}",
                    "nbbo_bid": f"{price - 0.01:.2f}",
                    "nbbo_ask_quantity": rng.randint(100, 3_000),
                    "nbbo_bid_quantity": rng.randint(100, 3_000),
                    "market_center": "L",
                    "tracking_id": zlib.crc32(f"{ticker}:{slot}".encode()) * 1000 + rng.randint(0, 999),
                    "canceled": False,
                    "ext_hour_sold_codes": None,
                    "sale_cond_codes": None,
                    "trade_code": None,
                    "trade_settlement": "regular_settlement",
                }
            )
        return prints[:limit]


