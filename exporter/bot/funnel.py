"""The signal funnel: why is the bot not trading? Answered from the bot's own logs.

For the recent cycles of ``logs/run.jsonl``: symbols in the UW cache -> clusters the cycles
built -> candidates blocked, by reason (``state/blocked_trades.jsonl``) -> orders sent. The same
window feeds the per-gate failure points (FP-2.3, FP-3.3 ... FP-3.7), the run-log error points
(FP-1.8, FP-2.2, FP-2.4, FP-2.5) and the status page, so every consumer sees the same cycles.

Cost: both logs are read incrementally through ``ctx.tails`` and polled once per engine run for
every point that reads the window; the window is rebuilt only when one of them grew, and then
only the records inside the window are parsed (newest first, stop at the window's start), once
for the largest window the points ask for. An unchanged bot costs two ``fstat`` calls per cycle.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from ..core.faults import BlockedLogUnreadable, RunLogUnreadable
from . import market
from .cache import cache_summary
from .context import Context
from .readers import FileProblem
from .values import record_time

#: Block reasons BOT.md documents; anything else is exported as "other" (bounded label values).
REASONS = ("score_below_min", "max_positions_reached", "symbol_on_cooldown", "expectancy_blocked",
           "regime_gate", "theme_gate", "max_new_positions_per_cycle", "market_closed",
           "order_validation_failed")
REASON_LABELS = (*REASONS, "other")
STAGES = ("symbols", "clusters", "blocked", "orders")
RUN_KEEP = 5000
BLOCKED_KEEP = 10000  # ~60 cycles of a busy day; bounded memory (~6 MB)
#: run-log error records are attributed to a stage by an explicit ``stage``/``component`` field,
#: else by these words in the error text; the rest are cycle errors (counted by FP-1.8)
STAGE_WORDS = (("scoring", ("composite", "score")), ("enrichment", ("enrich",)), ("regime", ("regime",)),
               ("clusters", ("cluster",)))
ERROR_WORDS = ("error", "exception", "traceback", "failed", "failure")
ERROR_LEVELS = ("error", "critical", "exception", "fatal")


def reason_label(raw: Any) -> str:
    """Collapse a raw reason to the bounded set: ``expectancy_blocked:<why>`` -> expectancy_blocked."""
    if not isinstance(raw, str) or not raw:
        return "other"
    head = raw.split(":", 1)[0].strip()
    return head if head in REASONS else "other"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("message") or value.get("msg") or value.get("error") or value.get("type")
        return str(inner) if inner else ", ".join(f"{k}={v}" for k, v in list(value.items())[:3])
    if isinstance(value, list):
        return "; ".join(_text(v) for v in value[:3])
    return str(value)


def error_text(rec: dict[str, Any]) -> str | None:
    """The error a run-log record reports, or None.

    A record is an error when it has a non-empty ``error``; a non-empty ``errors`` list/object
    or a positive ``errors`` count; a ``level``/``levelname`` of error/critical/exception/fatal;
    or a ``msg`` (other than ``complete``) containing error, exception, traceback, failed or
    failure.
    """
    err = rec.get("error")
    if err not in (None, "", False, [], {}):
        return _text(err)
    errs = rec.get("errors")
    if isinstance(errs, (list, dict)) and errs:
        return _text(errs)
    if isinstance(errs, (int, float)) and not isinstance(errs, bool) and errs > 0:
        return f"{errs:g} errors reported"
    msg = rec.get("msg") if isinstance(rec.get("msg"), str) else ""
    level = rec.get("level") or rec.get("levelname")
    if isinstance(level, str) and level.lower() in ERROR_LEVELS:
        return msg or "error-level record"
    if msg and msg != "complete" and any(w in msg.lower() for w in ERROR_WORDS):
        return msg
    return None


def error_stage(rec: dict[str, Any], text: str) -> str:
    """clusters, scoring, enrichment, regime or cycle (anything else that failed in a cycle)."""
    explicit = rec.get("stage") or rec.get("component")
    probe = f"{explicit} {text}".lower() if isinstance(explicit, str) else text.lower()
    for stage, words in STAGE_WORDS:
        if any(w in probe for w in words):
            return stage
    return "cycle"


def is_cycle(rec: dict[str, Any]) -> bool:
    return rec.get("msg") == "complete" or "clusters" in rec


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(v)


@dataclass
class Event:
    """One run-log record that is a completed cycle, an error, or both."""

    t: float
    cycle: bool
    clusters: int | None = None
    orders: int | None = None
    freeze_active: bool = False
    error: str | None = None
    stage: str | None = None
    blocked: Counter[str] = field(default_factory=Counter)
    blocked_raw: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)
    below_min_scores: list[float] = field(default_factory=list)
    #: scores of candidates refused by another gate (None when the line has no finite score)
    gate_scores: list[float | None] = field(default_factory=list)
    bad_scores: int = 0


@dataclass
class Window:
    """The last cycles of the run log with the blocked candidates attributed to each."""

    events: list[Event]
    run_problem: str | None = None
    blocked_problem: str | None = None

    def since(self, start: float) -> Window:
        return Window([e for e in self.events if e.t >= start], self.run_problem, self.blocked_problem)

    def require_run_log(self) -> Window:
        """This window, or :class:`RunLogUnreadable` when the run log could not be read."""
        if self.run_problem:
            raise RunLogUnreadable(f"cannot read the run log ({self.run_problem})")
        return self

    def require_logs(self) -> Window:
        """This window, or a fault when the run log or the blocked-trades log could not be read."""
        self.require_run_log()
        if self.blocked_problem:
            raise BlockedLogUnreadable(f"cannot read the blocked-trades log ({self.blocked_problem})")
        return self

    @property
    def cycles(self) -> list[Event]:
        return [e for e in self.events if e.cycle]

    @property
    def errors(self) -> list[Event]:
        return [e for e in self.events if e.error]

    def blocked(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for e in self.events:
            total.update(e.blocked)
        return total

    def blocked_raw(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for e in self.events:
            total.update(e.blocked_raw)
        return total

    def clusters(self) -> int:
        return sum(e.clusters or 0 for e in self.cycles)

    def orders(self) -> int:
        return sum(e.orders or 0 for e in self.cycles)

    def candidates(self) -> int:
        """Candidates that met a gate: blocked ones plus orders sent."""
        return sum(self.blocked().values()) + self.orders()


_build_lock = threading.Lock()


def _logs(ctx: Context) -> tuple[tuple[Any, ...], str | None, str | None]:
    """Poll the run log and the blocked-trades log: (their version, run problem, blocked problem)."""
    run_tail = ctx.tails.get(ctx.path("run_log"), keep=RUN_KEEP)
    blk_tail = ctx.tails.get(ctx.path("blocked_trades"), keep=BLOCKED_KEEP)
    run_problem = blocked_problem = None
    try:
        run_n, run_gen = run_tail.version()
    except FileProblem as exc:
        run_n, run_gen, run_problem = -1, -1, str(exc)
    try:
        blk_n, blk_gen = blk_tail.version()
    except FileProblem as exc:
        # no blocked_trades.jsonl yet means nothing was ever blocked; an unreadable or corrupt one
        # means nobody can tell what was blocked
        blk_n, blk_gen = -1, -1
        blocked_problem = None if exc.kind == "missing" else str(exc)
    return (run_n, run_gen, blk_n, blk_gen, run_problem, blocked_problem), run_problem, blocked_problem


def window(ctx: Context, events: int = 60) -> Window:
    """The last ``events`` cycle/error records, rebuilt only when a log grew (memoised per ctx).

    The logs are polled once per engine run for every point that reads the window. Several
    points ask for different numbers of events (10, 20, 60): the largest window asked for so
    far is built, and a smaller one is its last events whenever that is exactly what building
    it would give (:meth:`_Built.last`), so a cycle in which the logs grew builds one window.
    """
    version, run_problem, blocked_problem = ctx.per_cycle("funnel-logs", lambda: _logs(ctx))
    memo = ctx.state_for("funnel")
    with _build_lock:
        hit = memo.get(f"window:{events}")
        if hit is not None and hit[0] == version:
            return hit[1]  # type: ignore[no-any-return]
        largest = max(events, memo.get("largest", 0))
        memo["largest"] = largest
        big = memo.get("built")
        if big is None or big.version != version or big.n < events:
            big = _Built(version, largest, *_build_with(ctx, run_problem, blocked_problem, largest))
            memo["built"] = big
        built = big.last(events)
        if built is None:
            built = _build_with(ctx, run_problem, blocked_problem, events)[0]
        built.run_problem, built.blocked_problem = run_problem, blocked_problem
        memo[f"window:{events}"] = (version, built)
        return built


def _build_with(ctx: Context, run_problem: str | None, blocked_problem: str | None,
                n: int) -> tuple[Window, float | None]:
    run = ctx.tails.get(ctx.path("run_log"), keep=RUN_KEEP).kept() if run_problem is None else []
    blocked = ctx.tails.get(ctx.path("blocked_trades"), keep=BLOCKED_KEEP).kept() if blocked_problem is None else []
    built, previous_t = _build(run, blocked, n)
    built.run_problem, built.blocked_problem = run_problem, blocked_problem
    return built, previous_t


@dataclass
class _Built:
    """A window built for ``n`` events, with the time its blocked records were counted from."""

    version: tuple[Any, ...]
    n: int
    window: Window
    previous_t: float | None

    def last(self, n: int) -> Window | None:
        """The window of the last ``n`` events, when slicing this one gives exactly what
        :func:`_build` would: its events in time order and the record before it no later than its
        first event (a log written in time order). None otherwise: build that window itself."""
        events = self.window.events
        if n >= self.n or len(events) <= n:
            # the window asked for, or one that holds every event the log has (fewer than n)
            return Window(events)
        times = [e.t for e in events]
        if any(a > b for a, b in zip(times, times[1:], strict=False)):
            return None
        if self.previous_t is not None and self.previous_t > times[0]:
            return None
        return Window(events[-n:])


def _build(run: list[dict[str, Any]], blocked: list[dict[str, Any]], n: int) -> tuple[Window, float | None]:
    """The window of the last ``n`` events and the time its blocked records were counted from
    (the record before it, or one cycle period before its first event)."""
    picked: list[Event] = []
    previous_t: float | None = None
    for rec in reversed(run):
        err = error_text(rec)
        cycle = is_cycle(rec)
        if not cycle and err is None:
            continue
        t = record_time(rec, "_ts", "ts", "timestamp")
        if t is None:
            continue
        if len(picked) == n:
            previous_t = t
            break
        ev = Event(t, cycle, _int(rec.get("clusters")), _int(rec.get("orders")), rec.get("freeze_active") is True)
        if err is not None:
            ev.error, ev.stage = err[:200], error_stage(rec, err)
        picked.append(ev)
    picked.reverse()
    if not picked:
        return Window([]), None
    if previous_t is None:
        # no record before the window: its first cycle started about one cycle period earlier
        spacing = sorted(b.t - a.t for a, b in zip(picked, picked[1:], strict=False)) or [60.0]
        previous_t = picked[0].t - max(1.0, spacing[len(spacing) // 2])
    # newest first; blocked lines are written during a cycle, before its "complete" line
    idx = len(picked) - 1
    for rec in reversed(blocked):
        t = record_time(rec, "timestamp", "ts", "_ts")
        if t is None:
            continue
        if t <= previous_t:
            break
        if t > picked[-1].t:
            continue  # the cycle in progress: counted once it completes
        while idx > 0 and picked[idx - 1].t >= t:
            idx -= 1
        ev = picked[idx]
        raw = rec.get("reason")
        label = reason_label(raw)
        ev.blocked[label] += 1
        if isinstance(raw, str) and label in ("expectancy_blocked", "other"):
            ev.blocked_raw[raw[:80]] += 1
        raw_score = rec.get("score")
        score: float | None = None
        if isinstance(raw_score, (int, float)) and not isinstance(raw_score, bool) and math.isfinite(raw_score):
            score = float(raw_score)
        if "score" in rec:
            if score is not None:
                ev.scores.append(score)
                if label == "score_below_min":
                    ev.below_min_scores.append(score)
            else:
                ev.bad_scores += 1
        if label != "score_below_min":
            ev.gate_scores.append(score)
    return Window(picked), previous_t


def session_open(ctx: Context, session: market.Session) -> float | None:
    """When today's regular session opened (broker calendar; half days honoured), if open now."""
    if not session.is_open:
        return None
    today = session.now.astimezone(market.NY).date()
    mcfg = ctx.config["market"]
    try:
        cal = ctx.broker_get("/calendar", {"start": today.isoformat(), "end": today.isoformat()},
                             ttl=float(mcfg["calendar_cache_seconds"]))
    except Exception:  # noqa: BLE001 - the broker being down is FP-4.1's to report
        cal = None
    for entry in cal if isinstance(cal, list) else []:
        try:
            if date.fromisoformat(str(entry["date"])[:10]) != today:
                continue
            hh, mm = str(entry["open"]).split(":")[:2]
            return datetime.combine(today, time(int(hh), int(mm)), market.NY).timestamp()
        except (KeyError, ValueError, TypeError):
            continue
    return datetime.combine(today, market.REGULAR_OPEN, market.NY).timestamp()


def in_session(ctx: Context, w: Window, session: market.Session, max_age: float) -> Window:
    """The part of the window inside today's session and younger than ``max_age`` seconds."""
    start = ctx.now() - max_age
    opened = session_open(ctx, session)
    if opened is not None:
        start = max(start, opened)
    return w.since(start)


def compute(ctx: Context, cycles: int | None = None, max_age: float | None = None) -> dict[str, Any]:
    """The funnel for the status page and FP-1.7: symbols -> clusters -> blocked -> orders.

    Defaults come from FP-1.7's parameters (``funnel_cycles``, ``max_age_seconds``).
    """
    params = ctx.config.check_settings("FP-1.7")["params"]
    n = int(cycles if cycles is not None else params["funnel_cycles"])
    age = float(max_age if max_age is not None else params["max_age_seconds"])
    w = window(ctx, n)
    recent = w.since(ctx.now() - age)
    symbols: int | None
    try:
        symbols = len(cache_summary(ctx).symbols)
    except FileProblem:
        symbols = None
    blocked = recent.blocked()
    reasons = {r: blocked.get(r, 0) for r in REASON_LABELS}
    cyc = recent.cycles
    stages = {"symbols": symbols, "clusters": recent.clusters(), "blocked": sum(blocked.values()),
              "orders": recent.orders()}
    out: dict[str, Any] = {
        "cycles": len(cyc),
        "since": market_iso(cyc[0].t) if cyc else None,
        "until": market_iso(cyc[-1].t) if cyc else None,
        "stages": stages,
        "blocked_by_reason": {k: v for k, v in reasons.items() if v},
        "blocked_detail": dict(recent.blocked_raw().most_common(5)),
        "errors": len(recent.errors),
        "frozen_cycles": sum(1 for e in cyc if e.freeze_active),
        "answer": answer(stages, blocked, len(cyc), sum(1 for e in cyc if e.freeze_active), len(recent.errors)),
    }
    if w.run_problem:
        out["run_log_problem"] = w.run_problem
    return out


def market_iso(ts: float) -> str:
    from ..core.model import iso_utc

    return iso_utc(ts)


def answer(stages: dict[str, Any], blocked: Counter[str], cycles: int, frozen: int, errors: int) -> str:
    """One sentence: where the signals stop."""
    if cycles == 0:
        return "no completed cycle in the recent run log: the bot is not cycling (see FP-6.1/FP-6.3)"
    if stages["orders"]:
        return f"{stages['orders']} order(s) sent in the last {cycles} cycles"
    if frozen:
        return f"{frozen} of the last {cycles} cycles ran frozen (see FP-3.1)"
    if stages["symbols"] == 0:
        return "the UW cache has no symbols (see FP-1.4)"
    if not stages["clusters"]:
        tail = f"; {errors} cycle error(s) logged (see FP-1.8)" if errors else ""
        return f"no clusters in the last {cycles} cycles{tail}"
    if blocked:
        top = ", ".join(f"{r} {c}" for r, c in blocked.most_common(3))
        return f"{stages['clusters']} clusters, {sum(blocked.values())} candidates blocked ({top}), no order"
    return f"{stages['clusters']} clusters but no candidate reached the gates and no order"


def stage_errors(ctx: Context, p: dict[str, Any],
                 stages: tuple[str, ...]) -> tuple[list[Event], list[Event]]:
    """(recent events, those of them that logged an error of one of ``stages``)."""
    w = window(ctx, int(p["cycles"])).since(ctx.now() - float(p["max_age_seconds"]))
    return w.events, [e for e in w.events if e.error and e.stage in stages]
