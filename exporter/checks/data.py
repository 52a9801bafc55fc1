"""Data & Signal Generation (FP-1.x): the UW daemon, its cache and the UW API."""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

from ..bot import funnel, market, procs
from ..bot.cache import cache_summary, require_cache
from ..bot.context import Context
from ..bot.readers import FileProblem, read_json
from ..bot.uwclient import UWError
from ..bot.values import age_text, number
from ..core.engine import check
from ..core.faults import Unavailable
from ..core.model import Outcome, iso_utc


def process_report(ctx: Context, which: str) -> procs.ProcessReport:
    """One inspection per engine run, shared by the points that judge the same process."""
    spec = ctx.config["processes"][which]
    lock = ctx.config.resolve(spec["lock_file"]) if spec.get("lock_file") else None
    return ctx.per_cycle("process-report:" + which, lambda: procs.inspect(
        ctx.root, spec["script"], spec.get("systemd_unit"), lock, ctx.process_table()))


@check("FP-1.1")
def uw_daemon_running(ctx: Context, p: dict[str, Any]) -> Outcome:
    r = process_report(ctx, "uw_daemon")
    details: dict[str, Any] = {"pids": r.pids, "how": r.how}
    if r.unit is not None:
        details["systemd"] = {"unit": r.unit.name, "active_state": r.unit.active_state, "main_pid": r.unit.main_pid}
    if r.running:
        return Outcome.ok(r.message, **details).observe("trading_uw_daemon_up", 1)
    if r.state is not None:  # stopped (T) or a zombie: the process exists and does no work
        details["state"] = r.state
        return Outcome.error(r.message, **details).observe("trading_uw_daemon_up", 0)
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
            out = Outcome.warn("token could not be verified: UW answered HTTP 429 to the probe (rate-limited "
                               "or daily quota spent; the bot's own 429s are FP-1.6's)", http_status=429)
        else:
            out = Outcome.warn(f"token could not be verified: {exc}", problem=exc.kind)
    return out.observe("trading_uw_auth_last_probe_timestamp_seconds", probed_at)


# --- FP-1.6: UW quota and rate limit -----------------------------------------------------------
def last_quota_reset(now: float, hour: int = 20) -> float:
    """The last 20:00 America/New_York (UW's daily reset), DST-correct via zoneinfo."""
    local = datetime.fromtimestamp(now, market.NY)
    day = local.date() if local.time() >= dtime(hour) else local.date() - timedelta(days=1)
    return datetime.combine(day, dtime(hour), market.NY).timestamp()


def next_quota_reset(now: float, hour: int = 20) -> float:
    local = datetime.fromtimestamp(now, market.NY)
    day = local.date() + timedelta(days=1) if local.time() >= dtime(hour) else local.date()
    return datetime.combine(day, dtime(hour), market.NY).timestamp()


def next_utc_midnight(now: float) -> float:
    """When the bot's UW client starts a new count: its usage state is keyed by the UTC day."""
    day = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    return datetime.combine(day, dtime(0), UTC).timestamp()


@dataclass
class UWUsage:
    """The bot's own count of UW calls sent today (``state/uw_usage_state.json``)."""

    calls_today: int
    day: str | None
    by_endpoint: dict[str, int]
    #: why the count is 0 although the file says otherwise (a new UTC day, a missing file)
    note: str = ""


def uw_usage(ctx: Context) -> UWUsage:
    """``calls_today`` for today's UTC day, the way the bot's UW client reads it.

    The client counts one per call it sends (after its own limiter, cache and allow-list), and
    starts again at 0 when ``date`` is not today's UTC day; so does this reader.
    """
    path = ctx.path("uw_usage_state")
    try:
        raw = ctx.files.get(path, lambda p: read_json(p, 3, 0.1))
    except FileProblem as exc:
        if exc.kind == "missing":
            return UWUsage(0, None, {}, "no UW call recorded yet (state/uw_usage_state.json absent)")
        raise
    if not isinstance(raw, dict):
        raise FileProblem("corrupt", path, f"{path.name} is not a JSON object (got {type(raw).__name__}); "
                                           "the bot resets it to 0 on its next UW call")
    today = ctx.now_dt().date().isoformat()
    day = raw.get("date") if isinstance(raw.get("date"), str) else None
    by = raw.get("by_endpoint")
    by_endpoint = {str(k): int(v) for k, v in by.items() if number(v) is not None} if isinstance(by, dict) else {}
    if day != today:
        return UWUsage(0, day, {}, f"the count of {day or 'an unknown day'} is not today's ({today} UTC): "
                                   "the bot starts again at 0")
    calls = number(raw.get("calls_today"))
    if calls is None or calls < 0:
        raise FileProblem("corrupt", path, f"{path.name} has no valid calls_today")
    return UWUsage(int(calls), day, by_endpoint)


@dataclass
class UW429s:
    """HTTP 429 answers UW gave the bot's calls recently (``reports/uw_health/uw_api_errors.jsonl``)."""

    count: int = 0
    latest: float | None = None
    latest_endpoint: str = ""
    #: UW's own daily count and limit from its headers, logged with a 429 by the daemon
    uw_daily_count: float | None = None
    uw_daily_limit: float | None = None


def uw_429s(ctx: Context, since: float) -> UW429s:
    """The bot's recorded UW 429s since ``since``; the bot's own limiter blocks are not among them."""
    out = UW429s()
    try:
        records = ctx.tails.recent(ctx.path("uw_errors_log"))
    except FileProblem as exc:
        if exc.kind != "missing":  # no errors file: UW never answered with an error
            raise
        records = []
    for rec in reversed(records):
        t = funnel.record_time(rec, "ts", "_ts", "timestamp")
        if t is None:
            continue
        if t < since:
            break
        if number(rec.get("http_status")) == 429:
            out.count += 1
            if out.latest is None:
                out.latest, out.latest_endpoint = t, str(rec.get("endpoint") or "")
    if out.count:
        # the daemon logs UW's x-uw-daily-req-count / limit headers with each UW 429; its own
        # limiter's blocks have them null
        try:
            events = ctx.tails.recent(ctx.path("uw_cache_log"))
        except FileProblem:
            events = []
        for rec in reversed(events):
            t = funnel.record_time(rec, "ts", "_ts", "timestamp")
            if t is not None and t < since:
                break
            if rec.get("event") == "UW_API_RATE_LIMITED":
                count, limit = number(rec.get("daily_count")), number(rec.get("daily_limit"))
                if count is not None and limit is not None and limit > 0:
                    out.uw_daily_count, out.uw_daily_limit = count, limit
                    break
    return out


def _limit(ctx: Context, name: str, default: float, low: float, high: float) -> tuple[float, str]:
    """A UW limit the way the bot's client reads it, with a note when the value is unusable."""
    try:
        value = float(ctx.env.number(name, default))
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{name}={value:g} is outside {low:g}..{high:g}")
    except ValueError as exc:
        return default, f" ({exc}; using {default:g})"
    return value, ""


@check("FP-1.6")
def uw_quota(ctx: Context, p: dict[str, Any]) -> Outcome:
    now = ctx.now()
    daily, note_daily = _limit(ctx, "UW_DAILY_LIMIT", 50000, 1, 1e12)
    buffer, note_buffer = _limit(ctx, "UW_SAFETY_BUFFER", 0.95, 0.1, 1.0)
    limit_note = note_daily + note_buffer
    cap = max(1, int(daily * buffer))  # the bot's client refuses every call from here on
    reset = next_utc_midnight(now)
    window = float(p["window_seconds"])
    details: dict[str, Any] = {"daily_limit": daily, "safety_buffer": buffer, "cap": cap,
                               "limit_source": ctx.env.source.get("UW_DAILY_LIMIT", "default"),
                               "count_resets": iso_utc(reset), "window_seconds": window}

    def done(out: Outcome, used: int | None, limited: bool | None) -> Outcome:
        return (out.observe("trading_uw_quota_used", used).observe("trading_uw_quota_limit", cap)
                .observe("trading_uw_rate_limited", limited)
                .observe("trading_uw_quota_reset_timestamp_seconds", reset))

    try:
        usage = uw_usage(ctx)
    except FileProblem as exc:
        return done(Outcome.warn(f"cannot read the bot's UW call count: {exc}", problem=exc.kind, **details),
                    None, None)
    try:
        hits = uw_429s(ctx, now - window)
    except FileProblem as exc:
        return done(Outcome.warn(f"cannot read the bot's UW error log: {exc}", problem=exc.kind, **details),
                    usage.calls_today, None)
    used = usage.calls_today
    details.update(used=used, fraction=round(used / cap, 4), by_endpoint=usage.by_endpoint,
                   uw_429_calls=hits.count)
    if usage.note:
        details["count_note"] = usage.note
    session = ctx.session()
    details["market"] = session.phase
    in_session = session.phase in ("open", "premarket")
    pct = (f"{used} UW calls sent today of the bot's cap {cap} (UW_DAILY_LIMIT {daily:g} x "
           f"UW_SAFETY_BUFFER {buffer:g}; {100 * used / cap:.0f}%)")
    uw_spent = (hits.uw_daily_count is not None and hits.uw_daily_limit is not None
                and hits.uw_daily_count >= hits.uw_daily_limit)
    if hits.latest is not None:
        details.update(last_429=iso_utc(hits.latest), last_429_endpoint=hits.latest_endpoint)
    if hits.uw_daily_count is not None:
        details.update(uw_daily_count=hits.uw_daily_count, uw_daily_limit=hits.uw_daily_limit)
    seen = (f"UW answered HTTP 429 to {hits.count} call(s) in the last {age_text(window)} "
            f"(latest {iso_utc(hits.latest) if hits.latest else '?'} on {hits.latest_endpoint or '?'})")
    out: Outcome
    if used >= cap or uw_spent:
        if used >= cap:
            why = (f"the bot's UW client refuses every call until {iso_utc(reset)} (00:00 UTC): {pct}; "
                   "the daemon keeps cycling but writes no new flow")
        else:
            why = (f"UW reports its daily quota spent ({hits.uw_daily_count:g} of {hits.uw_daily_limit:g}); "
                   f"{seen}; {pct}")
        text = why + limit_note
        out = Outcome.error(text, **details) if in_session else Outcome.warn(
            f"{text} ({session.describe()})", **details)
    elif hits.count:
        out = Outcome.warn(f"{seen}: rate-limited; the daemon keeps cycling, but the blocks of those calls "
                           f"hold no data; {pct}{limit_note}", **details)
    elif used >= p["warn_fraction"] * cap:
        out = Outcome.warn(f"{pct}: above {100 * p['warn_fraction']:g}% of the cap{limit_note}", **details)
    elif limit_note:
        out = Outcome.warn(pct + limit_note, **details)
    else:
        out = Outcome.ok(pct + (f" ({usage.note})" if usage.note else ""), **details)
    return done(out, used, hits.count > 0)


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
    try:
        w.require_run_log()
    except Unavailable as fault:
        # the funnel's gauges stay exported while the run log is FP-1.8's to report
        parts = _funnel_outcome(Outcome.skipped(str(fault)), fun)
        fault.details.update(parts.details)
        fault.observations.extend(parts.observations)
        raise
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


@check("FP-1.8")
def cluster_errors(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        ctx.tails.get(ctx.path("run_log"), keep=funnel.RUN_KEEP).poll()
    except FileProblem as exc:
        return Outcome.warn(f"cannot read the run log: {exc}").observe("trading_cycle_errors", None)
    events, errors = funnel.stage_errors(ctx, p, ("clusters", "cycle"))
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
    s = require_cache(ctx)
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
    details = {"last_cycle": last.get("cycle"), "last_cycle_at": iso_utc(last_t), "age_seconds": round(age),
               "market": session.phase}
    in_session = session.phase in ("open", "premarket")
    limit = float(p["open_warn_seconds"] if in_session else p["closed_warn_seconds"])
    if age > limit:
        where = "in session" if in_session else f"outside the session ({session.describe()})"
        out = Outcome.warn(f"no daemon cycle for {age_text(age)} (last cycle #{last.get('cycle')}; "
                           f"limit {limit:g} s {where}): the daemon is hung (it does not pause on HTTP 429)", **details)
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


# --- FP-1.12: no other stock-bot on this host --------------------------------------------------
@check("FP-1.12")
def no_other_bot_on_host(ctx: Context, p: dict[str, Any]) -> Outcome:
    procs_cfg = ctx.config["processes"]
    others = procs.other_bots(ctx.root, procs_cfg["uw_daemon"]["script"], procs_cfg["bot"]["script"],
                              table=ctx.process_table())
    roots = sorted({str(o.root) for o in others})
    details = {"other_roots": roots, "processes": [{"pid": o.pid, "script": o.script, "root": str(o.root)}
                                                   for o in others[:20]]}
    if others:
        out = Outcome.warn(
            f"another stock-bot runs on this host at {', '.join(roots)} "
            f"({', '.join(f'{o.script} pid {o.pid}' for o in others[:4])}): main.py's health supervisor "
            "runs a host-wide `pkill -f uw_flow_daemon` when its own cache looks old, so each bot can "
            "kill the other's daemon", **details)
    else:
        out = Outcome.ok(f"no stock-bot process of another root on this host (this root: {ctx.root})", **details)
    return out.observe("trading_other_bots_on_host", len(roots))
