"""The bot's own record of its order submissions and failures (logs/orders.jsonl,
state/execution_failures.jsonl, logs/submit_order_called.jsonl): failures the broker never lists
because the request was refused before an order existed, and the mock orders it logs instead of
submitting while its audit guard is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import funnel
from .context import Context
from .readers import FileProblem

#: records kept per bot log: the first read starts 4 MB from the end, never the whole log
BOT_LOG_KEEP = 5000


@dataclass
class RecordedFailure:
    """One submission the bot recorded as failed (one failure may be recorded in two files)."""

    t: float
    symbol: str
    kind: str
    error: str
    sources: list[str] = field(default_factory=list)


def _is_failed_action(action: Any) -> bool:
    # main.py's log_order: scale_out_failed, close_position_failed, limit_retry_failed,
    # limit_final_failed (all "*_failed") and market_fail. Entry-path lines with an `error` and no
    # action (submit_entry_failed also carries gate vetoes; invalid_price_data never reached the
    # broker) are not refusals; a refusal inside submit_entry is logged as one of the above.
    return isinstance(action, str) and (action.endswith("_failed") or action == "market_fail")


def _rel(ctx: Context, path: Path) -> str:
    try:
        return str(path.relative_to(ctx.root))
    except ValueError:
        return str(path)


def _bot_log(ctx: Context, name: str, problems: list[str]) -> list[dict[str, Any]]:
    """The kept tail of a bot log; a missing log is an empty one (nothing failed yet), an
    unreadable or corrupt one is named in ``problems``."""
    path = ctx.path(name)
    try:
        return ctx.tails.recent(path, keep=BOT_LOG_KEEP)
    except FileProblem as exc:
        if exc.kind != "missing":
            problems.append(f"{_rel(ctx, path)}: {exc}")
        return []


def recorded_failures(ctx: Context, since: float, same_seconds: float,
                      problems: list[str]) -> tuple[list[RecordedFailure], int]:
    """(failed submissions the bot recorded since ``since``, oldest first; submissions it recorded).

    main.py writes one failure to logs/orders.jsonl and then, milliseconds later (seconds when
    it first looks the order up at the broker), to state/execution_failures.jsonl with the action
    as failure_type: a line of the second file is the same failure as the earliest unmatched line
    of the first with the same symbol and type at most ``same_seconds`` before it.
    Submissions come from logs/submit_order_called.jsonl (one line right before each broker
    call); without that log they are the order log's other order lines, plus the failures.
    """
    orders_path = _rel(ctx, ctx.path("orders_log"))
    failures_path = _rel(ctx, ctx.path("execution_failures"))
    from_orders: list[RecordedFailure] = []
    other_orders = 0
    for rec in _bot_log(ctx, "orders_log", problems):
        t = funnel.record_time(rec, "ts", "_ts", "timestamp")
        if t is None or t < since or rec.get("type", "order") != "order":
            continue
        if _is_failed_action(rec.get("action")):
            from_orders.append(RecordedFailure(t, str(rec.get("symbol") or "?").upper(), str(rec["action"]),
                                               _error_text(rec.get("error")), [orders_path]))
        elif not rec.get("error") and not rec.get("dry_run"):
            other_orders += 1
    failures = list(from_orders)
    unmatched = sorted(from_orders, key=lambda f: f.t)
    for rec in sorted(_bot_log(ctx, "execution_failures", problems),
                      key=lambda r: funnel.record_time(r, "timestamp", "ts") or 0.0):
        t = funnel.record_time(rec, "timestamp", "ts", "_ts")
        if t is None or t < since:
            continue
        raw_details = rec.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        kind = str(rec.get("failure_type") or "execution_failure")
        symbol = str(rec.get("symbol") or "?").upper()
        twin = next((f for f in unmatched if f.symbol == symbol and f.kind == kind
                     and -1.0 <= t - f.t <= same_seconds), None)
        if twin is not None:
            unmatched.remove(twin)
            twin.sources.append(failures_path)
            continue
        failures.append(RecordedFailure(t, symbol, kind, _error_text(details.get("error", rec.get("error"))),
                                        [failures_path]))
    failures.sort(key=lambda f: f.t)
    try:
        submits = ctx.tails.recent(ctx.path("submit_order_log"), keep=BOT_LOG_KEEP)
    except FileProblem:
        return failures, other_orders + len(failures)
    return failures, sum(1 for rec in submits
                         if (t := funnel.record_time(rec, "ts", "_ts", "timestamp")) is not None and t >= since)


@dataclass
class DryRuns:
    """The audit dry-run mocks in logs/orders.jsonl (``"dry_run": true``, ``action``
    ``audit_dry_run``, ``order_id`` ``AUDIT-DRYRUN-...``: src/audit_guard.py answered with a mock
    order and nothing reached the broker) and the newest order line that was not one."""

    count: int = 0
    newest_mock: float | None = None
    newest_mock_symbol: str | None = None
    newest_real: float | None = None


def dry_run_orders(ctx: Context, since: float, problems: list[str]) -> DryRuns:
    """The dry-run mocks the bot logged since ``since``; an unreadable order log is named in ``problems``."""
    out = DryRuns()
    for rec in _bot_log(ctx, "orders_log", problems):
        t = funnel.record_time(rec, "ts", "_ts", "timestamp")
        if t is None or rec.get("type", "order") != "order":
            continue
        if rec.get("dry_run") is True or str(rec.get("action", "")).startswith("audit_dry_run"):
            if t >= since:
                out.count += 1
            if out.newest_mock is None or t >= out.newest_mock:
                out.newest_mock, out.newest_mock_symbol = t, str(rec.get("symbol") or "?").upper()
        elif out.newest_real is None or t > out.newest_real:
            out.newest_real = t
    return out


def _error_text(value: Any) -> str:
    text = funnel.error_text({"error": value}) if value not in (None, "") else None
    text = text or "no error text"
    return text if len(text) <= 160 else text[:157] + "..."
