"""Cost of checking a production-size bot root.

- One full `trading-readiness check` (a fresh process, as cron or an operator runs it) on a bot
  root with a ~6 MB cache and ~100 MB of JSONL logs: wall time and peak RSS.
- The exporter's steady state: a long-lived engine re-running every check on unchanged files,
  CPU per cycle with 100 MB and with 1 GB of logs (the aim: under 50 ms, no growth with size).

The broker and UW servers run in a separate process so their CPU is not counted as ours.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from exporter.config import load as load_config
from exporter.context import Context
from exporter.engine import Engine
from exporter.sim.botroot import BotRoot, ticker_entry

SERVERS = textwrap.dedent("""
    import json, signal, sys, threading
    from exporter.sim.alpaca import FakeAlpaca
    from exporter.sim.uw import FakeUW
    a, u = FakeAlpaca().start(), FakeUW().start()
    print(json.dumps({"alpaca": a.url, "uw": u.url}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Event().wait()
""")

DAEMON = textwrap.dedent("""
    import fcntl, os, time
    fh = open("state/uw_flow_daemon.lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"pid={os.getpid()} ts=0\\n"); fh.flush()
    while True: time.sleep(1)
""")


def write_large_logs(root: Path, total_bytes: int, now: float) -> None:
    """Grow the four JSONL logs to about ``total_bytes`` together, newest lines last."""
    logs = {
        "logs/run.jsonl": lambda i, t: {"ts": "2026-11-25T14:00:00Z", "_ts": t, "msg": "complete", "clusters": 3,
                                        "orders": i % 2},
        "state/blocked_trades.jsonl": lambda i, t: {"timestamp": "2026-11-25T14:00:00Z", "symbol": "AMD",
                                                    "reason": "score_below_min", "score": 1.4, "_ts": t},
        "logs/uw_daemon.jsonl": lambda i, t: {"event": "uw_flow_cycle", "cycle": i, "ts": t,
                                              "timestamp": "2026-11-25T14:00:00Z"},
        "data/uw_api_quota.jsonl": lambda i, t: {"ts": t, "url": "/api/option-trades/flow-alerts",
                                                 "source": "uw_flow_daemon"},
    }
    per_file = total_bytes // len(logs)
    for rel, make in logs.items():
        path = root / rel
        line_len = len(json.dumps(make(0, now))) + 1
        n = max(1, per_file // line_len)
        chunk = 20000
        with open(path, "w") as fh:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                fh.write("".join(json.dumps(make(i, now - (n - i))) + "\n" for i in range(start, stop)))


def build_root(base: Path, logs_bytes: int, urls: dict[str, str]) -> BotRoot:
    root = BotRoot(base).healthy(urls["alpaca"], urls["uw"])
    now = time.time()
    # ~6 MB cache: a few hundred tickers with realistic flow lists
    tickers = tuple(f"T{i:03d}" for i in range(600))
    data = {t: ticker_entry(t, now, root.rng, trades=40) for t in tickers}
    data["_metadata"] = {"last_update": now, "updated_by": "uw_flow_daemon", "ticker_count": len(tickers)}
    data["_market_tide"] = {"data": []}
    (base / "data/uw_flow_cache.json").write_text(json.dumps(data))
    write_large_logs(base, logs_bytes, now)
    (base / "uw_flow_daemon.py").write_text(DAEMON)
    (base / "main.py").write_text("import time\nwhile True: time.sleep(1)\n")
    return root


def size_mb(root: Path) -> tuple[float, float]:
    cache = (root / "data/uw_flow_cache.json").stat().st_size / 1e6
    logs = sum((root / r).stat().st_size for r in ("logs/run.jsonl", "state/blocked_trades.jsonl",
                                                   "logs/uw_daemon.jsonl", "data/uw_api_quota.jsonl")) / 1e6
    return cache, logs


def one_shot_check(root: Path) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "exporter", "--bot-root", str(root), "check", "--json"],
                       capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak_mb = after.ru_maxrss / 1024  # Linux: KiB; the max over children so far
    return wall, cpu, int(peak_mb) if r.returncode in (0, 1, 2) else -1


def steady_state(root: Path, cycles: int = 30) -> tuple[float, float, int]:
    """CPU ms per cycle (median, p90) and bytes read from logs in steady state."""
    cfg = load_config(None, str(root))
    ctx = Context(cfg, environ={})
    eng = Engine(ctx)
    ids = cfg.enabled_ids()
    eng.run(ids)  # first cycle: parses the cache, reads the log tails once
    eng.run(ids)
    samples = []
    read_before = sum(t.bytes_read for t in ctx.tails._tails.values())
    for _ in range(cycles):
        c0 = time.process_time()
        eng.run(ids)
        samples.append((time.process_time() - c0) * 1000)
    read_after = sum(t.bytes_read for t in ctx.tails._tails.values())
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9) - 1], read_after - read_before


def main() -> str:
    servers = subprocess.Popen([sys.executable, "-c", SERVERS], stdout=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        assert servers.stdout is not None
        urls = json.loads(servers.stdout.readline())
        rows = []
        steady = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, logs_bytes in (("100 MB", 100 * 10**6), ("1 GB", 10**9)):
                base = Path(tmp) / label.replace(" ", "")
                root = build_root(base, logs_bytes, urls)
                for script in ("uw_flow_daemon.py", "main.py"):
                    procs.append(subprocess.Popen([sys.executable, script], cwd=base))
                time.sleep(0.5)
                cache_mb, logs_mb = size_mb(root.path)
                if label == "100 MB":
                    runs = [one_shot_check(root.path) for _ in range(3)]
                    wall = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    peak = max(r[2] for r in runs)
                    rows.append(f"| one `check` process, {cache_mb:.1f} MB cache, {logs_mb:.0f} MB logs | "
                                f"{wall * 1000:.0f} ms wall | {cpu * 1000:.0f} ms CPU | {peak} MB peak RSS |")
                med, p90, read = steady_state(root.path)
                steady.append(f"| steady-state cycle, {logs_mb:.0f} MB logs, unchanged files | "
                              f"{med:.1f} ms CPU (median) | {p90:.1f} ms CPU (p90) | {read} log bytes read |")
                for p in procs:
                    p.kill()
                    p.wait()
                procs.clear()
                os.sync()
        return "\n".join([
            "| measurement | | | |", "|---|---|---|---|", *rows, *steady, "",
            "Steady state runs every enabled check once per cycle in one long-lived engine (the exporter's "
            "shape) with the broker and UW servers in another process; 'log bytes read' counts what the "
            "incremental readers read during the measured cycles (0 = nothing re-read).",
        ])
    finally:
        for p in procs:
            p.kill()
        servers.terminate()
        servers.wait(timeout=10)


if __name__ == "__main__":
    print(main())
