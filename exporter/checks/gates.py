"""Gates & Filters (FP-3.x): freezes, position caps and the per-candidate gates."""

from __future__ import annotations

from typing import Any

from ..broker import BrokerError
from ..context import Context
from ..engine import check
from ..model import Outcome
from ..readers import FileProblem, read_json


def active_freezes(data: Any) -> list[str]:
    """Active freeze keys: value ``true`` or an object with ``"active": true``.

    Companion keys (``performance_freeze_reason`` ...) hold strings and are not freezes.
    """
    if not isinstance(data, dict):
        return []
    active = []
    for key, value in data.items():
        if value is True:
            active.append(key)
        elif isinstance(value, dict) and value.get("active") is True:
            reason = value.get("reason")
            active.append(f"{key} ({reason})" if isinstance(reason, str) and reason else key)
    return active


def freeze_state(ctx: Context) -> tuple[list[str], dict[str, Any]]:
    """Everything that blocks all trading, each as a readable item; nothing is ever cleared here."""
    blocking: list[str] = []
    details: dict[str, Any] = {}
    try:
        freezes = read_json(ctx.path("governor_freezes"), retries=3, delay=0.1)
        if not isinstance(freezes, dict):
            blocking.append("governor_freezes.json is not a JSON object (treated as frozen)")
        else:
            found = active_freezes(freezes)
            details["freezes"] = found
            blocking += [f"freeze {f}" for f in found]
    except FileProblem as exc:
        if exc.kind != "missing":  # no freezes file means no freeze
            blocking.append(f"{exc} (treated as frozen)")
    if ctx.path("safe_mode_flag").exists():
        blocking.append("safe mode flag present (state/health_safe_mode.flag)")
        details["safe_mode"] = True
    try:
        ks = read_json(ctx.path("kill_switch"), retries=3, delay=0.1)
    except FileProblem as exc:
        if exc.kind != "missing":  # an unreadable kill switch halts, as it does in the bot
            blocking.append(f"kill switch unreadable: {exc} (treated as halted)")
            details["kill_switch"] = True
    else:
        enabled = ks.get("enabled", False) if isinstance(ks, dict) else None
        if enabled is True:
            blocking.append("kill switch enabled")
            details["kill_switch"] = True
        elif enabled is not False:
            blocking.append("kill switch file has no valid 'enabled' value (treated as halted)")
            details["kill_switch"] = True
    return blocking, details


@check("FP-3.1")
def no_freeze(ctx: Context, p: dict[str, Any]) -> Outcome:
    blocking, details = freeze_state(ctx)
    if blocking:
        out = Outcome.error("trading blocked: " + "; ".join(blocking), blocking=blocking, **details)
    else:
        out = Outcome.ok("no freeze, safe mode or kill switch", **details)
    return out.observe("trading_freezes_active", len(blocking))


@check("FP-3.2")
def below_max_positions(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        cap = int(ctx.env.number("MAX_CONCURRENT_POSITIONS", 16))
    except ValueError as exc:
        return Outcome.error(f"{exc}: cannot tell the position cap")
    try:
        positions = ctx.broker_get("/positions")
    except BrokerError as exc:
        return Outcome.error(f"cannot list positions: {exc}")
    if not isinstance(positions, list):
        return Outcome.error("Alpaca /v2/positions did not return a list")
    n = len(positions)
    details = {"open_positions": n, "max_positions": cap,
               "cap_source": ctx.env.source.get("MAX_CONCURRENT_POSITIONS", "default")}
    if n >= cap:
        out = Outcome.warn(f"{n} open positions, cap MAX_CONCURRENT_POSITIONS={cap}: no new entries", **details)
    else:
        out = Outcome.ok(f"{n} of {cap} positions open", **details)
    return out.observe("trading_positions_open", n).observe("trading_positions_max", cap)
