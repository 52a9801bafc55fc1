"""Data & Signal Generation (FP-1.x): the UW daemon, its cache and the UW API."""

from __future__ import annotations

import json
import math
import threading
import time as _time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from .. import funnel, market, procs
from ..context import Context
from ..engine import check
from ..model import Outcome, iso_utc
from ..readers import FileProblem, find_offset, read_json
from ..uwclient import UWError
from .common import age_text, number

#: per-ticker keys that are flow data, not enrichment (everything else dict-valued is intel)
CORE_TICKER_KEYS = frozenset({"flow_trades", "sentiment", "conviction", "total_premium", "call_premium",
                              "put_premium", "net_premium", "trade_count", "_last_update"})


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


def summarise(raw: Any, size: int, path: Path) -> CacheSummary:
    if not isinstance(raw, dict):
        raise FileProblem("corrupt", path, f"{path.name} is not a JSON object (got {type(raw).__name__})")
    raw_meta = raw.get("_metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    symbols = sorted(k for k in raw if not k.startswith("_"))
    summary = CacheSummary(
        size_bytes=size,
        metadata=meta,
        last_update=number(meta.get("last_update")),
        symbols=symbols,
        global_keys=sorted(k for k in raw if k.startswith("_")),
    )
    for sym in symbols:
        entry = raw[sym]
        if not isinstance(entry, dict):
            continue
        trades = entry.get("flow_trades")
        count = number(entry.get("trade_count")) or 0
        n = len(trades) if isinstance(trades, list) else 0
        if n or count:
            summary.tickers_with_trades += 1
        summary.total_trades += max(n, int(count))
        intel = [v for k, v in entry.items() if k not in CORE_TICKER_KEYS and isinstance(v, dict)]
        if intel:
            summary.tickers_with_intel_keys += 1
            if any(intel):
                summary.tickers_enriched += 1
    tide = raw.get("_market_tide")
    if isinstance(tide, (dict, list)):
        summary.tide_present = True
        points = tide_points(tide)
        summary.tide_points = len(points)
        stamps = [funnel.record_time(x, "timestamp", "ts", "last_update", "date") for x in points]
        if points and isinstance(tide, dict):
            # the daemon's fetch time: the point itself is stamped minutes earlier by UW
            stamps.append(funnel.record_time(tide, "last_update", "timestamp", "ts"))
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


def cache_summary(ctx: Context, retries: int = 3, delay: float = 0.2) -> CacheSummary:
    """The cache, parsed with torn-read retries and only when (inode, size, mtime) changed."""
    path = ctx.path("uw_cache")

    def parse(p: Path) -> CacheSummary:
        raw = read_json(p, retries, delay)
        return summarise(raw, p.stat().st_size, p)

    return ctx.files.get(path, parse)  # type: ignore[no-any-return]


def process_report(ctx: Context, which: str) -> procs.ProcessReport:
    spec = ctx.config["processes"][which]
    lock = ctx.config.resolve(spec["lock_file"]) if spec.get("lock_file") else None
    return procs.inspect(ctx.root, spec["script"], spec.get("systemd_unit"), lock)


@check("FP-1.1")
def uw_daemon_running(ctx: Context, p: dict[str, Any]) -> Outcome:
    r = process_report(ctx, "uw_daemon")
    details: dict[str, Any] = {"pids": r.pids, "how": r.how}
    if r.unit is not None:
        details["systemd"] = {"unit": r.unit.name, "active_state": r.unit.active_state, "main_pid": r.unit.main_pid}
    if r.running:
        return Outcome.ok(r.message, **details).observe("trading_uw_daemon_up", 1)
    if r.pids:
        return Outcome.warn(r.message, **details).observe("trading_uw_daemon_up", 0)
    return Outcome.error(r.message, **details).observe("trading_uw_daemon_up", 0)


@check("FP-1.2")
def uw_cache_exists(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        s = cache_summary(ctx, int(p["retries"]), float(p["retry_delay_seconds"]))
    except FileProblem as exc:
        return Outcome.error(str(exc), problem=exc.kind)
    return Outcome.ok(f"{s.size_bytes} bytes, {len(s.symbols)} symbols, {len(s.global_keys)} global keys",
                      size_bytes=s.size_bytes).observe("trading_uw_cache_size_bytes", s.size_bytes)


@check("FP-1.3")
def uw_cache_fresh(ctx: Context, p: dict[str, Any]) -> Outcome:
    s = cache_summary(ctx)
    session = ctx.session()
    details: dict[str, Any] = {"market": session.phase, "session_source": session.source}
    if s.last_update is None:
        return Outcome.error("cache has no _metadata.last_update (only the daemon writes it; "
                             "file mtime is not trusted)", **details)
    age = ctx.now() - s.last_update
    details.update(age_seconds=round(age), last_update=s.last_update)
    out: Outcome
    if age < -300:
        out = Outcome.warn(f"_metadata.last_update is {age_text(-age)} in the future (clock skew?)", **details)
    elif session.phase in ("open", "premarket"):
        where = "while the market is open" if session.is_open else "before the open"
        if age > p["open_error_seconds"]:
            out = Outcome.error(f"cache data is {age_text(age)} old (limit {p['open_error_seconds']:g} s {where})",
                                **details)
        elif age > p["open_warn_seconds"]:
            out = Outcome.warn(f"cache data is {age_text(age)} old (limit {p['open_warn_seconds']:g} s {where})",
                               **details)
        else:
            out = Outcome.ok(f"updated {age_text(max(age, 0))} ago ({session.describe()})", **details)
    elif age > p["closed_warn_seconds"]:
        out = Outcome.warn(f"cache data is {age_text(age)} old ({session.describe()}; "
                           f"limit {p['closed_warn_seconds']:g} s outside the session)", **details)
    else:
        out = Outcome.ok(f"updated {age_text(max(age, 0))} ago ({session.describe()})", **details)
    return out.observe("trading_uw_cache_last_update_timestamp_seconds", s.last_update)


@check("FP-1.4")
def uw_cache_symbols(ctx: Context, p: dict[str, Any]) -> Outcome:
    s = cache_summary(ctx)
    n = len(s.symbols)
    details = {"symbols": n, "global_keys": len(s.global_keys), "sample": s.symbols[:10]}
    if n == 0:
        out = Outcome.error(f"no ticker in the cache: only {len(s.global_keys)} global '_' keys", **details)
    elif n < p["min_symbols"]:
        out = Outcome.warn(f"only {n} symbols in the cache (minimum {p['min_symbols']})", **details)
    else:
        out = Outcome.ok(f"{n} symbols", **details)
    return out.observe("trading_uw_cache_symbols", n)


@check("FP-1.5")
def uw_api_auth(ctx: Context, p: dict[str, Any]) -> Outcome:
    if not ctx.env.uw_key:
        return Outcome.error("UW_API_KEY is not set (environment or .env)")
    probe_path = ctx.config["uw"]["auth_probe_path"]
    probed_at = ctx.now()
    out: Outcome
    try:
        ctx.uw.get(probe_path)
        out = Outcome.ok("UW accepted the token", http_path=probe_path)
    except UWError as exc:
        if exc.kind == "auth":
            out = Outcome.error(f"{exc} on {probe_path}", http_status=exc.status)
        elif exc.kind == "rate_limit":
            # FP-1.6 reports the 429 itself (this probe is one of its sources)
            ctx.state_for("uw")["last_429"] = probed_at
            out = Outcome.warn("token could not be verified: UW answered 429 (quota spent; see FP-1.6)",
                               http_status=429)
        else:
            out = Outcome.warn(f"token could not be verified: {exc}", problem=exc.kind)
    return out.observe("trading_uw_auth_last_probe_timestamp_seconds", probed_at)


# --- FP-1.6: UW quota and rate limit -----------------------------------------------------------
QUOTA_KEEP = 5000


def last_quota_reset(now: float, hour: int = 20) -> float:
    """The last 20:00 America/New_York (UW's daily reset), DST-correct via zoneinfo."""
    local = datetime.fromtimestamp(now, market.NY)
    day = local.date() if local.time() >= dtime(hour) else local.date() - timedelta(days=1)
    return datetime.combine(day, dtime(hour), market.NY).timestamp()


def next_quota_reset(now: float, hour: int = 20) -> float:
    local = datetime.fromtimestamp(now, market.NY)
    day = local.date() + timedelta(days=1) if local.time() >= dtime(hour) else local.date()
    return datetime.combine(day, dtime(hour), market.NY).timestamp()


def _is_429(rec: dict[str, Any]) -> bool:
    for k in ("status", "status_code", "http_status", "code"):
        v = rec.get(k)
        if v == 429 or v == "429":
            return True
    event = rec.get("event")
    return isinstance(event, str) and ("429" in event or "rate_limit" in event.lower())


def _count_file(path: Path, start: int, end: int) -> tuple[int, int]:
    """Complete lines in ``[start, end)`` and how many of them are 429 records."""
    lines = hits = 0
    carry = b""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            data = carry + chunk
            parts = data.split(b"\n")
            carry = parts.pop()
            lines += len(parts)
            if b"429" in data or b"rate_limit" in data:
                # only lines that mention it are parsed
                for line in parts:
                    if b"429" in line or b"rate_limit" in line:
                        rec = _loads(line)
                        hits += int(rec is not None and _is_429(rec))
    return lines, hits


def _loads(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def quota_usage(ctx: Context, reset: float) -> tuple[int, int, bool]:
    """(requests since ``reset``, 429 records since ``reset``, recounted from the file this time).

    Steady state follows the tail's new records only (O(new bytes)). The day is recounted from
    the file (binary search to the reset, then a newline count) the first time, after a reset,
    and whenever the tail lost continuity (rotation, truncation, a burst larger than it keeps).
    """
    path = ctx.path("quota_log")
    tail = ctx.tails.get(path, keep=QUOTA_KEEP)
    st = ctx.state_for("FP-1.6")
    lock = st.setdefault("lock", threading.Lock())
    with lock:
        if st.get("reset") == reset and st.get("generation") == tail.generation and st.get("path") == path:
            tail.poll()
            new, complete = tail.since(st["seen"])
            if complete and st.get("generation") == tail.generation:
                for rec in new:
                    t = funnel.record_time(rec, "ts", "_ts", "timestamp")
                    if t is None or t >= reset:
                        st["count"] += 1
                        st["hits"] += int(_is_429(rec))
                st["seen"] += len(new)
                return st["count"], st["hits"], False
        end, appended, generation = tail.consumed()
        try:
            start = find_offset(path, lambda r: funnel.record_time(r, "ts", "_ts", "timestamp"), reset)
            count, hits = _count_file(path, start, end) if start < end else (0, 0)
        except OSError as exc:  # rotated away between the two reads: the next cycle recounts
            raise FileProblem("unreadable", path, f"{path.name} cannot be read: {exc.strerror}") from None
        st.update(reset=reset, generation=generation, seen=appended, count=count, hits=hits, path=path)
        return count, hits, True


def _daemon_429_since(ctx: Context, since: float) -> float | None:
    """Time of the latest 429 the daemon logged since ``since`` (daemon log, newest first)."""
    try:
        records = ctx.tails.recent(ctx.path("daemon_log"))
    except FileProblem:
        return None
    for rec in reversed(records):
        t = funnel.record_time(rec, "ts", "_ts", "timestamp")
        if t is not None and t < since:
            break
        if _is_429(rec):
            return t if t is not None else since
    return None


@check("FP-1.6")
def uw_quota(ctx: Context, p: dict[str, Any]) -> Outcome:
    now = ctx.now()
    reset, next_reset = last_quota_reset(now), next_quota_reset(now)
    limit_note = ""
    try:
        limit = float(ctx.env.number("UW_DAILY_LIMIT", 50000))
        if not limit > 0 or not math.isfinite(limit):  # nan/inf would make any usage look fine
            raise ValueError("UW_DAILY_LIMIT must be a positive finite number")
    except ValueError as exc:
        limit, limit_note = 50000.0, f" ({exc}; using 50000)"
    details: dict[str, Any] = {"limit": limit, "limit_source": ctx.env.source.get("UW_DAILY_LIMIT", "default"),
                               "since_reset": iso_utc(reset), "next_reset": iso_utc(next_reset)}
    try:
        used, log_429, recounted = quota_usage(ctx, reset)
    except FileProblem as exc:
        return Outcome.warn(f"cannot measure UW quota usage: {exc}", problem=exc.kind, **details).observe(
            "trading_uw_quota_limit", limit).observe("trading_uw_quota_reset_timestamp_seconds", next_reset)
    seen_429 = [t for t in (ctx.state_for("uw").get("last_429"), _daemon_429_since(ctx, reset))
                if t is not None and t >= reset]
    details.update(used=used, fraction=round(used / limit, 4), log_429=log_429, recounted=recounted)
    session = ctx.session()
    details["market"] = session.phase
    in_session = session.phase in ("open", "premarket")
    pct = f"{used} of {limit:g} requests since the 20:00 ET reset ({100 * used / limit:.0f}%)"
    until = f"resets {datetime.fromtimestamp(next_reset, market.NY):%H:%M} ET"
    rate_limited = bool(log_429 or seen_429)
    out: Outcome
    if used >= limit or rate_limited:
        why = "daily quota exhausted" if used >= limit else "UW answered HTTP 429"
        if seen_429:
            details["last_429"] = iso_utc(max(seen_429))
        text = f"{why}: {pct}; the daemon pauses until the reset ({until}){limit_note}"
        out = Outcome.error(text, **details) if in_session else Outcome.warn(
            text + f" ({session.describe()})", **details)
    elif used >= p["warn_fraction"] * limit:
        out = Outcome.warn(f"{pct}: above {100 * p['warn_fraction']:g}% of UW_DAILY_LIMIT ({until}){limit_note}",
                           **details)
    elif limit_note:
        out = Outcome.warn(pct + limit_note, **details)
    else:
        out = Outcome.ok(pct, **details)
    return (out.observe("trading_uw_quota_used", used).observe("trading_uw_quota_limit", limit)
            .observe("trading_uw_rate_limited", rate_limited)
            .observe("trading_uw_quota_reset_timestamp_seconds", next_reset))


# --- FP-1.7 / FP-1.8: clusters from the run log ------------------------------------------------
def _funnel_outcome(out: Outcome, fun: dict[str, Any]) -> Outcome:
    out.details["funnel"] = fun
    for stage in funnel.STAGES:
        out.observe("trading_signal_funnel", fun["stages"].get(stage), stage=stage)
    reasons = fun["blocked_by_reason"]
    for reason in funnel.REASON_LABELS:
        out.observe("trading_blocked_candidates", reasons.get(reason, 0), reason=reason)
    return out


@check("FP-1.7")
def clusters_generated(ctx: Context, p: dict[str, Any]) -> Outcome:
    session = ctx.session()
    fun = funnel.compute(ctx, int(p["funnel_cycles"]), float(p["max_age_seconds"]))
    if not session.is_open:
        return _funnel_outcome(Outcome.skipped(f"{session.describe()}: clusters are expected only in session",
                                               market=session.phase), fun)
    w = funnel.in_session(ctx, funnel.window(ctx, int(p["funnel_cycles"])), session, float(p["max_age_seconds"]))
    if w.run_problem:
        return _funnel_outcome(Outcome.skipped(f"cannot read the run log ({w.run_problem}); FP-1.8 reports it"), fun)
    need = int(p["cycles"])
    # a frozen cycle builds nothing by design: FP-3.1 reports the freeze, not this point
    counted = [c for c in w.cycles if c.clusters is not None and not c.freeze_active][-need:]
    cycles = counted
    total = sum(c.clusters or 0 for c in counted)
    details = {"cycles": len(cycles), "clusters": total, "needed_cycles": need,
               "frozen_cycles": sum(1 for c in w.cycles if c.freeze_active)}
    if len(counted) >= need and total == 0:
        try:
            s = cache_summary(ctx)
            cache = f"cache: {len(s.symbols)} symbols, {s.tickers_with_trades} with flow trades"
        except FileProblem as exc:
            cache = str(exc)
        out = Outcome.warn(f"no clusters in the last {len(counted)} in-session cycles ({cache}; "
                           "funnel in the details)", **details)
    elif not cycles:
        out = Outcome.ok("no in-session cycle logged yet (bot liveness is FP-6.3)", **details)
    elif total == 0:
        out = Outcome.ok(f"no clusters yet in {len(counted)} in-session cycles (warns after {need})", **details)
    else:
        out = Outcome.ok(f"{total} clusters in the last {len(cycles)} in-session cycles", **details)
    return _funnel_outcome(out, fun)


def stage_errors(ctx: Context, p: dict[str, Any],
                 stages: tuple[str, ...]) -> tuple[list[funnel.Event], list[funnel.Event]]:
    """(recent events, those of them that logged an error of one of ``stages``)."""
    w = funnel.window(ctx, int(p["cycles"])).since(ctx.now() - float(p["max_age_seconds"]))
    return w.events, [e for e in w.events if e.error and e.stage in stages]


@check("FP-1.8")
def cluster_errors(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        ctx.tails.get(ctx.path("run_log"), keep=funnel.RUN_KEEP).poll()
    except FileProblem as exc:
        return Outcome.warn(f"cannot read the run log: {exc}").observe("trading_cycle_errors", None)
    events, errors = stage_errors(ctx, p, ("clusters", "cycle"))
    details: dict[str, Any] = {"events": len(events), "errors": len(errors)}
    if errors:
        details["latest_error"] = errors[-1].error
        details["latest_error_at"] = iso_utc(errors[-1].t)
    # failed cycles in a row, newest first; error lines closer together than same_cycle_seconds
    # are one cycle (a failure often logs the error and its traceback as separate records)
    streak = 0
    last_t: float | None = None
    for e in reversed(events):
        if not (e.error and e.stage in ("clusters", "cycle")):
            break
        if last_t is None or last_t - e.t >= float(p["same_cycle_seconds"]):
            streak += 1
            last_t = e.t
    details["failing_streak"] = streak
    need = int(p["error_cycles"])
    if streak >= need:
        out = Outcome.error(f"the last {streak} cycles failed: {errors[-1].error}", **details)
    elif errors:
        out = Outcome.warn(f"{len(errors)} of the last {len(events)} cycles logged errors; latest: "
                           f"{errors[-1].error}", **details)
    else:
        out = Outcome.ok(f"no cycle errors in the last {len(events)} run-log cycles", **details)
    return out.observe("trading_cycle_errors", len(errors))


# --- FP-1.9: cache fresh but empty -------------------------------------------------------------
@check("FP-1.9")
def uw_cache_has_data(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        s = cache_summary(ctx)
    except FileProblem as exc:
        return Outcome.skipped(f"{exc} (see FP-1.2)")
    session = ctx.session()
    details = {"symbols": len(s.symbols), "tickers_with_trades": s.tickers_with_trades,
               "total_trades": s.total_trades, "market": session.phase}
    if s.tickers_with_trades >= int(p["min_tickers_with_trades"]):
        out = Outcome.ok(f"{s.tickers_with_trades} of {len(s.symbols)} tickers carry flow trades "
                         f"({s.total_trades} trades)", **details)
    elif session.phase == "closed":
        out = Outcome.skipped(f"{session.describe()}: the daemon skips flow endpoints outside the session "
                              f"({s.tickers_with_trades} tickers with trades)", **details)
    else:
        text = (f"cache holds {len(s.symbols)} symbols but {s.tickers_with_trades} carry flow trades "
                f"(trade_count 0 and empty flow_trades): the daemon is writing empty data, "
                f"likely swallowing UW API errors")
        out = Outcome.error(text, **details) if session.is_open else Outcome.warn(text + " (before the open)",
                                                                                  **details)
    return out.observe("trading_uw_cache_tickers_with_trades", s.tickers_with_trades)


# --- FP-1.10: daemon cycle heartbeat -----------------------------------------------------------
@check("FP-1.10")
def uw_daemon_cycling(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        records = ctx.tails.recent(ctx.path("daemon_log"))
    except FileProblem as exc:
        return Outcome.warn(f"no daemon heartbeat: {exc}", problem=exc.kind)
    last: dict[str, Any] | None = None
    last_t: float | None = None
    for rec in reversed(records):
        if rec.get("event") == "uw_flow_cycle" or "cycle" in rec:
            t = funnel.record_time(rec, "ts", "_ts", "timestamp")
            if t is not None:
                last, last_t = rec, t
                break
    if last is None or last_t is None:
        return Outcome.warn("the daemon log has no uw_flow_cycle line with a time")
    session = ctx.session()
    now = ctx.now()
    age = now - last_t
    reset = last_quota_reset(now)
    try:
        _used, log_429, _ = quota_usage(ctx, reset)
    except FileProblem:
        log_429 = 0
    paused_at = [t for t in (ctx.state_for("uw").get("last_429"), _daemon_429_since(ctx, reset))
                 if t is not None and t >= reset]
    if (log_429 or paused_at) and age > float(p["open_warn_seconds"]):
        until = datetime.fromtimestamp(next_quota_reset(now), market.NY)
        return Outcome.skipped(f"daemon paused after an HTTP 429 until the {until:%H:%M} ET quota reset "
                               f"(last cycle {age_text(age)} ago; see FP-1.6)", age_seconds=round(age))
    details = {"last_cycle": last.get("cycle"), "last_cycle_at": iso_utc(last_t), "age_seconds": round(age),
               "market": session.phase}
    in_session = session.phase in ("open", "premarket")
    limit = float(p["open_warn_seconds"] if in_session else p["closed_warn_seconds"])
    if age > limit:
        where = "in session" if in_session else f"outside the session ({session.describe()})"
        out = Outcome.warn(f"no daemon cycle for {age_text(age)} (last cycle #{last.get('cycle')}; "
                           f"limit {limit:g} s {where}): the daemon is hung or paused", **details)
    else:
        out = Outcome.ok(f"last daemon cycle #{last.get('cycle')} {age_text(max(age, 0))} ago", **details)
    return out.observe("trading_uw_daemon_last_cycle_timestamp_seconds", last_t)


# --- FP-1.11: exactly one daemon ---------------------------------------------------------------
@check("FP-1.11")
def single_uw_daemon(ctx: Context, p: dict[str, Any]) -> Outcome:
    r = process_report(ctx, "uw_daemon")
    now = _time.time()  # process start times are wall-clock; the check clock may be simulated
    grace = float(p["grace_seconds"])
    holders = [m.pid for m in r.matches if m.holds_lock]
    extra = [m for m in r.matches if not m.holds_lock]
    lingering = [m for m in extra if now - m.create_time >= grace]
    details = {"pids": [m.pid for m in r.matches], "lock_holders": holders,
               "duplicates": [m.pid for m in lingering]}
    n = len(r.matches)
    if len(holders) > 1 or (holders and lingering):
        dup = ", ".join(f"{m.pid} (up {age_text(now - m.create_time)})" for m in lingering) or str(holders[1:])
        out = Outcome.warn(f"{n} uw_flow_daemon.py processes in {ctx.root}: lock holder {holders[0]}, "
                           f"duplicate(s) {dup} did not exit (double quota use, cache write races)", **details)
    elif not holders and len(lingering) > 1:
        out = Outcome.warn(f"{n} uw_flow_daemon.py processes and none holds the lock: "
                           f"{[m.pid for m in lingering]}", **details)
    else:
        out = Outcome.ok(f"one daemon: pid {holders[0]} holds the lock" if holders
                         else f"{n} daemon process(es), no lock holder (see FP-1.1)", **details)
    return out.observe("trading_uw_daemon_processes", n)
