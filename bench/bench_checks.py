"""Cost of checking a production-size bot root, in session and with the market closed.

- One full `trading-readiness check` (a fresh process, as cron or an operator runs it) on a bot
  root with a ~6 MB cache and ~100 MB of JSONL logs, in session: wall time, CPU and peak RSS.
- The exporter's steady state: a long-lived engine re-running every check on unchanged files,
  CPU per cycle with 100 MB and with 1 GB of logs (the aim: under 50 ms, no growth with size),
  once in session and once with the market closed, plus the categories 1-3 and 4-6 on their own.

The market phase is fixed, never the hour the bench happens to run at: outside the session most
activity points are SKIPPED before they read anything, which would flatter the figures. The
steady state runs on a real trading day (Tuesday 2026-11-24, 11:00 ET in session, 18:00 ET
closed): the fake broker's clock and calendar and the engine's clock are that day's, moving at
the speed of real time, and the bot root is stamped at that time. The one-shot `check` runs on
the real clock (a separate process cannot be given another one), so the fake broker's calendar
gets a session around the current time instead. Each row says how many points were OK, WARN,
ERROR and SKIPPED in its cycles, so the reader sees what was measured.

Each measured cycle re-fetches the broker's answers (``alpaca.cache_seconds: 0.5`` and a 0.6 s
pause between cycles, as the exporter's 15-60 s intervals do); the pause is not CPU. The broker
and UW servers run in a separate process so their CPU is not counted as ours; their rate limit is
raised because the bench packs many minutes of polling into seconds.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from exporter.bot.context import Context
from exporter.bot.market import NY
from exporter.checks import registry
from exporter.core.catalog import load as load_catalog
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Status
from sandbox.botroot import UW_BASE, BotRoot, iso, ticker_entry, tide_point, write_json

IN_SESSION = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # Tuesday 11:00 ET, open since 09:30
CLOSED = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)  # the same Tuesday, 18:00 ET
CYCLES = 30
ROUNDS = 3
PAUSE_SECONDS = 0.6
LOG_SIZES = (("100 MB", 100 * 10**6), ("1 GB", 10**9))
LOGS = ("logs/run.jsonl", "state/blocked_trades.jsonl", "logs/uw_daemon.jsonl", "data/uw_api_quota.jsonl")

#: the fake broker and UW, in their own process; stdin takes {"offset": s, "calendar": [...]|null}
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
        print("ok", flush=True)
""")

DAEMON = textwrap.dedent("""
    import fcntl, os, time
    fh = open("state/uw_flow_daemon.lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"pid={os.getpid()} ts=0\\n"); fh.flush()
    while True: time.sleep(1)
""")


class Servers:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.urls: dict[str, str] = json.loads(self._io()[1].readline())
        self.offset = 0.0

    def _io(self) -> tuple[TextIO, TextIO]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def at(self, when: datetime | None, calendar: list[dict[str, str]] | None = None) -> None:
        """Move both fakes' clocks to ``when`` (None: the real time), running on from there."""
        self.offset = 0.0 if when is None else when.timestamp() - time.time()
        stdin, stdout = self._io()
        stdin.write(json.dumps({"offset": self.offset, "calendar": calendar}) + "\n")
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
    tickers = tuple(f"T{i:03d}" for i in range(600))
    data: dict[str, Any] = {t: ticker_entry(t, now, root.rng, trades=40) for t in tickers}
    data["_metadata"] = {"last_update": now, "updated_by": "uw_flow_daemon", "ticker_count": len(tickers)}
    data["_market_tide"] = {"data": tide_point(now), "last_update": int(now)}
    data["_top_net_impact"] = {"data": [{"ticker": t, "net_premium": "1000000.0"} for t in tickers[:5]],
                               "last_update": int(now)}
    write_json(root.p("data/uw_flow_cache.json"), data)


def size_mb(root: Path) -> tuple[float, float]:
    cache = (root / "data/uw_flow_cache.json").stat().st_size / 1e6
    logs = sum((root / r).stat().st_size for r in LOGS) / 1e6
    return cache, logs


def counts(statuses: Counter[Status]) -> str:
    return " / ".join(str(statuses.get(s, 0)) for s in (Status.OK, Status.WARN, Status.ERROR, Status.SKIPPED))


def one_shot_check(root: Path) -> tuple[float, float, int, dict[str, Any]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "exporter", "--bot-root", str(root), "check", "--json"],
                       capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1, 2):
        raise RuntimeError(f"check exited {r.returncode}: {r.stderr.strip()}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak_mb = after.ru_maxrss / 1024  # Linux: KiB; the max over children so far
    return wall, cpu, int(peak_mb), json.loads(r.stdout)


class Measured:
    """Cycles of one configuration, gathered over several rounds."""

    def __init__(self) -> None:
        self.points = 0
        self.firsts: list[float] = []
        self.samples: list[float] = []
        self.read = 0
        self.counts: Counter[tuple[int, int, int, int]] = Counter()
        self.problems: set[str] = set()

    def median(self) -> float:
        return statistics.median(self.samples)

    def p90(self) -> float:
        return sorted(self.samples)[int(len(self.samples) * 0.9) - 1]


def steady_state(root: Path, servers: Servers, into: Measured, cycles: int, ids: list[str] | None = None,
                 refetch: bool = True) -> None:
    """A fresh engine: the first (cold) cycle, one warm-up, then ``cycles`` measured ones on
    unchanged files.

    ``refetch``: every cycle asks the broker again (as at the exporter's intervals); else the
    cycles run back to back and share the broker's answers for ``alpaca.cache_seconds`` (5 s).
    """
    cfg_file = root / "bench-exporter.yaml"
    cfg_file.write_text("alpaca: {cache_seconds: 0.5}\n" if refetch else "{}\n")
    pause = PAUSE_SECONDS if refetch else 0.0
    cfg = load_config(str(cfg_file), str(root))
    ctx = Context(cfg, environ={}, clock=servers.clock)
    eng = Engine(ctx, registry())
    ids = ids or cfg.enabled_ids()
    into.points = len(ids)
    c0 = time.process_time()
    eng.run(ids)  # first cycle: parses the cache, reads every log's tail once
    into.firsts.append((time.process_time() - c0) * 1000)
    time.sleep(pause)
    eng.run(ids)
    read_before = sum(t.bytes_read for t in ctx.tails._tails.values())
    for _ in range(cycles):
        time.sleep(pause)
        c0 = time.process_time()
        results = eng.run(ids)
        into.samples.append((time.process_time() - c0) * 1000)
        by = Counter(r.status for r in results.values())
        into.counts[(by[Status.OK], by[Status.WARN], by[Status.ERROR], by[Status.SKIPPED])] += 1
        into.problems |= {f"{fp} {r.status.name}: {r.outcome.message}" for fp, r in results.items()
                          if r.status in (Status.WARN, Status.ERROR)}
    into.read += sum(t.bytes_read for t in ctx.tails._tails.values()) - read_before


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


def main() -> str:
    servers = Servers()
    procs: list[subprocess.Popen[bytes]] = []
    one_shot: list[str] = []
    steady: list[str] = []
    notes: list[str] = []
    cats = load_catalog()

    def row(label: str, logs_mb: float, phase: str, m: Measured, refetch: bool = True) -> None:
        (key, _), = m.counts.most_common(1)
        varied = "" if len(m.counts) == 1 else " (varied)"
        broker = "re-fetched" if refetch else "shared 5 s"
        steady.append(f"| {label} | {logs_mb:.0f} MB | {phase} | {broker} | {statistics.median(m.firsts):.0f} ms | "
                      f"{m.median():.1f} ms | {m.p90():.1f} ms | {m.read} | {' / '.join(map(str, key))}{varied} |")
        for p in sorted(m.problems):
            notes.append(f"- {label}, {logs_mb:.0f} MB, {phase}: {p}")

    try:
        with tempfile.TemporaryDirectory() as tmp:
            roots: dict[str, BotRoot] = {}
            servers.at(IN_SESSION)
            for label, logs_bytes in LOG_SIZES:
                base = Path(tmp) / label.replace(" ", "")
                roots[label] = BotRoot(base, now=IN_SESSION.timestamp())
                write_history(base, logs_bytes, end=IN_SESSION.timestamp() - 2 * 86400)
            for phase, when in (("in session", IN_SESSION), ("closed", CLOSED)):
                servers.at(when)
                for root in roots.values():
                    stamp_root(root, servers.clock(), servers.urls, first=phase == "in session")
                if not procs:
                    for root in roots.values():
                        procs += start_bot(root.path)
                sizes = {label: size_mb(root.path)[1] for label, root in roots.items()}
                # the roots take turns, so a busy moment on the machine falls on both alike
                for refetch in (True, False):
                    got = {label: Measured() for label in roots}
                    for _ in range(ROUNDS):
                        for label, root in roots.items():
                            steady_state(root.path, servers, got[label], CYCLES // ROUNDS, refetch=refetch)
                    for label, m in got.items():
                        row(f"all {m.points} points", sizes[label], phase, m, refetch)
                if phase == "in session":
                    first = next(iter(roots.values()))
                    for name, low in (("categories 1-3", True), ("categories 4-6", False)):
                        ids = [p.id for p in cats if (p.category_number <= 3) is low]
                        m = Measured()
                        steady_state(first.path, servers, m, CYCLES, ids)
                        row(f"{name} ({len(ids)} points)", sizes[LOG_SIZES[0][0]], phase, m)
            # the one-shot runs on the real clock: a session around it on the fake broker's calendar
            root = roots[LOG_SIZES[0][0]]
            servers.at(None, session_calendar_now())
            stamp_root(root, time.time(), servers.urls)
            cache_mb, logs_mb = size_mb(root.path)
            runs = [one_shot_check(root.path) for _ in range(3)]
            points = runs[-1][3]["failure_points"]
            by = Counter(p["status"] for p in points.values())
            phase = "in session" if points["FP-4.1"]["details"].get("is_open") else "closed"
            one_shot.append(
                f"| one `check` process, {cache_mb:.1f} MB cache, {logs_mb:.0f} MB logs, {phase} | "
                f"{statistics.median(r[0] for r in runs) * 1000:.0f} ms wall | "
                f"{statistics.median(r[1] for r in runs) * 1000:.0f} ms CPU | {max(r[2] for r in runs)} MB "
                f"peak RSS | {by['OK']} / {by['WARN']} / {by['ERROR']} / {by['SKIPPED']} |")
            for fp, p in points.items():
                if p["status"] in ("WARN", "ERROR"):
                    notes.append(f"- one `check` process: {fp} {p['status']}: {p['message']}")
        return "\n".join([
            "| one-shot | wall (median of 3) | CPU (median) | memory | OK / WARN / ERROR / SKIPPED |",
            "|---|---|---|---|---|", *one_shot, "",
            "| steady state, unchanged files | logs | market | broker answers | first cycle CPU | "
            "CPU per cycle (median) | p90 | log bytes read | OK / WARN / ERROR / SKIPPED per cycle |",
            "|---|---|---|---|---|---|---|---|---|", *steady, "",
            f"Steady state: a long-lived engine (the exporter's shape) runs the points once per cycle: "
            f"{CYCLES} measured cycles per row, in {ROUNDS} rounds of a fresh engine (a cold first cycle, "
            "whose median is 'first cycle CPU', and one warm-up each) in which the two bot roots take turns. "
            f"'re-fetched': every cycle asks the broker again (`alpaca.cache_seconds: 0.5`, {PAUSE_SECONDS} s "
            "between cycles), as each run does at the exporter's 15-60 s intervals; 'shared 5 s': the cycles "
            "run back to back and share the broker's answers for the default `alpaca.cache_seconds` (5 s). "
            f"In session is {IN_SESSION.astimezone(NY):%A %Y-%m-%d %H:%M} ET, closed the same day at "
            f"{CLOSED.astimezone(NY):%H:%M} ET, on the fake broker's clock and calendar and the engine's clock. "
            "'log bytes read' counts what the incremental readers read during the measured cycles "
            "(0 = nothing re-read). The one-shot runs on the real clock with a session around it on the "
            "fake broker's calendar.",
            "",
            "Points not OK in the measured runs:" if notes else "Every point not SKIPPED was OK.",
            *notes,
        ])
    finally:
        for p in procs:
            p.kill()
        servers.stop()


if __name__ == "__main__":
    print(main())
