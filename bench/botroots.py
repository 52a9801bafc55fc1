"""The production-size bot root the check bench measures, and the bot's writes to it.

The fake broker and UW run in their own process (their CPU is not the exporter's); so does the
writer that plays the bot's cycles (``WRITER``), and the stand-ins for the daemon and main.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from exporter.bot.market import NY
from sandbox.botroot import UW_BASE, BotRoot, iso, ticker_entry, tide_point, write_json

LOGS = ("logs/run.jsonl", "state/blocked_trades.jsonl", "logs/uw_daemon.jsonl", "data/uw_api_quota.jsonl")

#: the fake broker and UW, in their own process; stdin takes {"offset": s, "calendar": [...]|null,
#: "mode": the broker's fault mode ("ok", "hang", ...)}
SERVERS = textwrap.dedent("""
    import json, signal, sys, time
    from datetime import UTC, datetime
    from sandbox.alpaca import FakeAlpaca
    from sandbox.uw import FakeUW
    a, u = FakeAlpaca().start(), FakeUW().start()
    a.rate_limit = 10**9
    offset = [0.0]
    a.time_source = u.time_source = lambda: datetime.fromtimestamp(time.time() + offset[0], UTC)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"alpaca": a.url, "uw": u.url}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        offset[0] = float(cmd.get("offset", 0.0))
        a.calendar = cmd.get("calendar")
        if "mode" in cmd:
            a.set_mode(cmd["mode"])
        print("ok", flush=True)
""")

DAEMON = textwrap.dedent("""
    import fcntl, os, time
    fh = open("state/uw_flow_daemon.lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"pid={os.getpid()} ts=0\\n"); fh.flush()
    while True: time.sleep(1)
""")


#: the bot's writes, in their own process: one line on stdin (the time) = one bot cycle written
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bench.botroots import bot_cycle, production_cache
    from sandbox.botroot import BotRoot
    root = BotRoot(Path(sys.argv[1]), now=float(sys.argv[2]))
    cache = production_cache(root, root.now)
    print("ready", flush=True)
    for n, line in enumerate(sys.stdin, 1):
        bot_cycle(root, float(line), n, cache)
        print("ok", flush=True)
""")


class Servers:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.urls: dict[str, str] = json.loads(self._io()[1].readline())
        self.offset = 0.0

    def _io(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def at(self, when: datetime | None, calendar: list[dict[str, str]] | None = None) -> None:
        """Move both fakes' clocks to ``when`` (None: the real time), running on from there."""
        self.offset = 0.0 if when is None else when.timestamp() - time.time()
        stdin, stdout = self._io()
        stdin.write(json.dumps({"offset": self.offset, "calendar": calendar}) + "\n")
        stdin.flush()
        assert stdout.readline().strip() == "ok"

    def broker_mode(self, mode: str) -> None:
        """Every broker call answers in ``mode`` ("hang": waits for the caller's timeout), on the real clock."""
        self.offset = 0.0
        stdin, stdout = self._io()
        stdin.write(json.dumps({"mode": mode}) + "\n")
        stdin.flush()
        assert stdout.readline().strip() == "ok"

    def clock(self) -> float:
        return time.time() + self.offset

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def write_history(root: Path, total_bytes: int, end: float) -> None:
    """About ``total_bytes`` of older lines in the four JSONL logs together, the last at ``end``."""
    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    lines = {
        "logs/run.jsonl": lambda i, t: (f'{{"ts": "{stamp(t)}", "_ts": {t}, "msg": "complete", "clusters": 3, '
                                        f'"orders": {i % 2}}}\n'),
        "state/blocked_trades.jsonl": lambda i, t: (f'{{"timestamp": "{stamp(t)}", "symbol": "AMD", '
                                                    f'"reason": "score_below_min", "score": 1.4}}\n'),
        "logs/uw_daemon.jsonl": lambda i, t: (f'{{"event": "uw_flow_cycle", "cycle": {i}, '
                                              f'"timestamp": "{stamp(t)}", "ts": {int(t)}, '
                                              f'"source": "uw_flow_daemon", "_ts": {int(t)}, '
                                              f'"_dt": "{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))}"}}\n'),
        # stock-bot's pair per call sent: the daemon's attempt line and its UW client's line
        "data/uw_api_quota.jsonl": lambda i, t: (
            f'{{"ts": {int(t)}, "url": "{UW_BASE}/api/option-trades/flow-alerts", "params": {{}}, '
            f'"source": "uw_flow_daemon"}}\n'
            f'{{"ts": {int(t)}, "url": "{UW_BASE}/api/option-trades/flow-alerts", "params": {{}}, '
            f'"source": "src/uw/uw_client", "endpoint_name": "default"}}\n'),
    }
    per_file = total_bytes // len(lines)
    for rel, make in lines.items():
        n = max(1, per_file // len(make(0, end)))
        every = 2.0  # older lines, two seconds apart
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for start in range(0, n, 20000):
                fh.write("".join(make(i, round(end - every * (n - i), 3)) for i in range(start, min(n, start + 20000))))


def stamp_root(root: BotRoot, now: float, urls: dict[str, str], first: bool = False) -> None:
    """What the daemon and the bot have written by ``now``: a fresh ~6 MB cache, heartbeat,
    supervisor health, weights, and the latest cycles appended to the logs."""
    root.now = now
    # the last half hour of cycles: candidates blocked for the usual reasons, one order a cycle
    root.cycles_with_blocks(25, blocked={"score_below_min": 2, "symbol_on_cooldown": 1}, clusters=3, orders=1,
                            end=now - 300, score=1.9)
    if first:
        root.healthy(urls["alpaca"], urls["uw"])  # env, state files, the latest cycles, quota lines
    else:
        root.run_cycles(5, end=now)
        root.daemon_cycles(3, end=now)
        root.uw_calls(20, end=now, every=30.0)
        root.heartbeat()
        write_json(root.p("state/health.json"), {"overall_status": "OK", "timestamp": iso(now), "details": {},
                                                 "services": {"trading-bot": "OK", "uw-daemon": "OK"}})
        root.write_weights()
    write_cache(root, now, production_cache(root, now))


def production_cache(root: BotRoot, now: float) -> dict[str, Any]:
    """A ~6 MB cache: 600 tickers of 40 flow trades each and the global blocks."""
    tickers = tuple(f"T{i:03d}" for i in range(600))
    data: dict[str, Any] = {t: ticker_entry(t, now, root.rng, trades=40) for t in tickers}
    data["_metadata"] = {"last_update": now, "updated_by": "uw_flow_daemon", "ticker_count": len(tickers)}
    data["_market_tide"] = {"data": tide_point(now), "last_update": int(now)}
    data["_top_net_impact"] = {"data": [{"ticker": t, "net_premium": "1000000.0"} for t in tickers[:5]],
                               "last_update": int(now)}
    return data


#: stock-bot's daemon polls its tickers one after another with at least 0.5 s between them
#: (``UW_DAEMON_INTER_TICKER_SLEEP_SEC``) and merges each answer into the cache, rewriting the
#: whole file (``_update_cache``): in the exporter's 15 s interval at most this many tickers change
TICKERS_PER_CYCLE = 30
#: and every 600 s (its ``market_tide`` interval, 40 of the exporter's 15 s cycles) it copies the
#: market tide into every ticker: that rewrite changes every entry
TIDE_EVERY = 40


def write_cache(root: BotRoot, now: float, data: dict[str, Any], updated: list[str] | None = None) -> None:
    """The daemon's rewrite: the tickers in ``updated`` (all of them when None) and the metadata
    re-stamped, the file replaced."""
    data["_metadata"]["last_update"] = now
    for key, entry in data.items():
        if not key.startswith("_") and (updated is None or key in updated):
            entry["_last_update"] = int(now)
    write_json(root.p("data/uw_flow_cache.json"), data)


def bot_cycle(root: BotRoot, now: float, cycle: int, cache: dict[str, Any]) -> None:
    """What the bot writes in one cycle: main.py's cycle (its blocked candidates, one order, the
    heartbeat and supervisor health), the daemon's cycle line and UW calls, the cache rewritten
    with the next TICKERS_PER_CYCLE tickers updated (every ticker each TIDE_EVERY cycles)."""
    root.now = now
    root.cycles_with_blocks(1, blocked={"score_below_min": 2, "symbol_on_cooldown": 1}, clusters=3, orders=1,
                            end=now, score=1.9)
    root.daemon_cycles(1, end=now, start_cycle=cycle)
    root.uw_calls(5, end=now)
    root.heartbeat(iter_count=100 + cycle)
    write_json(root.p("state/health.json"), {"overall_status": "OK", "timestamp": iso(now), "details": {},
                                             "services": {"trading-bot": "OK", "uw-daemon": "OK"}})
    tickers = sorted(k for k in cache if not k.startswith("_"))
    if cycle % TIDE_EVERY == 0:  # the market tide, copied into every ticker
        cache["_market_tide"] = {"data": tide_point(now), "last_update": int(now)}
        for sym in tickers:
            cache[sym]["market_tide"] = cache["_market_tide"]["data"]
        write_cache(root, now, cache)
        return
    start = cycle * TICKERS_PER_CYCLE % len(tickers)
    write_cache(root, now, cache, (tickers + tickers)[start:start + TICKERS_PER_CYCLE])


def size_mb(root: Path) -> tuple[float, float]:
    cache = (root / "data/uw_flow_cache.json").stat().st_size / 1e6
    logs = sum((root / r).stat().st_size for r in LOGS) / 1e6
    return cache, logs


def session_calendar_now() -> list[dict[str, str]]:
    """Today (New York) as a trading day whose session began two hours ago and ends in three."""
    now = datetime.now(NY)
    start = max(now - timedelta(hours=2), now.replace(hour=0, minute=0, second=0, microsecond=0))
    end = min(now + timedelta(hours=3), now.replace(hour=23, minute=59, second=0, microsecond=0))
    return [{"date": now.date().isoformat(), "open": start.strftime("%H:%M"), "close": end.strftime("%H:%M")}]


def start_bot(base: Path) -> list[subprocess.Popen[bytes]]:
    (base / "uw_flow_daemon.py").write_text(DAEMON)
    (base / "main.py").write_text("import time\nwhile True: time.sleep(1)\n")
    procs = [subprocess.Popen([sys.executable, script], cwd=base) for script in ("uw_flow_daemon.py", "main.py")]
    deadline = time.monotonic() + 10
    lock = base / "state/uw_flow_daemon.lock"
    while time.monotonic() < deadline and f"pid={procs[0].pid}" not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.05)
    return procs
