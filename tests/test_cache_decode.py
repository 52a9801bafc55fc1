"""The UW cache's partial decoder gives exactly what ``json.loads`` gave: the same summary of every
cache, the same reason for every file that is not JSON, one parse however many checks ask.

The caches are the real bot's (``shared/realbot``), as it wrote them (``indent=2``), and a
production-size one built from their tickers; torn and damaged copies of them are judged by
both decoders.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.bot.cache import Unchanged, decode, decode_unchanged, summarise
from exporter.bot.readers import ChangedFileCache, FileProblem, ReadBuffer, read_json
from exporter.core.model import Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

from .conftest import evaluate, market_at
from .realbot import realbot_dir

OPEN = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)  # Tuesday 11:00 ET


def real_cache(which: str) -> bytes:
    return (realbot_dir() / which / "data" / "uw_flow_cache.json").read_bytes()


def production_size(copies: int = 60) -> bytes:
    """The daemon's recorded tickers copied under new names until the file is several MB."""
    real = json.loads(real_cache("daemon"))
    out = {k: v for k, v in real.items() if k.startswith("_")}
    for i in range(copies):
        for sym, entry in real.items():
            if not sym.startswith("_"):
                out[f"{sym}{i}"] = entry
    return json.dumps(out, indent=2).encode()


def judged(decoder: Any, raw: bytes, memo: Unchanged | None = None) -> tuple[str, Any]:
    """What a decoder makes of the bytes: the summary (with the tickers ``memo`` counted), or the
    exception's type and reason."""
    try:
        value = decoder(raw)
        return "ok", summarise(value, len(raw), Path("uw_flow_cache.json"), memo.counted if memo else None)
    except (ValueError, RecursionError, FileProblem) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("which", ["daemon", "main"])
def test_real_caches_summarise_as_with_json(which: str) -> None:
    raw = real_cache(which)
    fast, slow = judged(decode, raw), judged(json.loads, raw)
    assert fast == slow and fast[0] == "ok"
    s = fast[1]
    # the recorded facts (realbot README): 5 tickers kept, the 429-zeroed blocks still count
    assert s.symbols == ["AAPL", "LOW", "MSFT", "NVDA", "SPY"] and s.tide_points == 1
    assert s.metadata["ticker_count"] == 53


def test_production_size_cache_summarises_as_with_json() -> None:
    raw = production_size()
    assert len(raw) > 8_000_000
    fast, slow = judged(decode, raw), judged(json.loads, raw)
    assert fast == slow and fast[0] == "ok"
    assert len(fast[1].symbols) == 300 and fast[1].total_trades == 60 * 160


def damaged(raw: bytes, rng: random.Random, i: int) -> tuple[bytes, int]:
    """``raw`` cut short (i % 3 == 0), with a byte replaced (1) or a run of bytes lost (2); and where."""
    data = bytearray(raw)
    pos = rng.randrange(len(data))
    if i % 3 == 0:
        del data[pos:]
    elif i % 3 == 1:
        data[pos] = rng.randrange(256)
    else:
        del data[pos:pos + rng.randrange(1, 64)]
    return bytes(data), pos


def test_torn_and_damaged_caches_fail_with_jsons_reason() -> None:
    """Cut short, a byte replaced, a run of bytes lost: accepted or refused alike, same reason."""
    raw = real_cache("daemon")
    rng = random.Random(16)
    refused = 0
    for i in range(1500):
        data, pos = damaged(raw, rng, i)
        fast, slow = judged(decode, data), judged(json.loads, data)
        assert fast == slow, (i, pos)
        refused += fast[0] != "ok"
    assert 500 < refused < 1500  # both kinds of outcome were compared


@pytest.mark.parametrize("text", [
    b'{"A": {"flow_trades": ["\xff"]}}',  # not UTF-8 inside a trade the fast decoder skips
    b'{"A": {"conviction": NaN, "flow_trades": [Infinity]}}',  # json.loads accepts these
    b'\xef\xbb\xbf{"A": {"trade_count": 3}}',  # a BOM
    b'{"A": {"trade_count": 1e400}, "_metadata": {"last_update": 123456789012345678901234567890}}',
    b'{"A": {"flow_trades": ["\\ud800"]}}',  # a lone surrogate
    b'{"A": {"flow_trades": [' + b"[" * 3000 + b"]" * 3000 + b"]}}",  # too deep for either
    '{"A": {"trade_count": 2}}'.encode("utf-16"),
    b'["A"]', b"", b"  ", b'{"A": 1} trailing', b'{"A": {"flow_trades": [1,]}}',
])
def test_edge_cases_are_judged_as_by_json(text: bytes) -> None:
    assert judged(decode, text) == judged(json.loads, text)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=12)
_block = st.one_of(_json, st.fixed_dictionaries({}, optional={
    "data": _json, "_rate_limited": _json, "_blocked": _json, "print_count": _json, "last_update": _json}))
_ticker = st.one_of(_json, st.dictionaries(
    st.sampled_from(["flow_trades", "trade_count", "flow", "market_tide", "dark_pool", "greeks", "etf_flow",
                     "_last_update", "sentiment", "insider"]), _block, max_size=6))
_tide = st.one_of(_json, st.fixed_dictionaries({}, optional={"data": _json, "last_update": _json}),
                  st.lists(st.dictionaries(st.sampled_from(["timestamp", "ts", "date", "net_volume"]),
                                           st.one_of(_scalar, st.just("2026-11-24T16:00:00Z")), max_size=3),
                           max_size=3))
_cache = st.fixed_dictionaries({}, optional={"_metadata": _json, "_market_tide": _tide}).flatmap(
    lambda g: st.dictionaries(st.sampled_from(["NVDA", "AAPL", "SPY", "_top_net_impact"]), _ticker,
                              max_size=4).map(lambda t: {**t, **g}))


@settings(max_examples=300, deadline=None)
@given(_cache, st.booleans())
def test_any_cache_shape_summarises_as_with_json(cache: dict[str, Any], indent: bool) -> None:
    raw = json.dumps(cache, indent=2 if indent else None).encode()
    assert judged(decode, raw) == judged(json.loads, raw)


@settings(max_examples=200, deadline=None)
@given(_cache, _cache, st.booleans())
def test_a_rewrite_decoded_from_the_last_one_summarises_as_with_json(first: dict[str, Any], changes: dict[str, Any],
                                                                     indent: bool) -> None:
    """The daemon's rewrite: some entries replaced or added, the rest the same bytes as before."""
    memo = Unchanged()
    raw1 = json.dumps(first, indent=2 if indent else None).encode()
    assert judged(functools.partial(decode_unchanged, memo=memo), raw1, memo) == judged(json.loads, raw1)
    raw2 = json.dumps({**first, **changes}, indent=2 if indent else None).encode()
    assert judged(functools.partial(decode_unchanged, memo=memo), raw2, memo) == judged(json.loads, raw2)
    # and back: what the second decode remembered serves the first bytes again
    assert judged(functools.partial(decode_unchanged, memo=memo), raw1, memo) == judged(json.loads, raw1)
    # and once more, now that a walk has remembered what follows each value
    assert judged(functools.partial(decode_unchanged, memo=memo), raw2, memo) == judged(json.loads, raw2)


def test_a_rewrite_decodes_only_the_tickers_it_changed() -> None:
    """A production-size cache rewritten with three tickers updated (stock-bot's daemon merges
    one ticker's answer and rewrites the file): the other entries are not decoded again, and the
    summary is json's, also when a ticker's entry stops being an object or a ticker goes."""
    cache = json.loads(production_size(20))
    tickers = sorted(k for k in cache if not k.startswith("_"))
    memo = Unchanged()
    raw = json.dumps(cache, indent=2).encode()
    assert judged(functools.partial(decode_unchanged, memo=memo), raw, memo) == judged(json.loads, raw) and memo.reused == 0
    for sym in tickers[:3]:
        cache[sym]["_last_update"] = 1_800_000_000
        cache[sym]["flow_trades"] = cache[sym]["flow_trades"][:1]
    cache["_metadata"]["last_update"] = 1_800_000_000
    raw = json.dumps(cache, indent=2).encode()
    assert judged(functools.partial(decode_unchanged, memo=memo), raw, memo) == judged(json.loads, raw)
    assert memo.reused == len(tickers) - 3 + 1  # "_top_net_impact" too; "_metadata" is always decoded
    assert memo.walked  # compared against the last file, without a pass over the whole of it
    cache[tickers[3]] = ["not", "an", "object"]
    del cache[tickers[4]]
    raw = json.dumps(cache, indent=2).encode()
    assert judged(functools.partial(decode_unchanged, memo=memo), raw, memo) == judged(json.loads, raw)
    assert memo.reused == len(tickers) - 2 + 1
    for sym in tickers[5:]:  # the market tide copied into every ticker: the walk gives way to one pass
        cache[sym]["market_tide"] = {"net_call_premium": "1"}
    raw = json.dumps(cache, indent=2).encode()
    assert judged(functools.partial(decode_unchanged, memo=memo), raw, memo) == judged(json.loads, raw)
    assert (memo.walked, memo.reused) == (False, 3 + 1 + 1)  # the first four kept, one gone; "_top_net_impact"


_FIRST = b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 3}}'


@pytest.mark.parametrize(("second", "walked"), [
    (_FIRST, True),  # nothing changed
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 2, "y": []}, "C": {"trade_count": 3}}', True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 4}}', True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]},\n  "B" : {"x": 1}  ,"C":{"trade_count": 3}  }\n', True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "C": {"trade_count": 3}}', True),  # B went
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 3}} x', False),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 3}', False),
    (b'{"A": {"trade_count": 123, "flow_trades": []}, "B": {"x": 1}, "C": {"trade_count": 3}}', True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"C": 1, "x": 1}, "C": {"trade_count": 3}}', False),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 3}, "D": 1}', True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "D": 1, "B": {"x": 1}, "C": {"trade_count": 3}}', False),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 3}, "A": []}', False),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1,}, "C": {"trade_count": 3}}', False),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": NaN, "C": {"trade_count": 3}}', False),
    (b'{"C": {"trade_count": 3}, "A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}}', True),
    # more whitespace after a colon than last time: the remembered comma and key still match
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B":  \n  {"x": 1}, "C":\t{"trade_count": 3}}', True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1}, "C": {"trade_count": 3}, "B": 2}', False),
    (b'{"A\\u0041": 1, "B": {"x": 1}, "C": {"trade_count": 3}}', False),
    # a changed entry's encoding is checked where it changed: UTF-8 is walked, anything else is json's error
    ('{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": "\u00e9\u4e2d"}, "C": {"trade_count": 3}}'
     .encode(), True),
    (b'{"A": {"trade_count": 12, "flow_trades": [{"a": 1}]}, "B": {"x": 1, "flow_trades": [{"a": "\xff"}]}, '
     b'"C": {"trade_count": 3}}', False),
])
def test_a_rewrite_walked_against_the_last_file_is_judged_as_by_json(second: bytes, walked: bool) -> None:
    """The walk compares unchanged entries and decodes the rest; what it cannot follow (a new key
    in the middle, a key seen twice, a nested key named like the next ticker, anything that is
    not JSON) gets the whole pass, and every outcome is json's. Both right after the whole pass
    and after a walk of the first bytes, which remembered what followed each value (the comma,
    the next key and the colon) and compares those bytes instead of matching them."""
    for walks_before in (0, 1, 2):
        memo = Unchanged()
        fast = functools.partial(decode_unchanged, memo=memo)
        assert judged(fast, _FIRST, memo) == judged(json.loads, _FIRST) and not memo.walked
        for _ in range(walks_before):
            assert judged(fast, _FIRST, memo) == judged(json.loads, _FIRST) and memo.walked
        assert bool(memo.seps) is (walks_before > 0)
        assert judged(fast, second, memo) == judged(json.loads, second)
        assert memo.walked is walked


def test_a_torn_rewrite_after_a_good_one_fails_with_jsons_reason() -> None:
    """What the last good decode remembered never makes a damaged file look whole."""
    raw = real_cache("daemon")
    rng = random.Random(17)
    for i in range(400):
        memo = Unchanged()
        fast = functools.partial(decode_unchanged, memo=memo)
        assert judged(fast, raw, memo)[0] == "ok"
        data, pos = damaged(raw, rng, i)
        assert judged(fast, data, memo) == judged(json.loads, data), (i, pos)
        # and the next whole file is judged whole again
        assert judged(fast, raw, memo) == judged(json.loads, raw)


@pytest.mark.parametrize("text", [
    b'{"A": {"flow_trades": ["\xff"]}}',
    b'{"A": {"conviction": NaN, "flow_trades": [Infinity]}}',
    b'{"A": {"trade_count": 1e400}, "_metadata": {"last_update": 123456789012345678901234567890}}',
    b'{"A": {"flow_trades": [' + b"[" * 3000 + b"]" * 3000 + b"]}}",
    b'["A"]', b'{"A": 1} trailing', b'{"A": {"flow_trades": [1,]}}', b'{"A": {"x": 1}, "A": [2]}',
])
def test_edge_cases_after_a_good_decode_are_judged_as_by_json(text: bytes) -> None:
    memo = Unchanged()
    good = b'{"A": {"flow_trades": [{"a": 1}], "trade_count": 1}, "B": {"x": 1}}'
    assert judged(functools.partial(decode_unchanged, memo=memo), good, memo) == judged(json.loads, good)
    assert judged(functools.partial(decode_unchanged, memo=memo), text, memo) == judged(json.loads, text)


def test_a_file_read_into_the_kept_buffer_is_read_as_read_bytes_reads_it(tmp_path: Path) -> None:
    """Growing, shrinking, empty, missing, a directory, and a file longer than its size said
    (a pipe, which reports none): each read is exactly the file, or read_bytes' error."""
    buf, path = ReadBuffer(), tmp_path / "f.json"
    for content in (b'{"a": 1}', production_size(copies=2), b"", b"[1, 2]" * 1000, b"x"):
        path.write_bytes(content)
        assert bytes(buf.read(path)) == content == path.read_bytes()
    for bad, error in ((tmp_path / "missing", FileNotFoundError), (tmp_path, IsADirectoryError)):
        with pytest.raises(error):
            buf.read(bad)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    body = bytes(range(256)) * 1000  # past ReadBuffer.GROW several times
    writer = threading.Thread(target=fifo.write_bytes, args=(body,))
    writer.start()
    assert bytes(buf.read(fifo)) == body
    writer.join(10)


def test_a_buffer_something_still_views_is_never_written_over(tmp_path: Path) -> None:
    """A msgspec.Raw decoded from a read keeps its bytes through the next read (which takes new
    memory), and a buffer nothing views any more is read into again."""
    buf, path = ReadBuffer(), tmp_path / "f.json"
    path.write_bytes(b'{"a": [1, 2, 3]}')
    first = buf.read(path)
    kept = msgspec.json.decode(first, type=dict[str, msgspec.Raw])["a"]
    path.write_bytes(b'{"a": [7, 8, 9]}')
    second = buf.read(path)
    assert second is not first and bytes(kept) == b"[1, 2, 3]" and bytes(second) == b'{"a": [7, 8, 9]}'
    del kept, first
    path.write_bytes(b'{"b": 4}')
    assert buf.read(path) is second and bytes(second) == b'{"b": 4}'


@pytest.mark.parametrize("rewrite", ["walked", "whole pass", "refused"])
def test_what_a_decode_remembers_never_holds_the_read_buffer(tmp_path: Path, rewrite: str) -> None:
    """After each decode the cache is read into the same memory again (nothing the memo keeps
    refers to the file's buffer), and the summary is json's, whichever way the rewrite was decoded."""
    cache = json.loads(production_size(copies=14))  # 70 tickers: more than a walk decodes (WALK_CHANGED)
    tickers = sorted(k for k in cache if not k.startswith("_"))
    path, memo = tmp_path / "uw_flow_cache.json", Unchanged()

    def decoded() -> tuple[bytearray, tuple[str, Any]]:
        raw = memo.buffer.read(path)
        return raw, judged(functools.partial(decode_unchanged, memo=memo), raw, memo)

    path.write_text(json.dumps(cache, indent=2))
    first, summary = decoded()
    assert summary == judged(json.loads, path.read_bytes()) and not memo.walked
    changed = tickers[:2] if rewrite == "walked" else tickers
    for sym in changed:
        cache[sym]["flow_trades"] = [{"a": 1}]
    text = json.dumps(cache, indent=2)
    path.write_text(text if rewrite != "refused" else text.replace('"a": 1', '"a": NaN', 1))
    second, summary = decoded()
    assert summary == judged(json.loads, path.read_bytes())
    assert memo.walked is (rewrite == "walked") and second is first
    path.write_text(json.dumps(cache, indent=2))
    third, summary = decoded()
    assert third is first and summary == judged(json.loads, path.read_bytes())


def test_concurrent_readers_share_one_parse(tmp_path: Path) -> None:
    """Checks that ask for a changed file at the same moment wait for one parse, not one each."""
    path = tmp_path / "uw_flow_cache.json"
    path.write_bytes(production_size(copies=4))
    files = ChangedFileCache()
    entered = threading.Event()
    release = threading.Event()

    def parse(p: Path) -> Any:
        entered.set()
        assert release.wait(30)
        return read_json(p, 3, 0.2, decode)

    start = threading.Barrier(8)
    got: list[Any] = []

    def reader() -> None:
        start.wait()
        got.append(files.get(path, parse))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    assert entered.wait(30)
    release.set()
    for t in threads:
        t.join(30)
    assert len(got) == 8 and all(g is got[0] for g in got)
    assert files.parses == 1


def test_checks_judge_a_production_cache_and_its_torn_copy(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    """Through the real checks: the recorded tickers at production size are judged, and the same
    file cut short fails FP-1.2 with json's reason, its dependents skipped, as before."""
    root = BotRoot(tmp_path / "bot", now=OPEN.timestamp()).healthy(alpaca.url, uw.url)
    cache = json.loads(production_size(copies=40))
    cache["_metadata"]["last_update"] = OPEN.timestamp() - 30
    path = root.p("data/uw_flow_cache.json")
    path.write_text(json.dumps(cache, indent=2))
    only = ["FP-1.2", "FP-1.3", "FP-1.4", "FP-1.9"]
    rep = evaluate(root.path, only=only, clock=market_at(alpaca, OPEN), isolated=False)
    assert rep.results["FP-1.2"].status is Status.OK
    assert rep.results["FP-1.2"].outcome.message.endswith("200 symbols, 3 global keys")
    assert rep.results["FP-1.9"].outcome.details["tickers_with_trades"] == 160
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(FileProblem) as before:
        read_json(path, 3, 0.0)  # json.loads's verdict on the torn file
    rep = evaluate(root.path, only=only, clock=market_at(alpaca, OPEN), isolated=False)
    assert rep.results["FP-1.2"].status is Status.ERROR
    assert rep.results["FP-1.2"].outcome.message == str(before.value)
    assert "is not valid JSON (" in str(before.value)
    assert {rep.results[fp].outcome.message for fp in only[1:]} == {"depends on FP-1.2"}


FORKED = """
import os, sys
from exporter.bot.cache import cache_summary
from exporter.bot.context import Context
from exporter.core.config import load
from sandbox.botroot import BotRoot
root = BotRoot(sys.argv[1]).healthy()
ctx = Context(load(None, str(root.path)), environ={})
n = len(cache_summary(ctx).symbols)
pid = os.fork()
if pid == 0:
    root.write_cache()  # changed: the child parses again
    os._exit(0 if len(cache_summary(ctx).symbols) == n else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_parses_the_cache(tmp_path: Path) -> None:
    """The parse thread does not survive a fork; the child gets its own instead of waiting forever."""
    r = subprocess.run([sys.executable, "-c", FORKED, str(tmp_path / "bot")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


# --- the log-line and state-file decoder (readers.loads) --------------------------------------

def _outcome(decoder: Any, raw: bytes) -> tuple[str, str]:
    """(type, repr) of what a decoder makes of the bytes: the value, or its exception and reason."""
    try:
        return "ok", repr(decoder(raw))
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("text", [
    b'{"ts": "2026-11-24T16:00:00+00:00", "n": 1, "x": 1.5, "ok": true, "none": null, "l": [1, {"a": []}]}',
    b'{"a": 1, "a": 2}', b'{"big": 123456789012345678901234567890, "neg": -18446744073709551617}',
    b'{"f": 1e400}', b'{"f": -1e400}', b'{"f": NaN}', b'{"f": Infinity}', b'{"f": -0.0, "g": 1E5, "h": 0.1e-400}',
    b'{"s": "\\ud800"}', b'{"s": "\xed\xa0\x80"}', b'{"s": "\xff"}', b'\xef\xbb\xbf{"a": 1}',
    '{"a": "\u00e9\u4e2d"}'.encode("utf-16"), '{"a": 1}'.encode("utf-32"), '{"a": "\u00e9"}'.encode(),
    b'{"s": "x\ty"}', b'{"a": 01}', b'{"a": 1,}', b'{"a": 1}{"b": 2}', b' {"a": 1}\r', b"", b"  ", b"[1]", b'"x"',
    b"[" * 3000 + b"]" * 3000, b'{"a": ' * 2000 + b"1" + b"}" * 2000, b'{"s": "x\\u0000\\"\\\\/"}',
])
def test_log_lines_decode_as_with_json(text: bytes) -> None:
    from exporter.bot.readers import loads

    assert _outcome(loads, text) == _outcome(json.loads, text)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_json_value_decodes_as_with_json(value: Any) -> None:
    from exporter.bot.readers import loads

    for raw in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        assert _outcome(loads, raw) == _outcome(json.loads, raw)


def test_a_log_line_nested_too_deep_is_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    from exporter.bot.readers import JsonlTail

    log = tmp_path / "run.jsonl"
    log.write_bytes(b'{"n": 1}\n' + b"[" * 5000 + b"]" * 5000 + b'\n{"n": 2}\n')
    tail = JsonlTail(log, keep=10)
    assert [r["n"] for r in tail.poll()] == [1, 2]
    assert tail.bad_lines == 1
    state = tmp_path / "state.json"
    state.write_bytes(b'{"a": ' * 5000 + b"1" + b"}" * 5000)
    with pytest.raises(FileProblem, match="state.json is not valid JSON"):
        read_json(state, retries=1)
