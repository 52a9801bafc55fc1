"""The loopback Alpaca and UW fakes answer like the real APIs, over real HTTP.

FakeAlpaca is driven through alpaca-py itself, so a JSON shape its models reject fails here
rather than in a probe. alpaca-py retries 429s three times 3 s apart, so 429s are checked with
plain ``requests``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AccountStatus, OrderStatus, QueryOrderStatus
from alpaca.trading.models import Asset, Calendar, Clock, Order, Position, TradeAccount
from alpaca.trading.requests import GetCalendarRequest, GetOrdersRequest, MarketOrderRequest

from sandbox.alpaca import FakeAlpaca
from sandbox.factories import make_order
from sandbox.nyse import ET, market_clock
from sandbox.uw import FakeUW

M = TypeVar("M")
UW_AUTH = {"Authorization": "Bearer uw-test-token"}
ALPACA_AUTH = {"APCA-API-KEY-ID": "PKTEST", "APCA-API-SECRET-KEY": "SECRETTEST"}


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll briefly instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def et(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ET)


def parsed(value: object, model: type[M]) -> M:
    """alpaca-py returns ``Model | RawData``: insist it parsed into the model."""
    assert isinstance(value, model), value
    return value


def parsed_list(value: object, model: type[M]) -> list[M]:
    assert isinstance(value, list) and all(isinstance(v, model) for v in value), value
    return value


@pytest.fixture
def alpaca() -> Iterator[FakeAlpaca]:
    srv = FakeAlpaca().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(alpaca: FakeAlpaca) -> TradingClient:
    return TradingClient("PKTEST", "SECRETTEST", paper=True, url_override=alpaca.url)


@pytest.fixture
def uw() -> Iterator[FakeUW]:
    srv = FakeUW().start()
    srv.time_source = lambda: et(2026, 11, 25, 15, 0)
    try:
        yield srv
    finally:
        srv.stop()


def uw_get(srv: FakeUW, path: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(srv.url + path, headers=UW_AUTH if headers is None else headers, timeout=3)


# ----------------------------------------------------------------------------- FakeAlpaca


def test_alpaca_py_parses_every_body(alpaca: FakeAlpaca, client: TradingClient) -> None:
    raw = client.get("/account")
    assert isinstance(raw, dict)
    assert raw["buying_power"] == "25000.00" and raw["status"] == "ACTIVE"
    assert raw["trading_blocked"] is False and raw["account_blocked"] is False
    assert "pattern_day_trader" not in raw and "daytrading_buying_power" not in raw
    account = parsed(client.get_account(), TradeAccount)
    assert account.status == AccountStatus.ACTIVE
    assert float(account.equity or 0) == pytest.approx(
        float(account.cash or 0) + float(account.long_market_value or 0)
    )

    parsed(client.get_clock(), Clock)
    positions = parsed_list(client.get_all_positions(), Position)
    assert [p.symbol for p in positions] == ["AAPL", "NVDA"]
    assert parsed(client.get_open_position("aapl"), Position).qty == "10"
    assert client.get_orders() == []  # default status=open; the seeded orders are fills
    closed = parsed_list(client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED)), Order)
    assert len(closed) == 2 and all(o.status == OrderStatus.FILLED for o in closed)
    asset = parsed(client.get_asset("AAPL"), Asset)
    assert asset.tradable and asset.fractionable
    with pytest.raises(APIError) as err:
        client.get_asset("ZZZZ")
    assert err.value.status_code == 404 and err.value.code == 40410000
    assert alpaca.request_count("/v2/assets") == 2 and alpaca.request_count() == 9


def test_wrong_key_is_401_with_alpaca_body(alpaca: FakeAlpaca) -> None:
    bad = TradingClient("PKTEST", "WRONG", paper=True, url_override=alpaca.url)
    with pytest.raises(APIError) as err:
        bad.get_account()
    assert err.value.status_code == 401 and err.value.code == 40110000
    assert err.value.message == "request is not authorized"
    assert requests.get(alpaca.url + "/v2/account", timeout=3).status_code == 401  # no headers at all


@pytest.mark.parametrize(("mode", "status", "code"), [("401", 401, 40110000), ("500", 500, 50010000)])
def test_error_modes_raise_api_error(
    alpaca: FakeAlpaca, client: TradingClient, mode: str, status: int, code: int
) -> None:
    alpaca.set_mode(mode)
    with pytest.raises(APIError) as err:
        client.get_account()
    assert err.value.status_code == status and err.value.code == code


def test_403_has_no_code(alpaca: FakeAlpaca, client: TradingClient) -> None:
    alpaca.set_mode("403")
    with pytest.raises(APIError) as err:
        client.get_account()
    assert err.value.status_code == 403
    assert json.loads(str(err.value)) == {"message": "forbidden."}
    with pytest.raises(KeyError):  # alpaca-py's APIError.code assumes a code: callers must not
        _ = err.value.code


def test_429_mode(alpaca: FakeAlpaca) -> None:
    alpaca.set_mode("429")
    answer = requests.get(alpaca.url + "/v2/clock", headers=ALPACA_AUTH, timeout=3)
    assert answer.status_code == 429
    assert answer.json() == {"code": 42910000, "message": "rate limit exceeded"}
    assert answer.headers["X-RateLimit-Remaining"] == "0"


def test_nonjson_mode_breaks_alpaca_py_parsing(alpaca: FakeAlpaca, client: TradingClient) -> None:
    alpaca.set_mode("nonjson")
    answer = requests.get(alpaca.url + "/v2/account", headers=ALPACA_AUTH, timeout=3)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.exceptions.JSONDecodeError):
        client.get_account()


def test_hang_times_out_and_stop_is_prompt() -> None:
    srv = FakeAlpaca().start()
    srv.set_mode("hang")
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(srv.url + "/v2/account", headers=ALPACA_AUTH, timeout=0.5)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url + "/v2/account", headers=ALPACA_AUTH, timeout=0.5)


def test_hang_is_released_by_ok(alpaca: FakeAlpaca) -> None:
    alpaca.set_mode("hang", paths=["/v2/clock"])
    results: list[int] = []
    worker = threading.Thread(
        target=lambda: results.append(
            requests.get(alpaca.url + "/v2/clock", headers=ALPACA_AUTH, timeout=5).status_code
        )
    )
    worker.start()
    wait_until(lambda: alpaca.request_count("/v2/clock") == 1)
    # Other paths are unaffected while the clock hangs.
    assert requests.get(alpaca.url + "/v2/account", headers=ALPACA_AUTH, timeout=1).status_code == 200
    assert results == []
    alpaca.set_mode("ok")
    worker.join(timeout=3)
    assert results == [200]


def test_slow_mode_delays(alpaca: FakeAlpaca) -> None:
    alpaca.set_mode("slow:0.3")
    started = time.monotonic()
    answer = requests.get(alpaca.url + "/v2/clock", headers=ALPACA_AUTH, timeout=3)
    assert answer.status_code == 200 and time.monotonic() - started >= 0.3


def test_modes_restricted_to_paths(alpaca: FakeAlpaca, client: TradingClient) -> None:
    alpaca.set_mode("500", paths=["/v2/account"])
    with pytest.raises(APIError) as err:
        client.get_account()
    assert err.value.status_code == 500
    parsed(client.get_clock(), Clock)
    with pytest.raises(ValueError, match="unknown mode"):
        alpaca.set_mode("flaky")


def test_rate_limit_headers_and_429(alpaca: FakeAlpaca) -> None:
    frozen = datetime(2026, 11, 25, 15, 0, 30, tzinfo=UTC)
    alpaca.time_source = lambda: frozen
    alpaca.rate_limit = 3
    answers = [requests.get(alpaca.url + "/v2/clock", headers=ALPACA_AUTH, timeout=3) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    assert answers[0].headers["X-RateLimit-Reset"] == str(int(frozen.timestamp()) // 60 * 60 + 60)
    assert answers[3].json()["code"] == 42910000
    later = frozen + timedelta(minutes=1)
    alpaca.time_source = lambda: later  # a new minute restores the budget
    assert requests.get(alpaca.url + "/v2/clock", headers=ALPACA_AUTH, timeout=3).status_code == 200


def test_admin_endpoints(alpaca: FakeAlpaca, client: TradingClient) -> None:
    mode = requests.post(
        alpaca.url + "/_admin/mode", json={"mode": "403", "paths": ["/v2/account"]}, timeout=3
    )
    assert mode.status_code == 200
    with pytest.raises(APIError):
        client.get_account()
    requests.post(alpaca.url + "/_admin/mode", json={"mode": "ok"}, timeout=3).raise_for_status()
    bad = requests.post(alpaca.url + "/_admin/mode", json={"mode": "nope"}, timeout=3)
    assert bad.status_code == 400

    update = {"account": {"trading_blocked": True}, "positions": [], "clock": {"is_open": False}}
    requests.post(alpaca.url + "/_admin/state", json=update, timeout=3).raise_for_status()
    account = parsed(client.get_account(), TradeAccount)
    assert account.trading_blocked is True and account.buying_power == "25000.00"  # merged, not replaced
    assert client.get_all_positions() == []
    assert parsed(client.get_clock(), Clock).is_open is False
    state = requests.get(alpaca.url + "/_admin/state", timeout=3).json()
    assert state["account"]["trading_blocked"] is True and state["positions"] == []
    assert state["mode"] == "ok" and state["request_counts"]["/v2/account"] == 2
    assert alpaca.request_count("/_admin") == 0  # admin calls are not API traffic
    rejected = requests.post(alpaca.url + "/_admin/state", json={"bogus": 1}, timeout=3)
    assert rejected.status_code == 400


def test_calendar_honours_holidays_and_half_days(alpaca: FakeAlpaca, client: TradingClient) -> None:
    days = parsed_list(
        client.get_calendar(GetCalendarRequest(start=date(2026, 11, 20), end=date(2026, 12, 31))), Calendar
    )
    by_date = {d.date: d for d in days}
    assert date(2026, 11, 26) not in by_date and date(2026, 12, 25) not in by_date
    assert date(2026, 11, 28) not in by_date  # Saturday
    assert by_date[date(2026, 11, 27)].close == datetime(2026, 11, 27, 13, 0)
    assert by_date[date(2026, 12, 24)].close == datetime(2026, 12, 24, 13, 0)
    assert by_date[date(2026, 11, 25)].close == datetime(2026, 11, 25, 16, 0)
    raw = client.get("/calendar", {"start": "2026-11-27", "end": "2026-11-27"})
    assert raw == [
        {
            "date": "2026-11-27",
            "open": "09:30",
            "close": "13:00",
            "session_open": "0400",
            "session_close": "1700",
            "settlement_date": "2026-11-30",
        }
    ]


@pytest.mark.parametrize(
    ("now", "is_open", "next_open", "next_close"),
    [
        (et(2026, 11, 25, 15, 0), True, et(2026, 11, 27, 9, 30), et(2026, 11, 25, 16, 0)),
        (et(2026, 11, 25, 17, 0), False, et(2026, 11, 27, 9, 30), et(2026, 11, 27, 13, 0)),
        (et(2026, 11, 27, 12, 59), True, et(2026, 11, 30, 9, 30), et(2026, 11, 27, 13, 0)),
        (et(2026, 11, 27, 13, 0), False, et(2026, 11, 30, 9, 30), et(2026, 11, 30, 16, 0)),
        (et(2026, 11, 30, 8, 0), False, et(2026, 11, 30, 9, 30), et(2026, 11, 30, 16, 0)),
    ],
)
def test_clock_follows_the_calendar(
    alpaca: FakeAlpaca,
    client: TradingClient,
    now: datetime,
    is_open: bool,
    next_open: datetime,
    next_close: datetime,
) -> None:
    alpaca.time_source = lambda: now.astimezone(UTC)
    clock = parsed(client.get_clock(), Clock)
    assert (clock.is_open, clock.next_open, clock.next_close) == (is_open, next_open, next_close)
    assert clock.timestamp == now


def test_clock_honours_explicit_calendar() -> None:
    # An explicit calendar that closes the whole week wins over the NYSE rules inside its range.
    calendar = [{"date": "2026-11-23", "open": "09:30", "close": "16:00"}]
    calendar.append({"date": "2026-11-30", "open": "10:00", "close": "12:00"})
    clock = market_clock(et(2026, 11, 24, 11, 0), calendar)
    assert clock["is_open"] is False and clock["next_open"] == "2026-11-30T10:00:00-05:00"


def test_orders_filter_and_submission_is_recorded(alpaca: FakeAlpaca, client: TradingClient) -> None:
    base = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    alpaca.orders = [
        make_order("AAPL", 1, status="new", submitted_at=base),
        make_order("NVDA", 2, status="pending_new", submitted_at=base + timedelta(minutes=1)),
        make_order("TSLA", 3, status="rejected", submitted_at=base + timedelta(minutes=2)),
    ]
    assert [o.symbol for o in parsed_list(client.get_orders(), Order)] == ["NVDA", "AAPL"]
    latest = parsed_list(client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=2)), Order)
    assert [o.symbol for o in latest] == ["TSLA", "NVDA"]
    assert parsed(client.get_order_by_id(alpaca.orders[0]["id"]), Order).symbol == "AAPL"
    assert alpaca.submitted_orders == []

    buy = MarketOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="day")
    order = parsed(client.submit_order(buy), Order)
    assert order.status == OrderStatus.ACCEPTED
    assert order.id in {o.id for o in parsed_list(client.get_orders(), Order)}  # now an open order
    assert alpaca.submitted_orders == [
        {"symbol": "AAPL", "qty": 1.0, "side": "buy", "type": "market", "time_in_force": "day"}
    ]
    alpaca.account["trading_blocked"] = True
    with pytest.raises(APIError) as err:
        client.submit_order(buy)
    assert err.value.status_code == 403 and err.value.code == 40310000
    assert len(alpaca.submitted_orders) == 2  # refused attempts are recorded too


def test_unknown_route_is_json_404(alpaca: FakeAlpaca) -> None:
    answer = requests.get(alpaca.url + "/v2/nothing", headers=ALPACA_AUTH, timeout=3)
    assert answer.status_code == 404 and answer.json()["code"] == 40410000
    assert requests.delete(alpaca.url + "/v2/account", headers=ALPACA_AUTH, timeout=3).status_code == 405


# ----------------------------------------------------------------------------- FakeUW


def test_uw_auth_and_quota_headers(uw: FakeUW) -> None:
    assert uw_get(uw, "/api/market/market-tide", headers={}).json() == {"message": "Unauthorized"}
    wrong = uw_get(uw, "/api/market/market-tide", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    answer = uw_get(uw, "/api/market/market-tide")
    assert answer.status_code == 200
    assert answer.headers["x-uw-daily-req-count"] == "3"
    assert answer.headers["x-uw-token-req-limit"] == "50000"
    assert uw.request_count("/api/market") == 3


@pytest.mark.parametrize(
    "path",
    [
        "/api/option-trades/flow-alerts",
        "/api/market/market-tide",
        "/api/market/top-net-impact",
        "/api/stock/NVDA/flow-recent",
        "/api/darkpool/AAPL",
    ],
)
def test_uw_routes_answer_data_lists(uw: FakeUW, path: str) -> None:
    answer = uw_get(uw, path)
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert isinstance(data, list) and data
    assert uw_get(uw, path).json()["data"] == data  # deterministic for a given instant


def test_uw_flow_alerts_shape_filters_and_clusters(uw: FakeUW) -> None:
    alerts = uw_get(uw, "/api/option-trades/flow-alerts?limit=200").json()["data"]
    now = et(2026, 11, 25, 15, 0)
    for alert in alerts:
        assert alert["type"] in ("call", "put") and isinstance(alert["total_premium"], str)
        assert date.fromisoformat(alert["expiry"]) >= now.date()
        assert datetime.fromisoformat(alert["created_at"].replace("Z", "+00:00")) <= now
        for key in ("strike", "has_sweep", "volume", "open_interest", "underlying_price", "alert_rule"):
            assert key in alert
    created = [a["created_at"] for a in alerts]
    assert created == sorted(created, reverse=True)

    only = uw_get(uw, "/api/option-trades/flow-alerts?ticker_symbol=NVDA&limit=5").json()["data"]
    assert len(only) == 5 and {a["ticker"] for a in only} == {"NVDA"}
    # The first ticker is "hot": stock-bot would cluster its recent big short-dated sweeps.
    big = [
        a
        for a in only
        if a["has_sweep"]
        and float(a["total_premium"]) >= 100_000
        and date.fromisoformat(a["expiry"]) <= now.date() + timedelta(days=7)
    ]
    assert len(big) >= 3 and len({a["type"] for a in big[:3]}) == 1
    assert uw_get(uw, "/api/option-trades/flow-alerts?limit=999").status_code == 422
    assert uw_get(uw, "/api/stock/ZZZZ/flow-recent").json() == {"data": []}


def test_uw_fault_modes(uw: FakeUW) -> None:
    uw.set_mode("429")
    limited = uw_get(uw, "/api/darkpool/AAPL")
    assert limited.status_code == 429 and limited.json() == {"message": "daily request limit hit"}
    assert limited.headers["x-uw-daily-req-count"] == limited.headers["x-uw-token-req-limit"] == "50000"
    uw.set_mode("403")
    assert uw_get(uw, "/api/darkpool/AAPL").status_code == 403
    uw.set_mode("500", paths=["/api/market"])
    assert uw_get(uw, "/api/market/market-tide").status_code == 500
    assert uw_get(uw, "/api/darkpool/AAPL").status_code == 200
    uw.set_mode("empty")
    assert uw_get(uw, "/api/option-trades/flow-alerts").json() == {"data": []}
    assert uw_get(uw, "/api/market/market-tide", headers={}).status_code == 401


def test_uw_daily_quota_and_admin(uw: FakeUW) -> None:
    requests.post(uw.url + "/_admin/state", json={"daily_limit": 2}, timeout=3).raise_for_status()
    codes = [uw_get(uw, "/api/market/market-tide").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    # The quota day turns over at 20:00 ET.
    uw.time_source = lambda: et(2026, 11, 25, 20, 0)
    assert uw_get(uw, "/api/market/market-tide").headers["x-uw-daily-req-count"] == "1"

    requests.post(uw.url + "/_admin/mode", json={"mode": "slow:0.2"}, timeout=3).raise_for_status()
    started = time.monotonic()
    assert uw_get(uw, "/api/market/market-tide").status_code == 200
    assert time.monotonic() - started >= 0.2
    state = requests.get(uw.url + "/_admin/state", timeout=3).json()
    assert state["mode"] == "slow:0.2" and state["daily_req_count"] == 2 and state["daily_limit"] == 2
    assert len(state["tickers"]) == 12


def test_uw_hang_then_stop() -> None:
    srv = FakeUW().start()
    srv.set_mode("hang")
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(srv.url + "/api/market/market-tide", headers=UW_AUTH, timeout=0.5)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2


def test_answers_leave_without_nagle_delay(alpaca: FakeAlpaca) -> None:
    """An answer's head and body go out together on a socket with Nagle's algorithm off, as real
    API servers send them: with it on, a body written after its head waited for the client's
    delayed ACK (about 40 ms per answer on a keep-alive connection)."""
    with requests.Session() as s:
        assert s.get(f"{alpaca.url}/v2/clock", headers=ALPACA_AUTH, timeout=5).status_code == 200
        server = alpaca._httpd
        assert server is not None
        with server.connections_lock:
            conns = list(server.connections)
        assert conns and all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in conns)
