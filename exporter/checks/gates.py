"""Gates & Filters (FP-3.x): freezes, position caps and the per-candidate gates."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..bot import funnel
from ..bot.alpaca import positions_or_failure
from ..bot.botenv import ALPACA_URL_VARS
from ..bot.context import Context
from ..bot.freeze import freeze_state
from ..bot.orders import dry_run_orders
from ..bot.readers import FileProblem
from ..bot.values import load_state_json, number
from ..core.engine import check
from ..core.model import Outcome, Status, iso_utc


@check("FP-3.1")
def no_freeze(ctx: Context, p: dict[str, Any]) -> Outcome:
    blocking, details = freeze_state(ctx)
    problem = details.get("freeze_file_problem")
    if blocking:
        also = f"; also {problem}" if problem else ""
        out = Outcome.error("trading blocked: " + "; ".join(blocking) + also, blocking=blocking, **details)
    elif problem:
        out = Outcome.warn(problem, **details)
    else:
        out = Outcome.ok("no freeze, safe mode or kill switch", **details)
    return out.observe("trading_freezes_active", len(blocking))


@check("FP-3.2")
def below_max_positions(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        raw_cap = ctx.env.number("MAX_CONCURRENT_POSITIONS", 16)
    except ValueError as exc:
        return Outcome.error(f"{exc}: cannot tell the position cap")
    if not math.isfinite(raw_cap):  # nan/inf parse as floats but are no cap at all
        return Outcome.error(f"MAX_CONCURRENT_POSITIONS={raw_cap} is not a finite number: cannot tell the position cap")
    cap = int(raw_cap)
    positions = positions_or_failure(ctx)
    if isinstance(positions, Outcome):
        return positions
    n = len(positions)
    details = {"open_positions": n, "max_positions": cap,
               "cap_source": ctx.env.source.get("MAX_CONCURRENT_POSITIONS", "default")}
    if n >= cap:
        out = Outcome.warn(f"{n} open positions, cap MAX_CONCURRENT_POSITIONS={cap}: no new entries", **details)
    else:
        out = Outcome.ok(f"{n} of {cap} positions open", **details)
    return out.observe("trading_positions_open", n).observe("trading_positions_max", cap)


# --- FP-3.3 ... FP-3.7: per-candidate gates, from the bot's blocked-trades log --------------------
GATE_ENV = {"max_new_positions_per_cycle": "MAX_NEW_POSITIONS_PER_CYCLE",
            "symbol_on_cooldown": "COOLDOWN_MINUTES_PER_TICKER"}


def gate_share(ctx: Context, p: dict[str, Any], reason: str, what: str) -> Outcome:
    """WARN when ``reason`` refused at least ``warn_share`` of the recent in-session candidates.

    Candidates are the blocked lines of the recent cycles plus the orders those cycles sent; a
    share is judged only from ``min_candidates`` candidates on, so two refusals are not "most".
    """
    session = ctx.session()
    if not session.is_open:
        return Outcome.skipped(f"{session.describe()}: gates only refuse candidates in session",
                               market=session.phase)
    w = funnel.in_session(ctx, funnel.window(ctx, int(p["cycles"])), session, float(p["max_age_seconds"]))
    w.require_logs()
    blocked = w.blocked()
    candidates = sum(blocked.values()) + w.orders()
    hits = blocked.get(reason, 0)
    share = hits / candidates if candidates else 0.0
    details: dict[str, Any] = {"reason": reason, "blocked_by_gate": hits, "candidates": candidates,
                               "share": round(share, 3), "cycles": len(w.cycles), "orders": w.orders()}
    if reason == "expectancy_blocked":
        raw = w.blocked_raw()
        details["why"] = {k: v for k, v in raw.most_common(5) if k.startswith("expectancy_blocked")}
    env_name = GATE_ENV.get(reason)
    setting = ""
    if env_name:
        details[env_name] = ctx.env.get(env_name)
        setting = f" ({env_name}={ctx.env.get(env_name) or 'default'})"
    share_text = f"{hits} of {candidates} recent candidates ({100 * share:.0f}%) refused by {what}"
    if candidates >= int(p["min_candidates"]) and share >= float(p["warn_share"]):
        why = ""
        if details.get("why"):
            why = "; " + ", ".join(f"{k.split(':', 1)[-1]} {v}" for k, v in details["why"].items())
        out = Outcome.warn(f"{share_text}{setting}{why}", **details)
    elif candidates < int(p["min_candidates"]):
        out = Outcome.ok(f"{share_text}; too few candidates to judge (minimum {p['min_candidates']})", **details)
    else:
        out = Outcome.ok(share_text, **details)
    return out.observe("trading_gate_block_share", share, gate=reason)


#: the per-candidate gates, each judged by gate_share: point -> (blocked-trades reason, what refuses)
GATE_SHARES = {
    "FP-3.3": ("max_new_positions_per_cycle", "the per-cycle cap MAX_NEW_POSITIONS_PER_CYCLE"),
    "FP-3.4": ("expectancy_blocked", "the expectancy gate"),
    "FP-3.5": ("regime_gate", "the regime gate"),
    "FP-3.6": ("theme_gate", "the theme risk limit"),
    "FP-3.7": ("symbol_on_cooldown", "per-ticker cooldowns"),
}


def _gate_check(reason: str, what: str) -> Callable[[Context, dict[str, Any]], Outcome]:
    def judge(ctx: Context, p: dict[str, Any]) -> Outcome:
        return gate_share(ctx, p, reason, what)

    judge.__name__ = judge.__qualname__ = f"gate_{reason}"
    return judge


for _fp, (_reason, _what) in GATE_SHARES.items():
    check(_fp)(_gate_check(_reason, _what))


# --- FP-3.8: self-healing threshold ---------------------------------------------------------------
def base_threshold(ctx: Context) -> tuple[float, str]:
    """The entry threshold before adjustments, the way the bot picks it (file default, env, 2.7)."""
    try:
        data = load_state_json(ctx, "thresholds")
        default = number(data.get("default")) if isinstance(data, dict) else None
        if default is not None:
            return default, "state/uw_thresholds_hierarchical.json default"
    except FileProblem:
        pass
    try:
        if ctx.env.get("ENTRY_THRESHOLD_BASE"):
            return ctx.env.number("ENTRY_THRESHOLD_BASE", 2.7), "ENTRY_THRESHOLD_BASE"
    except ValueError:
        pass
    return 2.7, "built-in 2.7"


@check("FP-3.8")
def self_healing_threshold(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        data = load_state_json(ctx, "self_healing_threshold")
    except FileProblem as exc:
        if exc.kind == "missing":
            return Outcome.ok("no self-healing threshold file: no adjustment").observe(
                "trading_self_healing_threshold_adjustment", 0)
        return Outcome.warn(f"{exc}: cannot tell whether the entry threshold is raised", problem=exc.kind)
    if not isinstance(data, dict):
        return Outcome.warn("self_healing_threshold.json is not a JSON object: cannot tell the adjustment")
    adjustment = number(data.get("adjustment")) or 0.0
    activated = data.get("activated_at")
    raw_adjustment = data.get("adjustment")
    if activated not in (None, False, 0, "") and raw_adjustment is not None and number(raw_adjustment) is None:
        # NaN or "high" added to the threshold: every candidate fails the comparison, or the bot errors
        return Outcome.warn(f"self_healing_threshold.json: an active adjustment of {str(raw_adjustment)[:40]!r} "
                            "is not a finite number: cannot tell the entry threshold")
    activated_ts = number(activated)
    losses = data.get("consecutive_losses")
    base, base_source = base_threshold(ctx)
    effective = base + adjustment
    details: dict[str, Any] = {"adjustment": adjustment, "activated_at": activated, "consecutive_losses": losses,
                               "base_threshold": base, "base_source": base_source}
    active = activated not in (None, False, 0, "") and adjustment > 0
    out: Outcome
    if active:
        since = f" since {iso_utc(activated_ts)}" if activated_ts is not None else ""
        details["effective_threshold"] = effective
        out = Outcome.warn(f"self-healing adjustment active{since}: entry threshold raised by {adjustment:g} to "
                           f"{effective:g} ({base_source} {base:g}; {losses} consecutive losses)", **details)
    else:
        out = Outcome.ok(f"no active adjustment (entry threshold {base:g} from {base_source})", **details)
    return (out.observe("trading_self_healing_threshold_adjustment", adjustment if active else 0)
            .observe("trading_entry_threshold_effective", effective if active else base))


# --- FP-3.9: paper-only mode against the broker URL -----------------------------------------------
@check("FP-3.9")
def paper_mode_matches_url(ctx: Context, p: dict[str, Any]) -> Outcome:
    env = ctx.env
    mode = env.trading_mode
    url = env.alpaca_base_url
    host = (urlsplit(url).hostname or "").lower()
    url_var = env.which(*ALPACA_URL_VARS) or "default"
    details = {"trading_mode": mode, "base_url_host": host, "base_url_variable": url_var}
    paper_hosts = [h.lower() for h in p["paper_hosts"]]
    loopback = host in ("127.0.0.1", "::1", "localhost")
    if mode == "PAPER":
        if host in paper_hosts:
            return Outcome.ok(f"TRADING_MODE PAPER with the paper host {host}", **details)
        if loopback and p["allow_loopback"]:
            return Outcome.ok(f"TRADING_MODE PAPER with a loopback broker {host} (sandbox)", **details)
        return Outcome.error(f"TRADING_MODE is PAPER but the Alpaca base URL ({url_var}) points at {host or url!r}, "
                             "not the paper host: the bot refuses to run", **details)
    if mode == "LIVE":
        if host in paper_hosts:
            return Outcome.warn(f"TRADING_MODE is LIVE but the Alpaca base URL ({url_var}) is the paper host: "
                                "orders go to the paper account", **details)
        return Outcome.ok(f"TRADING_MODE LIVE with {host}", **details)
    return Outcome.warn(f"TRADING_MODE={mode!r} is neither PAPER nor LIVE", **details)


# --- FP-3.10 / FP-3.11: kill switch and safe mode on their own ------------------------------------
def _others(blocking: list[str], own: str, details: dict[str, Any] | None = None) -> str:
    rest = [b for b in blocking if own not in b]
    text = f"; also blocking: {'; '.join(rest)}" if rest else ""
    # FP-3.1 is skipped meanwhile: its warning about an unusable freezes file is named here
    problem = (details or {}).get("freeze_file_problem")
    return text + (f"; and {problem}" if problem else "")


def _flag_set(ctx: Context, marker: str, gauge: str, clear: str) -> Outcome:
    """ERROR while the freeze state has a blocker naming ``marker`` (a flag that stops all trading)."""
    blocking, details = freeze_state(ctx)
    mine = [b for b in blocking if marker in b]
    if mine:
        # FP-3.1 is skipped while this fails, so every other blocker is named here
        text = f"{mine[0]}{_others(blocking, marker, details)}"
        return Outcome.error(text, blocking=blocking, **details).observe(gauge, 1)
    return Outcome.ok(clear).observe(gauge, 0)


@check("FP-3.10")
def kill_switch_off(ctx: Context, p: dict[str, Any]) -> Outcome:
    return _flag_set(ctx, "kill switch", "trading_kill_switch_enabled", "kill switch off")


@check("FP-3.11")
def safe_mode_off(ctx: Context, p: dict[str, Any]) -> Outcome:
    return _flag_set(ctx, "safe mode", "trading_safe_mode_active", "no safe-mode flag")


@check("FP-3.12")
def orders_reach_broker(ctx: Context, p: dict[str, Any]) -> Outcome:
    """The audit guard answers every order with a mock (or refuses it): the bot looks busy and
    trades nothing."""
    switches = [f"{name}={ctx.env.values[name]} (from {ctx.env.source[name]})"
                for name in ("AUDIT_MODE", "AUDIT_DRY_RUN") if ctx.env.flag(name)]
    problems: list[str] = []
    runs = dry_run_orders(ctx, ctx.now() - float(p["window_seconds"]), problems)
    details: dict[str, Any] = {"switches": switches, "dry_run_orders": runs.count,
                               "newest_dry_run": iso_utc(runs.newest_mock) if runs.newest_mock else None}
    if switches:
        what = ("entries are mocks and every other order is refused" if ctx.env.flag("AUDIT_MODE")
                else "every order is a mock")
        out = Outcome.error(f"audit guard on: {', '.join(switches)}: {what}, nothing reaches Alpaca", **details)
    elif runs.count and runs.newest_mock is not None and (runs.newest_real is None
                                                           or runs.newest_mock > runs.newest_real):
        out = Outcome.error(f"the bot's latest orders are audit dry-run mocks ({runs.count} in the last "
                            f"{float(p['window_seconds']):g} s, newest {runs.newest_mock_symbol} at "
                            f"{iso_utc(runs.newest_mock)}): AUDIT_MODE/AUDIT_DRY_RUN is set where the bot runs",
                            **details)
    elif problems:
        return Outcome.warn(f"cannot tell whether orders are mocks: {'; '.join(problems)}",
                            **details).observe("trading_orders_dry_run", None)
    else:
        out = Outcome.ok("AUDIT_MODE and AUDIT_DRY_RUN off; no dry-run order logged recently", **details)
    return out.observe("trading_orders_dry_run", 1 if out.status is Status.ERROR else 0)
