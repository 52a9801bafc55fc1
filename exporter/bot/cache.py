"""The UW daemon's cache (``data/uw_flow_cache.json``), summarised for the checks and the funnel.

The cache is several MB and the bot rewrites it every cycle. It is parsed only when (inode, size,
mtime) changed, once for all the points that read it, and only a summary is kept, so every other
read in a cycle costs one ``stat``.

The parse decodes only what the summary needs (:func:`decode`): the top-level keys, each ticker's
keys and scalars, and the fields of its blocks. Each flow trade is checked for well-formedness
and counted but its fields are never built into Python objects (an empty placeholder per trade),
and anything nested deeper stays bytes, which makes a 6 MB cache over ten times cheaper than
``json.loads`` and leaves no large tree behind. A file the fast decoder refuses is handed to
``json.loads``, so what is JSON, and the reason a torn file is not, are exactly ``json``'s.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..core.faults import CacheUnreadable
from .context import Context
from .readers import FileProblem, ReadBuffer, read_json
from .values import number, record_time

#: per-ticker keys that are flow data, not enrichment (everything else dict-valued is intel):
#: `flow` is the flow summary and `market_tide` the global tide copied into every ticker
CORE_TICKER_KEYS = frozenset({"flow_trades", "sentiment", "conviction", "total_premium", "call_premium",
                              "put_premium", "net_premium", "trade_count", "_last_update", "flow",
                              "market_tide"})


def block_has_data(block: dict[str, Any]) -> bool:
    """An intel block that carries data. The daemon re-stamps blocks whatever UW answered: after
    a 429 or a limiter block a block is ``{"data": [], "_rate_limited": true}`` and the dark pool
    is zeroed (``print_count`` 0) with a fresh ``last_update``; neither is data."""
    if not block or block.get("_rate_limited") is True or block.get("_blocked") is True:
        return False
    if "data" in block and not block["data"]:
        return False
    return not ("print_count" in block and number(block["print_count"]) == 0)


@dataclass
class CacheSummary:
    """What the checks need from the multi-MB cache; the parsed JSON itself is not kept."""

    size_bytes: int
    metadata: dict[str, Any]
    last_update: float | None
    symbols: list[str]
    global_keys: list[str]
    tickers_with_trades: int = 0
    total_trades: int = 0
    #: tickers with at least one non-empty intel block (dark_pool, greeks, ...) and how many
    #: tickers carry intel blocks at all
    tickers_enriched: int = 0
    tickers_with_intel_keys: int = 0
    #: ``_market_tide``: present, how many data points, newest timestamp found in it
    tide_present: bool = False
    tide_points: int = 0
    tide_newest: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_Scalar = str | int | float | bool | None
#: the cache three levels deep: top-level key -> ticker (or global block) key -> block field.
#: Anything deeper (a block's lists) stays bytes (``msgspec.Raw``), validated as JSON but not
#: decoded.
_Field = list[msgspec.Raw] | dict[str, msgspec.Raw] | _Scalar
_Block = dict[str, _Field] | list[msgspec.Raw] | _Scalar
_Entry = dict[str, _Block] | list[msgspec.Raw] | _Scalar
_PARTIAL = msgspec.json.Decoder(dict[str, _Entry])
_WHOLE = msgspec.json.Decoder()


class Counted(msgspec.Struct, gc=False):
    """An object inside a ticker's list (a flow trade): validated and counted, its fields skipped."""


#: as ``_PARTIAL``, but the items of a list at the ticker level (the flow trades: 40 per ticker,
#: most of the file) are only counted: an object becomes an empty ``Counted``, which costs a
#: fraction of keeping its bytes. Only list lengths are read there; a global block whose lists
#: are read in full (``_metadata``, ``_market_tide``) is decoded again by ``_PARTIAL``.
_Item = Counted | list[msgspec.Raw] | _Scalar
_LeanBlock = dict[str, _Field] | list[_Item] | _Scalar
_LEAN = msgspec.json.Decoder(dict[str, dict[str, _LeanBlock] | list[msgspec.Raw] | _Scalar])
#: the global blocks :func:`summarise` reads beyond their keys
_READ_IN_FULL = ("_metadata", "_market_tide")


def decode(raw: bytes | bytearray) -> Any:
    """The cache's JSON, decoded only as deep as :func:`summarise` looks.

    The result summarises exactly as ``json.loads(raw)`` would. msgspec accepts strict UTF-8
    JSON only: anything else (a torn file, ``NaN``, a BOM, a number out of range) goes to
    ``json.loads``, which either decodes it as before or raises its own reason.
    """
    if _utf8(raw):
        try:
            value = _LEAN.decode(raw)
            if not any(_counted_in(value.get(k)) for k in _READ_IN_FULL):
                return value
            return _PARTIAL.decode(raw)  # a list in a block summarise reads: keep its items
        except (msgspec.DecodeError, RecursionError):
            pass
    return json.loads(raw)


#: the cache's top level, each value kept as its bytes: one pass that finds every entry
_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
#: one top-level entry, as :data:`_LEAN` and :data:`_PARTIAL` decode it
_LEAN_ENTRY = msgspec.json.Decoder(dict[str, _LeanBlock] | list[msgspec.Raw] | _Scalar)
_PARTIAL_ENTRY = msgspec.json.Decoder(_Entry)


_Counts = tuple[int, int, int, int]
#: an entry as the last decode left it: its bytes (a copy, so that nothing keeps the file's
#: buffer), its value (decoded from that copy), its counts
_Kept = tuple[bytes, Any, _Counts | None]


class Unchanged:
    """What :func:`decode_unchanged` keeps of the last cache it decoded: each entry's bytes and
    what they decoded to, and the order of the entries. Used by one parsing thread at a time (the
    cache's own)."""

    def __init__(self) -> None:
        #: the file is read into the same memory every time: nothing kept here refers to it
        self.buffer = ReadBuffer()
        self.entries: dict[str, _Kept] = {}
        #: each key's successor in the last file (None after the last one): where a changed entry ends
        self.after: dict[str, str | None] = {}
        self.reused = 0  # entries not decoded again in the last decode (for the tests and the bench)
        #: whether the last decode walked the file against the one before (no whole-file pass)
        self.walked = False
        #: the last decode's tickers with their :func:`ticker_counts` (for :func:`summarise`),
        #: None when it was not decoded here
        self.counted: dict[str, _Counts] | None = None
        #: per key, what followed its value the last time the walk matched it (the comma, the next
        #: key, the colon and the whitespace between, as bytes) and that next key: the walk
        #: compares those bytes instead of matching them again. Kept across whole passes (which
        #: do not see them); every use compares the bytes, so an old one is only a missed shortcut.
        self.seps: dict[str, tuple[bytes, str]] = {}

    def forget(self) -> None:
        self.entries, self.after, self.reused, self.walked, self.counted = {}, {}, 0, False, None
        self.seps = {}

    def remember(self, kept: dict[str, _Kept], keys: list[str], reused: int, walked: bool) -> None:
        """The decode just made: its entries, the order of its keys, and the counts derived from them."""
        self.entries, self.reused, self.walked = kept, reused, walked
        self.counted = {k: c for k, (_, _, c) in kept.items() if c is not None}
        self.after = {k: (keys[i + 1] if i + 1 < len(keys) else None) for i, k in enumerate(keys)}


def _counts_of(key: str, value: Any) -> _Counts | None:
    return ticker_counts(value) if key[:1] != "_" and isinstance(value, dict) else None


def decode_unchanged(raw: bytes | bytearray, memo: Unchanged) -> Any:
    """:func:`decode`, without decoding again an entry whose bytes are those of the last decode.

    stock-bot's daemon merges one ticker's answer into the cache and rewrites the whole file
    (``_update_cache``), so between two cycles most tickers' entries are the same bytes, in the
    same order. The file is walked entry by entry against the last one (:func:`_walk`): an entry
    whose bytes are the last file's is compared, not parsed, and only the changed ones are
    decoded. A file the walk cannot follow (a new key, keys in another order, escapes in a key)
    gets one msgspec pass that finds every entry instead, and the result is the same. Either way
    it is what :func:`decode` returns for the same bytes, entry for entry; anything unusual (a
    file the fast decoders refuse) is :func:`decode`'s, and then nothing is remembered.

    What is remembered never refers to ``raw``: each entry is kept as a copy of its bytes and
    decoded from that copy (a ``msgspec.Raw`` refers to the buffer it was decoded from), so the
    file can be read into the same buffer next time (:class:`~.readers.ReadBuffer`).
    """
    try:
        # the walk checks the encoding of what changed (the rest is the last file's bytes)
        walked = _walk(raw, memo) if memo.entries else None
        if walked is not None:
            return walked
        if not _utf8(raw):
            memo.forget()
            return decode(raw)
        top = _TOP.decode(raw)
        value: dict[str, Any] = {}
        kept: dict[str, _Kept] = {}
        previous, reused = memo.entries, 0
        for key, entry in top.items():
            last = previous.get(key)
            data = bytes(entry)
            if last is not None and key not in _READ_IN_FULL and last[0] == data:
                value[key], counts = last[1], last[2]
                reused += 1
            else:
                value[key] = (_PARTIAL_ENTRY if key in _READ_IN_FULL else _LEAN_ENTRY).decode(data)
                counts = _counts_of(key, value[key])
            kept[key] = (data, value[key], counts)
        keys = list(top)
    except (msgspec.DecodeError, RecursionError, UnicodeError):
        memo.forget()
        return decode(raw)
    memo.remember(kept, keys, reused, walked=False)
    return value


_WS = re.compile(rb"[ \t\n\r]*")
#: a top-level key the walk follows: printable ASCII without a quote or an escape, then the colon
_KEY = re.compile(rb'"([\x20\x21\x23-\x5b\x5d-\x7e]*)"[ \t\n\r]*:[ \t\n\r]*')
#: a walk that has found more changed entries than this, and more changed than unchanged, gives
#: way to the whole pass (which costs less when most entries changed)
WALK_CHANGED = 64
#: the comma after a value and the next key
_NEXT_KEY = re.compile(rb'[ \t\n\r]*,[ \t\n\r]*' + _KEY.pattern)
_JSON_WS = b" \t\n\r"


def _skip_ws(raw: bytes | bytearray, pos: int, end: int) -> int:
    """Where the whitespace from ``pos`` ends."""
    m = _WS.match(raw, pos, end)
    return pos if m is None else m.end()


def _back_ws(raw: bytes | bytearray, start: int, stop: int) -> int:
    """Where the whitespace before ``stop`` (and after ``start``) begins."""
    while stop > start and raw[stop - 1] in _JSON_WS:
        stop -= 1
    return stop


def _walk(raw: bytes | bytearray, memo: Unchanged) -> dict[str, Any] | None:
    """The cache decoded by walking it against the last file, or None when the walk cannot follow
    it (then nothing is changed and the caller makes its whole pass).

    Every byte is accounted for: the opening brace, each key (quoted, no escape, no control
    character: exactly what ``json`` reads as that text), the colon, each value (the very bytes of
    that key's value in the last file, which was valid JSON and UTF-8; or else checked to be UTF-8
    and decoded here by msgspec, which accepts exactly one complete value), the commas, the
    closing brace and only whitespace around them. A changed value ends before the key that
    followed it in the last file (a new key's at the closing brace: the daemon appends a new
    ticker); where that is not so, the slice does not decode and the walk gives up. The key that
    followed is looked for as ``"key":``, which inside a value can only be a nested key (a string
    value is followed by a comma or a bracket), and then too the slice does not decode.
    """
    end = _back_ws(raw, 0, len(raw))
    pos = _skip_ws(raw, 0, end)
    if end < 2 or raw[pos] != 0x7B or raw[end - 1] != 0x7D:  # "{" ... "}"
        return None
    pos = _skip_ws(raw, pos + 1, end)
    previous, after, seps = memo.entries, memo.after, memo.seps
    value: dict[str, Any] = {}
    kept: dict[str, _Kept] = {}
    keys: list[str] = []
    reused = changed = 0
    m = _KEY.match(raw, pos, end)
    if m is None:
        return None
    key, pos = m.group(1).decode("ascii"), m.end()
    while True:
        last = previous.get(key)
        if last is not None and key not in _READ_IN_FULL and raw.startswith(last[0], pos):
            vend = pos + len(last[0])
            v = last[1]
            reused += 1
        else:
            changed += 1
            if changed > WALK_CHANGED and changed > reused:
                return None  # most of it changed (the market tide copied into every ticker): one pass is cheaper
            # a new key is taken to be the last (the daemon appends a new ticker): if another
            # follows, its slice does not decode
            successor = after.get(key)
            if successor is None:
                stop = end - 1  # it was the last entry: up to the closing brace
            else:
                stop = raw.find(b'"' + successor.encode("utf-8") + b'":', pos, end)
                if stop < 0:
                    return None
            vend = _back_ws(raw, pos, stop)
            if successor is not None:
                if vend <= pos or raw[vend - 1] != 0x2C:  # ","
                    return None
                vend = _back_ws(raw, pos, vend - 1)
            data = bytes(raw[pos:vend])
            if not _utf8(data):
                return None  # the whole pass finds it too, and gives the file to decode()
            v = (_PARTIAL_ENTRY if key in _READ_IN_FULL else _LEAN_ENTRY).decode(data)
            counts = _counts_of(key, v)
            last = (data, v, counts)
        value[key] = v
        kept[key] = last  # a key seen twice: the last value is kept, as json does
        keys.append(key)
        sep = seps.get(key)
        if sep is not None and raw.startswith(sep[0], vend):
            # the same comma, next key and colon as last time: exactly what the match below finds
            # (but for whitespace after the colon it would also take, which the next value's
            # comparison then refuses and its decode accepts)
            pos, key = vend + len(sep[0]), sep[1]
            continue
        m = _NEXT_KEY.match(raw, vend, end)  # the comma and the next key, in one match
        if m is None:
            if _skip_ws(raw, vend, end) == end - 1:
                break  # the closing brace, and only whitespace after it
            return None
        follower, pos = m.group(1).decode("ascii"), m.end()
        seps[key] = (bytes(raw[vend:pos]), follower)
        key = follower
    memo.remember(kept, keys, reused, walked=True)
    return value


def _counted_in(value: Any) -> bool:
    if isinstance(value, Counted):
        return True
    if isinstance(value, dict):
        return any(_counted_in(v) for v in value.values())
    if isinstance(value, list):
        return any(_counted_in(v) for v in value)
    return False


def _utf8(raw: bytes | bytearray) -> bool:
    # msgspec does not look inside the strings it skips: bytes that are not UTF-8 there must
    # still make the file corrupt, as for json.loads (which decodes with surrogatepass)
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def plain(value: Any) -> Any:
    """``value`` with every undecoded part decoded: what ``json.loads`` would have built."""
    if isinstance(value, msgspec.Raw):
        return _WHOLE.decode(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def ticker_counts(entry: dict[str, Any]) -> _Counts:
    """One ticker's share of the summary: (has trades, trades, has intel blocks, has intel data),
    its keys walked once and its blocks judged only until one has data."""
    trades = entry.get("flow_trades")
    count = number(entry.get("trade_count")) or 0
    n = len(trades) if isinstance(trades, list) else 0
    has_intel = has_data = 0
    for key, block in entry.items():
        if isinstance(block, dict) and key not in CORE_TICKER_KEYS:
            has_intel = 1
            if block_has_data(block):
                has_data = 1
                break
    return (1 if n or count else 0), max(n, int(count)), has_intel, has_data


def summarise(raw: Any, size: int, path: Path, counted: dict[str, _Counts] | None = None
              ) -> CacheSummary:
    """The summary of a cache decoded by :func:`decode` (or ``json.loads``); ``counted`` holds the
    :func:`ticker_counts` of tickers already counted (:attr:`Unchanged.counted`)."""
    if not isinstance(raw, dict):
        raise FileProblem("corrupt", path, f"{path.name} is not a JSON object (got {type(raw).__name__})")
    raw_meta = plain(raw.get("_metadata"))
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    symbols = sorted(k for k in raw if not k.startswith("_"))
    summary = CacheSummary(
        size_bytes=size,
        metadata=meta,
        last_update=number(meta.get("last_update")),
        symbols=symbols,
        global_keys=sorted(k for k in raw if k.startswith("_")),
    )
    # 600 tickers of ~20 keys per rewrite: counted in locals, each ticker's keys walked once, and
    # its blocks judged only until one has data
    with_trades = total = with_intel = enriched = 0
    for sym, entry in raw.items():
        if sym[:1] == "_" or not isinstance(entry, dict):
            continue
        c = counted.get(sym) if counted is not None else None
        if c is None:
            c = ticker_counts(entry)
        with_trades += c[0]
        total += c[1]
        with_intel += c[2]
        enriched += c[3]
    summary.tickers_with_trades, summary.total_trades = with_trades, total
    summary.tickers_with_intel_keys, summary.tickers_enriched = with_intel, enriched
    tide = plain(raw.get("_market_tide"))
    if isinstance(tide, (dict, list)):
        summary.tide_present = True
        points = tide_points(tide)
        summary.tide_points = len(points)
        stamps = [record_time(x, "timestamp", "ts", "last_update", "date") for x in points]
        if points and isinstance(tide, dict):
            # the daemon's fetch time: the point itself is stamped minutes earlier by UW
            stamps.append(record_time(tide, "last_update", "timestamp", "ts"))
        found = [t for t in stamps if t is not None]
        summary.tide_newest = max(found) if found else None
    return summary


def tide_points(tide: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """The data points of a ``_market_tide`` block.

    stock-bot stores one point as a dict (``{"data": {date, net_call_premium, ..., timestamp},
    "last_update"}``: the first element of UW's list); other bots keep UW's list. An empty dict
    or list, and the ``{"data": [], "_rate_limited": true}`` left by a 429, hold none; only
    non-empty objects are points ("x" is not one).
    """
    if isinstance(tide, list):
        data: Any = tide
    elif "data" in tide:
        data = tide["data"]
    else:
        # a bare point with no "data" wrapper
        data = {k: v for k, v in tide.items() if k not in ("last_update", "_rate_limited")}
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return []
    return [x for x in data if isinstance(x, dict) and x]


#: every parse of the cache runs on this one long-lived thread. The checks run on new threads
#: each cycle, and glibc gives threads their own malloc arenas, each keeping the last multi-MB
#: read buffer it freed: parsed wherever a check happens to run, the cache made the exporter's
#: RSS grow by its size every few rewrites, up to one copy per arena.
_PARSER = ThreadPoolExecutor(1, thread_name_prefix="uw-cache-parse")


def _parser_after_fork() -> None:
    # a forked child has the executor but not its thread: work submitted there would wait forever
    global _PARSER
    _PARSER = ThreadPoolExecutor(1, thread_name_prefix="uw-cache-parse")


os.register_at_fork(after_in_child=_parser_after_fork)


def cache_summary(ctx: Context, retries: int = 3, delay: float = 0.2) -> CacheSummary:
    """The cache, parsed with torn-read retries and only when (inode, size, mtime) changed."""
    path = ctx.path("uw_cache")
    memo = _unchanged(ctx, path)

    def parse(p: Path) -> CacheSummary:
        raw = read_json(p, retries, delay, lambda data: decode_unchanged(data, memo), memo.buffer.read)
        return summarise(raw, p.stat().st_size, p, memo.counted)

    return ctx.files.get(path, lambda p: _PARSER.submit(parse, p).result())  # type: ignore[no-any-return]


def _unchanged(ctx: Context, path: Path) -> Unchanged:
    """The last decode of the cache at ``path``, kept with the context's state between cycles."""
    memos = ctx.state_for("uw-cache")
    memo = memos.get(str(path))
    if not isinstance(memo, Unchanged):
        memos.clear()  # a context reads one cache: another path (a config reload) starts over
        memo = memos[str(path)] = Unchanged()
    return memo


def require_cache(ctx: Context) -> CacheSummary:
    """The cache summary, or :class:`CacheUnreadable` when it is missing or does not parse (FP-1.2's to judge)."""
    try:
        return cache_summary(ctx)
    except FileProblem as exc:
        raise CacheUnreadable(str(exc)) from exc
