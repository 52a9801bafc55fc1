"""A simulated UW flow daemon: a real process that behaves like stock-bot's ``uw_flow_daemon.py``.

Why: the checks for FP-1.x are only believable when they watch a process that does what the real
daemon does, including its bad habits. This one, run with the bot root as its working directory
(through the thin ``uw_flow_daemon.py`` launcher the sandbox writes there):

* holds an exclusive ``flock`` on ``state/uw_flow_daemon.lock`` (``pid=<n> ts=<iso>``), and a
  second instance exits at once, as the real one does;
* polls the UW API (``UW_BASE_URL``, bearer ``UW_API_KEY``) every ``SANDBOX_DAEMON_INTERVAL``
  seconds (300 like production unless the sandbox runs ``--fast``);
* swallows API errors into empty data, so a bad token or a dead API leaves a *fresh* cache that
  holds nothing -- the trap FP-1.9 exists for;
* after an HTTP 429 pauses until the 20:00 America/New_York quota reset (or for
  ``SANDBOX_DAEMON_429_PAUSE`` seconds), writing nothing meanwhile;
* writes ``data/uw_flow_cache.json`` atomically with ``_metadata``, one ``logs/uw_daemon.jsonl``
  line per cycle and one ``data/uw_api_quota.jsonl`` line per request.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any
from zoneinfo import ZoneInfo

import requests

from ..bot.botenv import BotEnv

ET = ZoneInfo("America/New_York")
LOCK = Path("state/uw_flow_daemon.lock")
CACHE = Path("data/uw_flow_cache.json")
DAEMON_LOG = Path("logs/uw_daemon.jsonl")
QUOTA_LOG = Path("data/uw_api_quota.jsonl")
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


def write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def next_reset(now: datetime) -> datetime:
    """The next 20:00 America/New_York, when UW resets the daily quota."""
    local = now.astimezone(ET)
    reset = local.replace(hour=20, minute=0, second=0, microsecond=0)
    if reset <= local:
        reset += timedelta(days=1)
    return reset.astimezone(UTC)


class Daemon:
    """One polling loop; ``cycle()`` is a full daemon cycle."""

    def __init__(self, env: BotEnv) -> None:
        self.base = (env.get("UW_BASE_URL") or "https://api.unusualwhales.com").rstrip("/")
        self.token = env.get("UW_API_KEY") or ""
        self.interval = max(0.2, env.number("SANDBOX_DAEMON_INTERVAL", 300.0))
        self.timeout = max(0.2, env.number("SANDBOX_DAEMON_TIMEOUT", 10.0))
        pause = env.get("SANDBOX_DAEMON_429_PAUSE")
        self.pause_429 = float(pause) if pause else None
        self.tickers = [t.strip().upper() for t in (env.get("SANDBOX_TICKERS") or ",".join(DEFAULT_TICKERS))
                        .split(",") if t.strip()]
        self.session = requests.Session()
        self.cycle_no = 0
        self.paused_until = 0.0
        self.saw_429 = False

    def get(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """One UW request; any failure becomes ``[]`` (the real daemon's habit) but is logged."""
        now = time.time()
        record: dict[str, Any] = {"ts": now, "url": path, "source": "uw_flow_daemon"}
        try:
            r = self.session.get(self.base + path, params=params or None, timeout=self.timeout,
                                 headers={"Authorization": f"Bearer {self.token}"})
        except requests.RequestException as exc:
            record["error"] = type(exc).__name__
            append(QUOTA_LOG, record)
            return []
        record["status"] = r.status_code
        append(QUOTA_LOG, record)
        if r.status_code == 429:
            self.saw_429 = True
            return []
        if r.status_code != 200:
            return []
        try:
            data = r.json().get("data")
        except (ValueError, AttributeError):
            return []
        return data if isinstance(data, list) else []

    def build(self, now: float) -> dict[str, Any]:
        alerts = self.get("/api/option-trades/flow-alerts", limit=200)
        tickers = [] if flag("daemon-no-tickers") else self.tickers
        by_ticker: dict[str, list[dict[str, Any]]] = {t: [] for t in tickers}
        for a in alerts:
            t = str(a.get("ticker", "")).upper()
            if t in by_ticker:
                by_ticker[t].append(a)
        cache: dict[str, Any] = {}
        for t in tickers:
            if self.saw_429:
                break
            flow = by_ticker[t]
            prints = self.get(f"/api/darkpool/{t}", limit=20)
            calls = sum(_num(x.get("total_premium")) for x in flow if x.get("type") == "call")
            puts = sum(_num(x.get("total_premium")) for x in flow if x.get("type") == "put")
            dark = ({"prints": len(prints), "notional": round(sum(_num(p.get("premium")) for p in prints), 2)}
                    if prints else {})
            cache[t] = {
                "flow_trades": flow,
                "sentiment": "BULLISH" if calls >= puts else "BEARISH",
                "conviction": round(min(1.0, (calls + puts) / 5e6), 3),
                "total_premium": round(calls + puts, 2), "call_premium": round(calls, 2),
                "put_premium": round(puts, 2), "net_premium": round(calls - puts, 2),
                "trade_count": len(flow), "dark_pool": dark, "insider": {}, "_last_update": now,
            }
        tide = [] if self.saw_429 else self.get("/api/market/market-tide")
        top = [] if self.saw_429 else self.get("/api/market/top-net-impact")
        cache["_market_tide"] = {"data": tide, "last_update": now}
        cache["_top_net_impact"] = {"data": top}
        cache["_metadata"] = {"last_update": now, "updated_by": "uw_flow_daemon",
                              "ticker_count": sum(1 for k in cache if not k.startswith("_"))}
        return cache

    def cycle(self) -> None:
        now = time.time()
        if now < self.paused_until:
            return
        self.saw_429 = False
        self.cycle_no += 1
        cache = self.build(now)
        if self.saw_429:
            until = (now + self.pause_429 if self.pause_429 is not None
                     else next_reset(datetime.now(UTC)).timestamp())
            self.paused_until = until
            append(DAEMON_LOG, {"event": "uw_rate_limited_429", "status": 429, "ts": now, "timestamp": iso(now),
                                "paused_until": until})
            return
        if not flag("daemon-stop-writing"):
            write_atomic(CACHE, cache)
        append(DAEMON_LOG, {"event": "uw_flow_cycle", "cycle": self.cycle_no, "ts": now, "timestamp": iso(now)})


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
