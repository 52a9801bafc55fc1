"""Scoring & Evaluation (FP-2.x): adaptive weights, scores, thresholds, enrichment, regime."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..bot import funnel, market
from ..bot.cache import CacheSummary, require_cache
from ..bot.context import Context
from ..bot.readers import FileProblem, read_json
from ..bot.values import age_text, load_state_json, number
from ..bot.weights import ENTRY_COMPONENTS, band_problems
from ..core.engine import check
from ..core.model import Outcome, iso_utc

#: what main.py does without state/signal_weights.json (adaptive_signal_optimizer._load_state)
DEFAULT_WEIGHTS_TEXT = ("the bot trades on its built-in default weights until the learner's first save "
                        "writes the file (normal on a fresh install)")


@check("FP-2.1")
def weights_initialised(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        data = load_state_json(ctx, "weights", int(p["retries"]), float(p["retry_delay_seconds"]))
    except FileProblem as exc:
        if exc.kind == "missing":
            # the optimizer falls back to its default bands (all 21 components, current 1.0)
            return Outcome.ok(f"{ctx.path('weights').name} absent: {DEFAULT_WEIGHTS_TEXT}", source="defaults",
                              valid_components=len(ENTRY_COMPONENTS),
                              expected_components=len(ENTRY_COMPONENTS)).observe(
                "trading_weights_components", len(ENTRY_COMPONENTS))
        return Outcome.error(str(exc), problem=exc.kind).observe("trading_weights_components", 0)
    entry = data.get("entry_weights") if isinstance(data, dict) else None
    problems, valid = band_problems(entry.get("weight_bands") if isinstance(entry, dict) else None)
    details = {"valid_components": valid, "expected_components": len(ENTRY_COMPONENTS), "source": "file"}
    if problems:
        shown = "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
        where = ("" if isinstance(data, dict)
                 else f"signal_weights.json is not a JSON object (got {type(data).__name__}); ")
        out = Outcome.error(f"weights not initialised: {where}{shown}", problems=problems[:21], **details)
    else:
        out = Outcome.ok(f"all {len(ENTRY_COMPONENTS)} entry weight bands valid", **details)
    return out.observe("trading_weights_components", valid)


# --- FP-2.2 / FP-2.4 / FP-2.5: stage errors in the run log ---------------------------------------
def _stage_error_outcome(ctx: Context, p: dict[str, Any], stage: str, what: str) -> tuple[Outcome | None, int]:
    """WARN naming the latest ``stage`` error of the recent cycles, or None when there is none."""
    events, errors = funnel.stage_errors(ctx, p, (stage,))
    if not errors:
        return None, 0
    latest = errors[-1]
    return Outcome.warn(f"{len(errors)} of the last {len(events)} cycles logged {what} errors; latest at "
                        f"{iso_utc(latest.t)}: {latest.error}", errors=len(errors), events=len(events),
                        latest_error=latest.error), len(errors)


@check("FP-2.2")
def composite_scores(ctx: Context, p: dict[str, Any]) -> Outcome:
    w = funnel.window(ctx, int(p["cycles"])).since(ctx.now() - float(p["max_age_seconds"]))
    w.require_run_log()
    if w.blocked_problem:
        return Outcome.warn(f"cannot read the blocked-trades log: {w.blocked_problem}: cannot tell whether "
                            "candidates are scored").observe("trading_score_failures", None)
    bad = sum(e.bad_scores for e in w.events)
    scored = sum(len(e.scores) for e in w.events) + bad
    logged, n_err = _stage_error_outcome(ctx, p, "scoring", "score")
    details = {"candidates_scored": scored, "non_finite_scores": bad, "score_errors": n_err}
    if bad:
        out = Outcome.warn(f"{bad} of {scored} recent blocked candidates carry a missing or non-finite score "
                           "(NaN/inf/null in state/blocked_trades.jsonl): the composite score failed", **details)
    elif logged is not None:
        out = logged
        out.details.update(details)
    else:
        out = Outcome.ok(f"{scored} recent scores finite, no score errors in {len(w.events)} cycles", **details)
    return out.observe("trading_score_failures", bad + n_err)


@check("FP-2.3")
def scores_reach_threshold(ctx: Context, p: dict[str, Any]) -> Outcome:
    session = ctx.session()
    if not session.is_open:
        return Outcome.skipped(f"{session.describe()}: candidates are scored only in session", market=session.phase)
    w = funnel.in_session(ctx, funnel.window(ctx, int(p["cycles"])), session, float(p["max_age_seconds"]))
    w.require_logs()
    cycles = w.cycles
    blocked = w.blocked()
    below = blocked.get("score_below_min", 0)
    try:
        min_exec = ctx.env.number("MIN_EXEC_SCORE", float("nan"))
    except ValueError:
        min_exec = float("nan")
    # a candidate refused by another gate reached the threshold only if its score did: the
    # score gate may run after the others. Without a score or a known bar it gets the benefit
    # of the doubt (no warning on a guess).
    gate_passed = sum(1 for e in w.events for sc in e.gate_scores
                      if sc is None or min_exec != min_exec or sc >= min_exec)
    passed = gate_passed + w.orders()
    best = max((sc for e in w.events for sc in (*e.below_min_scores, *(g for g in e.gate_scores if g is not None))),
               default=None)
    details: dict[str, Any] = {"cycles": len(cycles), "below_min": below, "reached_threshold": passed,
                               "best_score_below_min": best}
    if min_exec == min_exec:  # not NaN
        details["min_exec_score"] = min_exec
    need = int(p["cycles"])
    if len(cycles) >= need and below and not passed:
        best_text = f"; best score {best:g}" if best is not None else ""
        bar = f" against MIN_EXEC_SCORE {min_exec:g}" if "min_exec_score" in details else ""
        out = Outcome.warn(f"no candidate reached the threshold in the last {len(cycles)} in-session cycles: "
                           f"{below} blocked as score_below_min{best_text}{bar} (see FP-3.8)", **details)
    elif passed:
        out = Outcome.ok(f"{passed} candidate(s) reached the threshold in the last {len(cycles)} cycles "
                         f"({below} below it)", **details)
    else:
        out = Outcome.ok(f"{len(cycles)} in-session cycles, {below} candidates below the threshold "
                         f"(warns after {need} cycles with none above)", **details)
    return out.observe("trading_candidates_below_threshold", below)


@dataclass
class _Stage:
    """What FP-2.4 and FP-2.5 judge in session: the cache summary and the stage's logged errors."""

    session: market.Session
    cache: CacheSummary
    logged: Outcome | None
    errors: int


def _in_session(ctx: Context, p: dict[str, Any], stage: str, closed: str,
                judge: Callable[[Context, dict[str, Any], _Stage], Outcome]) -> Outcome:
    """SKIPPED outside the session (``closed`` says why); in session ``judge`` on the cache summary
    and the stage's logged errors (``_stage_error_outcome``)."""
    session = ctx.session()
    if not session.is_open:
        return Outcome.skipped(f"{session.describe()}: {closed}", market=session.phase)
    cache = require_cache(ctx)
    return judge(ctx, p, _Stage(session, cache, *_stage_error_outcome(ctx, p, stage, stage)))


@check("FP-2.4")
def enrichment(ctx: Context, p: dict[str, Any]) -> Outcome:
    return _in_session(ctx, p, "enrichment", "enrichment endpoints are market-sensitive", _judge_enrichment)


def _judge_enrichment(ctx: Context, p: dict[str, Any], st: _Stage) -> Outcome:
    s, logged, n_err = st.cache, st.logged, st.errors
    n = len(s.symbols)
    share = s.tickers_enriched / n if n else 0.0
    details = {"symbols": n, "tickers_enriched": s.tickers_enriched, "share": round(share, 3),
               "enrichment_errors": n_err}
    out: Outcome
    if n and share < float(p["min_enriched_share"]):
        out = Outcome.warn(f"only {s.tickers_enriched} of {n} tickers carry any non-empty intel block "
                           f"(dark_pool, greeks, ...; minimum share {p['min_enriched_share']:g})", **details)
    elif logged is not None:
        out = logged
        out.details.update(details)
    else:
        out = Outcome.ok(f"{s.tickers_enriched} of {n} tickers enriched", **details)
    return out.observe("trading_uw_cache_tickers_enriched", s.tickers_enriched)


@check("FP-2.5")
def regime_detection(ctx: Context, p: dict[str, Any]) -> Outcome:
    return _in_session(ctx, p, "regime", "market tide is fetched only in session", _judge_regime)


def _judge_regime(ctx: Context, p: dict[str, Any], st: _Stage) -> Outcome:
    session, s, logged, n_err = st.session, st.cache, st.logged, st.errors
    details: dict[str, Any] = {"tide_points": s.tide_points, "regime_errors": n_err}
    if s.tide_newest is not None:
        details["tide_newest"] = iso_utc(s.tide_newest)
    now = ctx.now()
    # the daemon polls the tide only from 09:30 ET: until its first in-session poll the cache
    # holds the previous session's point, so age is counted from the open at the earliest
    opened = datetime.combine(session.now.astimezone(market.NY).date(), market.REGULAR_OPEN, market.NY).timestamp()
    limit = float(p["max_age_seconds"])
    points = f"{s.tide_points} point" + ("s" if s.tide_points != 1 else "")
    out: Outcome
    if not s.tide_present:
        out = Outcome.warn("the cache has no _market_tide: the regime cannot be determined", **details)
    elif s.tide_points == 0:
        out = Outcome.warn("_market_tide holds no data points: the regime cannot be determined", **details)
    elif s.tide_newest is not None and now - max(s.tide_newest, opened) > limit:
        age = now - s.tide_newest
        out = Outcome.warn(f"newest market-tide data is {age_text(age)} old (limit {limit:g} s in session; the "
                           "daemon polls it every 600 s): the regime is computed from stale data",
                           age_seconds=round(age), **details)
    elif logged is not None:
        out = logged
        out.details.update(details)
    elif s.tide_newest is not None and s.tide_newest < opened:
        out = Outcome.ok(f"market tide has {points} from before the open ({age_text(max(0, now - s.tide_newest))} "
                         f"old): the daemon's first in-session poll is due (warns {limit:g} s after the open)",
                         **details)
    else:
        out = Outcome.ok(f"market tide has {points}"
                         + (f", newest {age_text(max(0, now - s.tide_newest))} old"
                            if s.tide_newest is not None else ""), **details)
    return out.observe("trading_market_tide_timestamp_seconds", s.tide_newest)


# --- FP-2.6: the weights file is saved, whole -----------------------------------------------------
def _weights_read(ctx: Context, p: dict[str, Any], torn_at: list[float]) -> Any:
    """The parsed weights; a first read that was torn is recorded in ``torn_at``.

    Parsed again only when the file changed, so one torn write is counted once.
    """
    def parse(path: Path) -> Any:
        try:
            return json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError, RecursionError):
            torn_at.append(ctx.now())
            return read_json(path, int(p["retries"]), float(p["retry_delay_seconds"]))
        except FileNotFoundError:
            raise FileProblem("missing", path, f"{path.name} does not exist") from None
        except OSError as exc:
            raise FileProblem("unreadable", path, f"{path.name} cannot be read: {exc.strerror}") from None

    return ctx.files.get(ctx.path("weights"), parse, kind="FP-2.6")


@check("FP-2.6")
def weights_saved(ctx: Context, p: dict[str, Any]) -> Outcome:
    now = ctx.now()
    torn_at: list[float] = ctx.state_for("FP-2.6").setdefault("torn_at", [])
    try:
        data = _weights_read(ctx, p, torn_at)
    except FileProblem as exc:
        if exc.kind == "missing":
            # no save is not a failed save: nothing has been learned yet, so nothing can be stale
            return Outcome.skipped(f"{ctx.path('weights').name} not saved yet: {DEFAULT_WEIGHTS_TEXT}",
                                   source="defaults").observe("trading_weights_saved_timestamp_seconds", None)
        return Outcome.error(f"{exc} (see FP-2.1)", problem=exc.kind)
    window = float(p["torn_window_seconds"])
    torn_at[:] = [t for t in torn_at if now - t <= window]
    saved_at = number(data.get("saved_at")) if isinstance(data, dict) else None
    details: dict[str, Any] = {"torn_reads": len(torn_at), "torn_window_seconds": window}
    out: Outcome
    if saved_at is None:
        out = Outcome.warn("state/signal_weights.json has no numeric saved_at: cannot tell when the learner "
                           "last saved", **details)
    else:
        age = now - saved_at
        details.update(saved_at=iso_utc(saved_at), age_seconds=round(age))
        if age < -300:
            out = Outcome.warn(f"saved_at is {age_text(-age)} in the future (clock skew?)", **details)
        elif age > float(p["max_age_seconds"]):
            out = Outcome.warn(f"weights not saved for {age_text(age)} (limit {age_text(p['max_age_seconds'])}): "
                               "the learner is not updating", **details)
        elif len(torn_at) >= int(p["torn_warn_count"]):
            out = Outcome.warn(f"{len(torn_at)} torn reads of state/signal_weights.json in the last "
                               f"{age_text(window)}: it is written non-atomically and a crash mid-write "
                               "would lose the weights", **details)
        else:
            out = Outcome.ok(f"saved {age_text(max(age, 0))} ago", **details)
    return out.observe("trading_weights_saved_timestamp_seconds", saved_at)


# --- FP-2.7: per-symbol thresholds ----------------------------------------------------------------
def threshold_problems(data: Any, lo: float, hi: float) -> tuple[list[str], int]:
    """Problems with the hierarchical thresholds and how many numeric thresholds it holds."""
    if not isinstance(data, dict):
        return [f"not a JSON object (got {type(data).__name__})"], 0
    problems: list[str] = []
    count = 0

    def walk(node: Any, where: str) -> None:
        nonlocal count
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            return  # metadata (source, updated_at, ...) is not a threshold
        elif isinstance(node, (int, float)):
            count += 1
            f = float(node)
            if f != f or f in (float("inf"), float("-inf")):
                problems.append(f"{where} is not finite")
            elif not lo <= f <= hi:
                problems.append(f"{where} = {f:g} outside [{lo:g}, {hi:g}]")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(data, "")
    return problems, count


@check("FP-2.7")
def thresholds_valid(ctx: Context, p: dict[str, Any]) -> Outcome:
    path = ctx.path("thresholds")
    try:
        data = load_state_json(ctx, "thresholds", int(p["retries"]), float(p["retry_delay_seconds"]))
    except FileProblem as exc:
        if exc.kind == "missing":
            return Outcome.ok(f"{path.name} absent: the bot uses ENTRY_THRESHOLD_BASE (else 2.7)")
        return Outcome.error(f"{exc}: the bot cannot read its per-symbol entry thresholds", problem=exc.kind)
    lo, hi = float(p["min_threshold"]), float(p["max_threshold"])
    problems, count = threshold_problems(data, lo, hi)
    details: dict[str, Any] = {"thresholds": count}
    if problems and problems[0].startswith("not a JSON object"):
        return Outcome.error(f"{path.name} is {problems[0]}", **details)
    if any("not finite" in x for x in problems):
        shown = "; ".join(problems[:4])
        return Outcome.error(f"{path.name} has non-finite thresholds: {shown}", problems=problems[:20], **details)
    if problems:
        shown = "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
        return Outcome.warn(f"{path.name}: {shown}", problems=problems[:20], **details).observe(
            "trading_thresholds_invalid", len(problems))
    if count == 0:
        return Outcome.warn(f"{path.name} holds no numeric threshold", **details).observe(
            "trading_thresholds_invalid", 0)
    return Outcome.ok(f"{count} thresholds, all within [{lo:g}, {hi:g}]", **details).observe(
        "trading_thresholds_invalid", 0)
