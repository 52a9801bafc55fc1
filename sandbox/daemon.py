"""A simulated UW flow daemon: a real process that behaves like stock-bot's ``uw_flow_daemon.py``.

Why: the checks for FP-1.x are only believable when they watch a process that does what the real
daemon does, including its bad habits, and writes what it writes, field for field (the recorded
files in the bot's README facts). This one, run with the bot root as its working directory
(through the thin ``uw_flow_daemon.py`` launcher the sandbox writes there):

* holds an exclusive ``flock`` on ``state/uw_flow_daemon.lock`` (``pid=<n> ts=<iso>``), and a
  second instance exits at once, as the real one does;
* polls the UW API (``UW_BASE_URL``, bearer ``UW_API_KEY``) every ``SANDBOX_DAEMON_INTERVAL``
  seconds (300 like production unless the sandbox runs ``--fast``): per ticker the flow alerts
  (``symbol=<T>&limit=100``) and the dark pool, then the top net impact, and the market tide at
  most every ``SANDBOX_DAEMON_TIDE_INTERVAL`` seconds (600 like production);
* goes through the bot's UW client limits: 120 calls a minute (``UW_RATE_LIMIT_PER_MIN``) and
  ``UW_DAILY_LIMIT`` x 0.95 calls a UTC day. A blocked call is not sent and not counted;
* writes one ``data/uw_api_quota.jsonl`` line per attempt (``source: "uw_flow_daemon"``, blocked
  attempts included) and a second one per call sent (``source: "src/uw/uw_client"``,
  ``endpoint_name: "default"``); counts each call sent once in ``state/uw_usage_state.json``
  (``date`` is the UTC day, ``calls_today``, ``by_endpoint``, ``minute_window``), although the
  client retries a 429 or 503 twice (after 1 s and 2.5 s; ``SANDBOX_DAEMON_RETRY_DELAYS``
  shortens them under ``--fast``) and a transport error too;
* appends every answer that is not OK to ``reports/uw_health/uw_api_errors.jsonl``
  (``uw_api_error_type`` ``rate_limit``, ``401``, ``403``, ``404``, ``5xx``, ``http_error`` with
  status 0 for a transport error, ``empty`` for HTTP 200 with empty data), and a
  ``UW_API_RATE_LIMITED`` line to ``data/uw_flow_cache.log.jsonl`` for each UW 429 (UW's quota
  headers as strings) and each limiter block (``daily_count`` null);
* swallows API errors into empty data, so a bad token or a dead API leaves a *fresh* cache that
  holds nothing -- the trap FP-1.9 exists for;
* does **not** pause on an HTTP 429: it keeps polling every endpoint and completes the cycle,
  re-stamping ``_metadata.last_update`` and each ticker's ``_last_update`` and giving the blocks
  a fresh ``last_update``; a rate-limited dark pool is zeroed, rate-limited flow keeps the
  previous cycle's trades;
* writes ``data/uw_flow_cache.json`` atomically: ``_metadata`` (``last_update``, ``updated_by``,
  ``ticker_count``), ``_market_tide`` (``{"data": <the first point of UW's list>,
  "last_update"}``, the same point copied into each ticker's ``market_tide``), ``_top_net_impact``
  (``{"data": [{"ticker", "net_premium"}...], "last_update"}``), and one
  ``logs/uw_daemon.jsonl`` line at the end of each cycle.

Not simulated: the client's 60 s response cache, the OpenAPI allow-list and the intel endpoints
the loopback UW does not serve (greeks, OI change, ETF flow, ...).

Fault flags live in ``.sandbox/flags/`` of the bot root (written by the sandbox):
``daemon-stop-writing`` makes it keep cycling but skip the cache write; ``daemon-stall`` stops
its loop (alive, holding the lock, like a request that never returns); ``daemon-no-tickers``
makes it write a cache with the global keys only (an empty watchlist). With
``SANDBOX_DAEMON_WAIT_FOR_LOCK=1`` in its environment a second instance waits for the lock
instead of exiting -- the duplicate FP-1.11 exists for.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import requests

from exporter.bot.botenv import BotEnv

from . import layout

LOCK = layout.DAEMON_LOCK
CACHE = layout.UW_CACHE
DAEMON_LOG = layout.DAEMON_LOG
QUOTA_LOG = layout.QUOTA_LOG
USAGE_STATE = layout.UW_USAGE_STATE
ERRORS_LOG = layout.UW_ERRORS_LOG
CACHE_LOG = layout.UW_CACHE_LOG
FLAGS = Path(".sandbox/flags")
DEFAULT_TICKERS = ("NVDA", "TSLA", "AAPL", "MSFT", "AMZN", "META", "GOOGL", "AMD")
#: Keys of a ticker block that are not intel blocks (BOT.md); everything else is enrichment.
_PLAIN = ("flow_trades", "sentiment", "conviction", "total_premium", "call_premium", "put_premium",
          "net_premium", "trade_count", "_last_update")

_stopping = False


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stopping
    _stopping = True


def flag(name: str) -> bool:
    """True while the sandbox has set fault flag ``name``."""
    return (FLAGS / name).exists()


def orphaned() -> bool:
    """True when the sandbox that started this process is gone (it was killed without cleanup)."""
    parent = os.environ.get("SANDBOX_PARENT_PID", "")
    return parent.isdigit() and os.getppid() != int(parent)


def take_lock(wait: bool = False) -> IO[str] | None:
    """The exclusive lock, or None when another daemon holds it (the caller exits). ``wait``
    keeps trying until the lock is free or the process is told to stop."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fh = open(LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held for the life of the process
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not wait or _stopping or orphaned():
                fh.close()
                return None
            time.sleep(0.2)
    fh.seek(0)
    fh.truncate(0)
    fh.write(f"pid={os.getpid()} ts={datetime.now(UTC).isoformat()}\n")
    fh.flush()
    return fh


def append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def write_atomic(path: Path, data: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent), encoding="utf-8")
    os.replace(tmp, path)


def dt_text(ts: float) -> str:
    """``_dt`` as the bot's jsonl writer stamps it: ``YYYY-MM-DD HH:MM:SS UTC``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def read_usage(now: float) -> dict[str, Any]:
    """``state/uw_usage_state.json``, reset when the UTC day changed (or it is unreadable)."""
    day = datetime.fromtimestamp(now, UTC).date().isoformat()
    try:
        st = json.loads(USAGE_STATE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        st = None
    if not isinstance(st, dict) or st.get("date") != day:
        st = {"date": day, "calls_today": 0, "by_endpoint": {}, "minute_window": []}
    st["minute_window"] = [t for t in st.get("minute_window") or [] if isinstance(t, (int, float)) and now - t < 60]
    return st


def error_type(status: int, body: Any) -> str | None:
    """The UW client's classification of an answer; None when it is OK."""
    if status in (401, 403, 404):
        return str(status)
    if status == 429:
        return "rate_limit"
    if status >= 500:
        return "5xx"
    if status != 200:
        return "http_error"  # transport errors come back as status 0
    if not isinstance(body, dict) or "data" not in body:
        return "schema"
    data = body.get("data")
    if data is None or (isinstance(data, list) and not data):
        return "empty"
    return None


class UWClient:
    """The bot's UW client as the daemon uses it: limiter, retries, usage state, error log."""

    def __init__(self, env: BotEnv, base: str, token: str, timeout: float, caller: str) -> None:
        self.base, self.timeout, self.caller = base, timeout, caller
        self.headers = {"Authorization": f"Bearer {token}"}
        self.per_minute = int(env.number("UW_RATE_LIMIT_PER_MIN", 120))
        self.daily_cap = env.number("UW_DAILY_LIMIT", 50000) * env.number("UW_SAFETY_BUFFER", 0.95)
        delays = env.get("SANDBOX_DAEMON_RETRY_DELAYS") or "1,2.5"
        self.retry_delays = [float(x) for x in delays.split(",") if x.strip()]
        self.session = requests.Session()

    def blocked(self, now: float) -> bool:
        st = read_usage(now)
        return len(st["minute_window"]) >= self.per_minute or st["calls_today"] >= self.daily_cap

    def count(self, now: float, endpoint_name: str) -> None:
        """One call sent: counted once however many times it was retried."""
        st = read_usage(now)
        st["minute_window"].append(now)
        st["calls_today"] = int(st.get("calls_today") or 0) + 1
        raw_by = st.get("by_endpoint")
        by: dict[str, Any] = raw_by if isinstance(raw_by, dict) else {}
        by[endpoint_name] = int(by.get(endpoint_name) or 0) + 1
        st["by_endpoint"] = by
        write_atomic(USAGE_STATE, st)

    def send(self, url: str, params: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """GET with the client's retries: 429 and 503 (and transport errors) are tried 3 times."""
        status, headers = 0, {}
        body: Any = {"data": []}
        for attempt in range(len(self.retry_delays) + 1):
            retry = False
            try:
                r = self.session.get(url, params=params or None, timeout=self.timeout, headers=self.headers)
                status, headers = r.status_code, dict(r.headers)
                try:
                    body = r.json() if r.content else {"data": []}
                except ValueError:
                    body = {"data": []}
                retry = status in (429, 503)
            except requests.RequestException:
                status, body, headers = 0, {"data": []}, {}  # logged as http_error with status 0
                retry = True
            if status == 200 or not retry or attempt >= len(self.retry_delays):
                break
            time.sleep(self.retry_delays[attempt])
        return status, body, headers

    def get(self, url: str, params: dict[str, Any], endpoint_name: str = "default") -> tuple[int, Any, dict[str, str]]:
        """One call; status -1 when the limiter blocked it (nothing sent, nothing counted)."""
        now = time.time()
        if self.blocked(now):
            return -1, {"data": [], "_blocked": True}, {}
        append(QUOTA_LOG, {"ts": int(now), "url": url, "params": params, "source": "src/uw/uw_client",
                           "endpoint_name": endpoint_name})
        try:
            status, body, headers = self.send(url, params)
        finally:
            self.count(now, endpoint_name)
        kind = error_type(status, body)
        if kind is not None:
            append(ERRORS_LOG, {"ts": time.time(), "http_status": status, "endpoint": url,
                                "response_body_truncated": json.dumps(body, default=str)[:2000],
                                "request_params": params, "uw_api_error_type": kind, "caller": self.caller})
        return status, body, headers


class Daemon:
    """One polling loop; ``cycle()`` is a full daemon cycle."""

    def __init__(self, env: BotEnv) -> None:
        self.base = (env.get("UW_BASE_URL") or "https://api.unusualwhales.com").rstrip("/")
        self.interval = max(0.2, env.number("SANDBOX_DAEMON_INTERVAL", 300.0))
        self.tide_interval = max(0.0, env.number("SANDBOX_DAEMON_TIDE_INTERVAL", 600.0))
        timeout = max(0.2, env.number("SANDBOX_DAEMON_TIMEOUT", 10.0))
        self.client = UWClient(env, self.base, env.get("UW_API_KEY") or "", timeout,
                               f"{Path.cwd()}/uw_flow_daemon.py:339:_get")
        self.tickers = [t.strip().upper() for t in (env.get("SANDBOX_TICKERS") or ",".join(DEFAULT_TICKERS))
                        .split(",") if t.strip()]
        self.cycle_no = 0
        self.tide_polled = 0.0
        #: what the last cycle wrote: a rate-limited call keeps the previous flow trades and tide
        self.last: dict[str, Any] = {}

    def get(self, path: str, **params: Any) -> Any:
        """The daemon's ``_get``: the ``data`` of the answer, ``_RATE_LIMITED`` after a 429 or a
        limiter block, ``[]`` for any other failure (the real daemon's habit; logged by the client)."""
        url = self.base + path
        now = time.time()
        append(QUOTA_LOG, {"ts": int(now), "url": url, "params": params, "source": "uw_flow_daemon"})
        status, body, headers = self.client.get(url, params)
        if status in (429, -1):
            limited = status == 429
            message = body.get("message", "") if limited and isinstance(body, dict) else ""
            t = int(time.time())
            append(CACHE_LOG, {"event": "UW_API_RATE_LIMITED", "url": url, "status": 429,
                               "daily_count": headers.get("x-uw-daily-req-count") if limited else None,
                               "daily_limit": headers.get("x-uw-token-req-limit") if limited else None,
                               "message": message, "queued": False, "ts": t, "_ts": t, "_dt": dt_text(t)})
            return _RATE_LIMITED
        if status != 200 or not isinstance(body, dict):
            return []
        return body.get("data", [])

    def ticker(self, t: str, now: float, tide_point: dict[str, Any]) -> dict[str, Any]:
        last = self.last.get(t)
        before: dict[str, Any] = last if isinstance(last, dict) else {}
        got = self.get("/api/option-trades/flow-alerts", symbol=t, limit=100)
        if got is _RATE_LIMITED:
            flow = list(before.get("flow_trades") or [])  # the previous cycle's trades, re-stamped below
        else:
            flow = [a for a in (got if isinstance(got, list) else [])
                    if isinstance(a, dict) and str(a.get("ticker", "")).upper() == t]
        calls = sum(_num(x.get("total_premium")) for x in flow if x.get("type") == "call")
        puts = sum(_num(x.get("total_premium")) for x in flow if x.get("type") == "put")
        total = calls + puts
        sentiment = "BULLISH" if calls > puts else "BEARISH" if puts > calls else "NEUTRAL"
        summary = {"sentiment": sentiment, "conviction": round(min(1.0, total / 5e6), 3),
                   "total_premium": round(total, 2), "call_premium": round(calls, 2),
                   "put_premium": round(puts, 2), "net_premium": round(calls - puts, 2), "trade_count": len(flow)}
        prints = self.get(f"/api/darkpool/{t}", limit=100)
        prints = [p for p in prints if isinstance(p, dict)] if isinstance(prints, list) else []
        notional = round(sum(_num(p.get("premium")) for p in prints), 2)
        recent = round(sum(_num(p.get("premium")) for p in prints
                           if (ts := _when(p.get("executed_at"))) is not None and now - ts <= 3600), 2)
        # a 429 or an empty answer leaves a zeroed dark pool with a fresh last_update
        dark = {"sentiment": "NEUTRAL" if not prints else sentiment, "total_premium": notional,
                "total_notional": notional, "total_notional_1h": recent, "print_count": len(prints),
                "last_update": int(now)}
        entry = {"market_tide": tide_point, "flow_trades": flow, **summary,
                 "flow": {**summary, "last_update": int(now)}, "_last_update": int(now), "dark_pool": dark}
        return entry

    def build(self, now: float) -> dict[str, Any]:
        tide = self.last.get("_market_tide")
        if not isinstance(tide, dict) or now - self.tide_polled >= self.tide_interval:
            got = self.get("/api/market/market-tide")
            self.tide_polled = now
            if got is not _RATE_LIMITED:
                point = got[0] if isinstance(got, list) and got else got if isinstance(got, dict) else {}
                tide = {"data": point if isinstance(point, dict) else {}, "last_update": int(now)}
        tide = tide if isinstance(tide, dict) else {"data": {}, "last_update": int(now)}
        tickers = [] if flag("daemon-no-tickers") else self.tickers
        cache: dict[str, Any] = {t: self.ticker(t, time.time(), tide["data"]) for t in tickers}
        top = self.get("/api/market/top-net-impact", limit=50)
        rows = [{"ticker": r.get("ticker"), "net_premium": r.get("net_premium")}
                for r in (top if isinstance(top, list) else []) if isinstance(r, dict)]
        stamp = int(time.time())
        cache["_market_tide"] = tide
        cache["_top_net_impact"] = {"data": rows, "last_update": stamp}
        cache["_metadata"] = {"last_update": stamp, "updated_by": "uw_flow_daemon",
                              "ticker_count": sum(1 for k in cache if not k.startswith("_"))}
        return cache

    def cycle(self) -> None:
        """A full cycle: a 429 does not stop it, every endpoint is still polled and written."""
        self.cycle_no += 1
        cache = self.build(time.time())
        self.last = cache
        if not flag("daemon-stop-writing"):
            write_atomic(CACHE, cache, indent=2)  # like the bot
        now = time.time()
        append(DAEMON_LOG, {"event": "uw_flow_cycle", "cycle": self.cycle_no,
                            "timestamp": datetime.fromtimestamp(now, UTC).isoformat(), "ts": int(now),
                            "source": "uw_flow_daemon", "_ts": int(now), "_dt": dt_text(now)})


#: what the daemon's ``_get`` answers after a 429 or a limiter block
_RATE_LIMITED: dict[str, Any] = {"data": [], "_rate_limited": True}


def _when(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def main() -> int:
    """Run until SIGTERM/SIGINT; exit 1 when another daemon holds the lock."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    lock = take_lock(wait=os.environ.get("SANDBOX_DAEMON_WAIT_FOR_LOCK") == "1")
    if lock is None:
        print("another uw_flow_daemon holds state/uw_flow_daemon.lock; exiting", file=sys.stderr)
        return 1
    try:
        daemon = Daemon(BotEnv.load(Path.cwd()))
    except ValueError as exc:
        print(f"uw_flow_daemon: {exc}", file=sys.stderr)
        return 1
    while not _stopping:
        while flag("daemon-stall") and not _stopping and not orphaned():
            time.sleep(0.2)  # stuck: no cycle, no write, the lock still held
        started = time.monotonic()
        try:
            daemon.cycle()
        except OSError as exc:  # a full disk or a removed directory must not kill the loop silently
            print(f"uw_flow_daemon: cycle failed: {exc}", file=sys.stderr)
        # sleep in short steps so SIGTERM is honoured promptly
        while not _stopping and time.monotonic() - started < daemon.interval:
            time.sleep(min(0.2, daemon.interval))
        if orphaned():
            break
    lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
