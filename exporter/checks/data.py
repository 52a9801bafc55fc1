"""Data & Signal Generation (FP-1.x): the UW daemon, its cache and the UW API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import procs
from ..context import Context
from ..engine import check
from ..model import Outcome
from ..readers import FileProblem, read_json
from ..uwclient import UWError
from .common import age_text, number


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
    extra: dict[str, Any] = field(default_factory=dict)


def summarise(raw: Any, size: int, path: Path) -> CacheSummary:
    if not isinstance(raw, dict):
        raise FileProblem("corrupt", path, f"{path.name} is not a JSON object (got {type(raw).__name__})")
    meta = raw.get("_metadata") if isinstance(raw.get("_metadata"), dict) else {}
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
    return summary


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
        return Outcome.error("cache has no _metadata.last_update (only the daemon writes it; file mtime is not trusted)",
                             **details)
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
            out = Outcome.warn("token could not be verified: UW answered 429 (quota spent; see FP-1.6)",
                               http_status=429)
        else:
            out = Outcome.warn(f"token could not be verified: {exc}", problem=exc.kind)
    return out.observe("trading_uw_auth_last_probe_timestamp_seconds", probed_at)
