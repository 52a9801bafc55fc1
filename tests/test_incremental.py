"""Incremental reading: logs are read from the last offset, the cache only when it changed.

Real files in tmp_path; byte counts come from the reader itself (``JsonlTail.bytes_read``) and
parse counts from the shared cache (``ChangedFileCache.parses``), so the tests prove the cost
without timing anything.
"""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

from exporter.bot import funnel
from exporter.bot.context import Context
from exporter.bot.readers import ChangedFileCache, JsonlTail, find_offset, read_json
from exporter.checks import registry
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot, append_jsonl
from sandbox.uw import FakeUW

from .conftest import market_at


def _lines(path: Path, start: int, n: int) -> None:
    append_jsonl(path, [{"i": i, "ts": 1000.0 + i} for i in range(start, start + n)])


def test_reads_only_what_was_appended(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    _lines(log, 0, 3)
    tail = JsonlTail(log)
    assert [r["i"] for r in tail.poll()] == [0, 1, 2]
    first = tail.bytes_read
    assert tail.poll() == [] and tail.bytes_read == first  # unchanged: nothing read
    _lines(log, 3, 2)
    assert [r["i"] for r in tail.poll()] == [3, 4]
    assert tail.appended == 5 and [r["i"] for r in tail.records] == [0, 1, 2, 3, 4]


def test_partial_last_line_waits_for_the_next_read(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    _lines(log, 0, 1)
    with open(log, "a") as fh:
        fh.write('{"i": 1, "ts": 10')  # the writer is mid-line
    tail = JsonlTail(log)
    assert [r["i"] for r in tail.poll()] == [0]
    assert tail.bad_lines == 0
    with open(log, "a") as fh:
        fh.write('01.0}\n{"i": 2}\n')
    assert [r["i"] for r in tail.poll()] == [1, 2]
    assert tail.bad_lines == 0


def test_rotation_starts_the_new_file_from_its_beginning(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    _lines(log, 0, 5)
    tail = JsonlTail(log)
    tail.poll()
    os.rename(log, tmp_path / "run.jsonl.1")  # logrotate: move, then the writer reopens
    _lines(log, 100, 2)
    assert [r["i"] for r in tail.poll()] == [100, 101]
    assert tail.generation == 1
    # what is kept is the current file's records only: a long-lived reader (the exporter) says what
    # a fresh one (a restarted exporter, `check`) says about the same file
    assert [r["i"] for r in tail.kept()] == [100, 101] == [r["i"] for r in JsonlTail(log).snapshot()[0]]


def test_a_replaced_file_of_the_same_size_is_read_anew(tmp_path: Path) -> None:
    """A log rewritten and swapped in (os.replace), its lines edited in place: new inode, same size."""
    log = tmp_path / "orders.jsonl"
    _lines(log, 10, 3)
    tail = JsonlTail(log)
    assert [r["i"] for r in tail.poll()] == [10, 11, 12]
    edited = tmp_path / ".orders.jsonl.tmp"
    _lines(edited, 20, 3)
    os.replace(edited, log)
    assert [r["i"] for r in tail.snapshot()[0]] == [20, 21, 22]


def test_truncation_in_place_is_detected(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    _lines(log, 0, 50)
    tail = JsonlTail(log)
    tail.poll()
    log.write_text("")  # copytruncate
    _lines(log, 200, 1)
    assert [r["i"] for r in tail.poll()] == [200]
    # truncated and regrown past the old offset between two polls: the first line changed
    log.write_text("")
    _lines(log, 300, 80)
    assert [r["i"] for r in tail.poll()][:2] == [300, 301]
    assert tail.generation == 2


def test_first_read_of_a_large_log_starts_near_its_end(tmp_path: Path) -> None:
    log = tmp_path / "big.jsonl"
    _lines(log, 0, 1000)
    size = log.stat().st_size
    tail = JsonlTail(log, initial_bytes=size // 10)
    got = tail.poll()
    assert got[-1]["i"] == 999
    assert 80 <= len(got) <= 101  # a tenth of the file, the cut line dropped
    assert tail.bad_lines == 0  # the line cut by the start offset is skipped, not counted as bad
    assert tail.bytes_read <= size // 10 + 256


def test_second_poll_of_an_unchanged_100_mb_log_reads_nothing(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    line = json.dumps({"ts": "2026-11-25T14:00:00Z", "_ts": 1.0, "msg": "complete", "clusters": 3, "orders": 1})
    block = ((line + "\n") * ((1 << 20) // len(line))).encode()
    with open(log, "wb") as fh:
        while fh.tell() < 100 << 20:
            fh.write(block)
    tail = JsonlTail(log)
    tail.poll()
    assert tail.bytes_read <= (4 << 20) + 256  # the first read: at most 4 MiB from the end
    before = tail.bytes_read
    assert tail.poll() == []
    assert tail.bytes_read == before  # a second poll of the unchanged log reads 0 bytes
    with open(log, "ab") as fh:
        fh.write((line + "\n").encode())
    assert len(tail.poll()) == 1
    assert tail.bytes_read - before <= len(line) + 1 + 128  # the new line and the head check


def test_since_gives_each_consumer_its_new_records(tmp_path: Path) -> None:
    log = tmp_path / "q.jsonl"
    _lines(log, 0, 3)
    tail = JsonlTail(log, keep=4)
    tail.poll()
    seen = tail.appended
    _lines(log, 3, 2)
    tail.poll()
    new, complete = tail.since(seen)
    assert complete and [r["i"] for r in new] == [3, 4]
    _lines(log, 5, 10)  # more than the reader keeps: the consumer must recount
    tail.poll()
    assert tail.since(seen)[1] is False


def test_find_offset_binary_search(tmp_path: Path) -> None:
    log = tmp_path / "q.jsonl"
    _lines(log, 0, 5000)
    off = find_offset(log, lambda r: r.get("ts"), 1000.0 + 4321)
    with open(log, "rb") as fh:
        fh.seek(off)
        assert json.loads(fh.readline())["i"] == 4321
    assert find_offset(log, lambda r: r.get("ts"), 0.0) == 0
    assert find_offset(log, lambda r: r.get("ts"), 1e12) == log.stat().st_size


def test_cache_is_parsed_only_when_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"NVDA": {}}))
    files = ChangedFileCache()
    assert files.get(path, read_json) == {"NVDA": {}}
    assert files.get(path, read_json) == {"NVDA": {}}
    assert files.parses == 1
    path.write_text(json.dumps({"NVDA": {}, "AAPL": {}}))
    assert len(files.get(path, read_json)) == 2
    assert files.parses == 2
    # a different parse of the same file is kept apart, never handed the other's result
    assert files.get(path, lambda p: "summary", kind="other") == "summary"
    assert files.get(path, read_json) == {"NVDA": {}, "AAPL": {}}


def test_engine_cycles_reparse_the_cache_only_on_change(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    """Through the real checks: three cache points share one parse; a rewrite costs one more."""
    when = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
    clock = market_at(alpaca, when)
    root = BotRoot(tmp_path / "bot", now=when.timestamp()).healthy(alpaca.url, uw.url)
    ctx = Context(load_config(None, str(root.path)), environ={}, clock=clock)
    eng = Engine(ctx, registry())
    only = ["FP-1.2", "FP-1.3", "FP-1.4", "FP-1.9", "FP-2.4", "FP-2.5", "FP-1.7", "FP-1.8", "FP-3.4", "FP-1.6"]
    first = eng.run(only)
    assert all(r.status is Status.OK for r in first.values()), {fp: r.outcome.message for fp, r in first.items()}
    parses = ctx.files.parses
    run_tail = ctx.tails.get(root.p("logs/run.jsonl"))
    read_before = run_tail.bytes_read
    eng.run(only)
    assert ctx.files.parses == parses  # nothing changed: nothing parsed again
    assert run_tail.bytes_read == read_before  # and nothing read from the logs
    root.write_cache()
    eng.run(only)
    assert ctx.files.parses == parses + 1


def test_a_burst_larger_than_kept_parses_only_what_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "q.jsonl"
    _lines(log, 0, 2)
    tail = JsonlTail(log, keep=5)
    tail.poll()
    _lines(log, 2, 500)
    assert [r["i"] for r in tail.poll()] == [497, 498, 499, 500, 501]
    assert tail.appended == 502 and tail.generation == 0
    assert tail.since(2) == (list(tail.records), False)  # counting consumers must recount from the file


def _bot_logs(root: Path, seed: int, in_order: bool) -> None:
    """A run log of cycles, errors and other lines, and the blocked candidates of its cycles."""
    rng = random.Random(seed)
    run: list[dict[str, object]] = []
    blocked: list[dict[str, object]] = []
    t = 1_700_000_000.0
    for _ in range(150):
        t += rng.choice((0.0, 5.0, 60.0, 61.5))
        when = t if in_order or rng.random() > 0.15 else t - rng.uniform(0, 400)
        for _ in range(rng.randint(0, 3)):
            stamp = when - rng.uniform(0, 70) if rng.random() > 0.1 else when
            blocked.append({"timestamp": stamp, "reason": rng.choice(("score_below_min", "regime_gate", "x:y")),
                            "score": rng.choice((1.5, 2.5, None, "bad"))})
        kind = rng.random()
        if kind < 0.7:
            run.append({"_ts": when, "msg": "complete", "clusters": rng.randint(0, 4), "orders": rng.randint(0, 1)})
        elif kind < 0.85:
            run.append({"_ts": when, "error": "cluster build failed", "stage": "clusters"})
        elif kind < 0.95:
            run.append({"_ts": when, "msg": "tick"})  # neither a cycle nor an error
        else:
            run.append({"msg": "complete", "clusters": 1})  # no time: not an event
    if not in_order:
        rng.shuffle(blocked)
    append_jsonl(root / "logs/run.jsonl", run)
    append_jsonl(root / "state/blocked_trades.jsonl", blocked)


def _same_windows(root: Path, sizes: tuple[int, ...]) -> None:
    ctx = Context(load_config(None, str(root)), environ={})
    run = ctx.tails.get(root / "logs/run.jsonl", keep=funnel.RUN_KEEP)
    blocked = ctx.tails.get(root / "state/blocked_trades.jsonl", keep=funnel.BLOCKED_KEEP)
    for n in sizes:
        got = funnel.window(ctx, n)
        want, _ = funnel._build(run.kept(), blocked.kept(), n)
        assert got.events == want.events, (root.name, n)
        assert got.events and not got.run_problem and not got.blocked_problem


def test_windows_of_every_size_are_what_building_each_gives(tmp_path: Path) -> None:
    """The points ask for windows of 10, 20 and 60 events; one window is built and the smaller
    are taken from it only when that changes nothing, also for logs out of time order."""
    for seed in range(12):
        for in_order in (True, False):
            root = tmp_path / f"{seed}-{in_order}"
            (root / "logs").mkdir(parents=True)
            (root / "state").mkdir()
            _bot_logs(root, seed, in_order)
            _same_windows(root, (10, 60, 20, 10, 5, 60, 200, 3))
    # where the last events of a larger window are not the smaller window: a cycle logged with an
    # earlier time than the one before it, and a record before the window later than its first
    for name, times in (("unordered", (300, 100, 310)), ("late-before", (400, 100, 200, 300))):
        root = tmp_path / name
        (root / "logs").mkdir(parents=True)
        (root / "state").mkdir()
        append_jsonl(root / "logs/run.jsonl", [{"_ts": t, "msg": "complete", "clusters": 1} for t in times])
        append_jsonl(root / "state/blocked_trades.jsonl", [{"timestamp": 150.0, "reason": "regime_gate"},
                                                          {"timestamp": 200.0, "reason": "regime_gate"}])
        _same_windows(root, (3, 2, 1))
