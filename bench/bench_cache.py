"""Decoding the UW cache: the shipped partial decoder against ``json.loads`` and a hand-written one.

The checks need the top-level keys, each ticker's keys and scalars and the fields of its blocks
(``exporter/bot/cache.py``). Three ways to get them from a production-size cache, each followed
by the same summary: CPU per parse (median of 15) and the peak of memory allocated during one
parse (tracemalloc):

- ``json.loads`` of the whole file, then the summary (the previous design);
- hand-written, standard library only: a scanner that decodes the three levels and skips
  everything deeper (strings with ``json``'s C ``scanstring``, brackets found by a regex);
- msgspec typed decoding (``exporter.bot.cache.decode``): the three levels typed, everything
  deeper kept as undecoded ``msgspec.Raw``.

Every decoder's summary is compared with ``json.loads``'s. Caches: the check bench's 600
tickers x 40 flow trades written compactly, and the real bot's recorded tickers (shared/realbot,
when present) copied to 300 tickers and written with ``indent=2`` as the bot writes it.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
import tracemalloc
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import msgspec

from exporter.bot.cache import decode, summarise
from sandbox.botroot import ticker_entry, tide_point

REPO = Path(__file__).resolve().parent.parent
#: beside the repository, or beside the main checkout's folder for a worktree (/work/wt/<name>)
REALBOT = next((c / "shared/realbot/daemon/data/uw_flow_cache.json" for c in (REPO.parent, REPO.parent.parent)
                if (c / "shared/realbot").is_dir()), REPO.parent / "shared/realbot/daemon/data/uw_flow_cache.json")
RUNS = 15

_TOKEN = re.compile(r'["{}\[\]]')
_WS = re.compile(r"\s*")
_ELEMENT = re.compile(r'[",{}\[\]]')
_SCALAR = re.compile(r'-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null')


def _skip(s: str, i: int) -> int:
    """End of the JSON value starting at ``s[i]``, without building it."""
    c = s[i]
    if c == '"':
        return int(scanstring(s, i + 1)[1])
    if c not in "{[":
        m = _SCALAR.match(s, i)
        if m is None:
            raise ValueError(f"bad value at {i}")
        return m.end()
    depth = 0
    while True:
        m = _TOKEN.search(s, i)
        if m is None:
            raise ValueError("unterminated")
        i = m.end()
        ch = m.group()
        if ch == '"':
            i = scanstring(s, i)[1]
        elif ch in "{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i


def _value(s: str, i: int, levels: int) -> tuple[Any, int]:
    """Decode ``levels`` levels of objects from ``s[i]``; deeper values stay raw."""
    c = s[i]
    if c == "{" and levels > 0:
        out: dict[str, Any] = {}
        i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
        if s[i] == "}":
            return out, i + 1
        while True:
            key, i = scanstring(s, i + 1)
            i = _WS.match(s, i).end() + 1  # type: ignore[union-attr]  # the colon
            i = _WS.match(s, i).end()  # type: ignore[union-attr]
            out[key], i = _value(s, i, levels - 1)
            i = _WS.match(s, i).end()  # type: ignore[union-attr]
            if s[i] == "}":
                return out, i + 1
            i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
    end = _skip(s, i)
    text = s[i:end]
    if c in "{[":
        return (msgspec.Raw(text.encode()) if c == "{" else [msgspec.Raw(b"0")] * _count(text)), end
    return json.loads(text), end


def _count(array: str) -> int:
    """Elements of a JSON array (its top-level commas), for the summary's trade counts."""
    inner = array[1:-1].strip()
    if not inner:
        return 0
    n, i, depth = 1, 0, 0
    while True:
        m = _ELEMENT.search(inner, i)
        if m is None:
            return n
        i, ch = m.end(), m.group()
        if ch == '"':
            i = scanstring(inner, i)[1]
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif depth == 0:
            n += 1


def hand_written(raw: bytes) -> Any:
    s = raw.decode("utf-8")
    i = _WS.match(s).end()  # type: ignore[union-attr]
    return _value(s, i, 3)[0]


def synthetic() -> bytes:
    now = time.time()
    rng = random.Random(7)
    data: dict[str, Any] = {f"T{i:03d}": ticker_entry(f"T{i:03d}", now, rng, trades=40) for i in range(600)}
    data["_metadata"] = {"last_update": now, "updated_by": "uw_flow_daemon", "ticker_count": 600}
    data["_market_tide"] = {"data": tide_point(now), "last_update": int(now)}
    return json.dumps(data).encode()


def recorded() -> bytes | None:
    if not REALBOT.is_file():
        return None
    real = json.loads(REALBOT.read_bytes())
    out = {k: v for k, v in real.items() if k.startswith("_")}
    for i in range(60):
        out.update({f"{k}{i}": v for k, v in real.items() if not k.startswith("_")})
    return json.dumps(out, indent=2).encode()


def measure(dec: Callable[[bytes], Any], raw: bytes) -> tuple[float, float, Any]:
    def once() -> Any:
        return summarise(dec(raw), len(raw), Path("uw_flow_cache.json"))

    once()
    cpu = []
    for _ in range(RUNS):
        c0 = time.process_time()
        once()
        cpu.append((time.process_time() - c0) * 1000)
    tracemalloc.start()
    summary = once()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(cpu), peak, summary


def main() -> str:
    caches = [("check bench: 600 tickers x 40 trades, compact", synthetic())]
    rec = recorded()
    if rec is not None:
        caches.append(("recorded tickers x 60 (300), `indent=2`", rec))
    rows = ["| cache | size | decoder | CPU per parse + summary (median) | peak Python memory | speed vs json.loads | "
            "same summary |", "|---|---|---|---|---|---|---|"]
    for label, raw in caches:
        base = measure(json.loads, raw)
        for name, dec in (("`json.loads` (previous)", json.loads), ("hand-written (stdlib)", hand_written),
                          ("msgspec partial (shipped)", decode)):
            cpu, peak, summary = base if dec is json.loads else measure(dec, raw)
            rows.append(f"| {label} | {len(raw) / 1e6:.1f} MB | {name} | {cpu:.1f} ms | {peak:.1f} MiB | "
                        f"{base[0] / cpu:.2f}x | {'yes' if summary == base[2] else 'NO'} |")
    return ("One parse of the cache and its summary, in this process (median of "
            f"{RUNS}; peak memory allocated during one parse, from tracemalloc, not counting the file's "
            "bytes already read).\n\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    print(main())
