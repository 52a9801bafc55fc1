"""System & Infrastructure (FP-6.x): the bot process, crashes, liveness, host resources."""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..engine import check
from ..model import Outcome
from .data import process_report


@check("FP-6.1")
def bot_running(ctx: Context, p: dict[str, Any]) -> Outcome:
    spec = ctx.config["processes"]["bot"]
    r = process_report(ctx, "bot")
    details: dict[str, Any] = {"pids": r.pids}
    unit_note = ""
    if r.unit is not None and r.unit.exists:
        details["systemd"] = {"unit": r.unit.name, "active_state": r.unit.active_state, "main_pid": r.unit.main_pid}
        unit_note = f"; {r.unit.name} is {r.unit.active_state}"
    # the unit's MainPID is the supervisor, not main.py: only a main.py process counts
    if r.matches:
        pids = [m.pid for m in r.matches]
        details["pids"] = pids
        return Outcome.ok(f"{spec['script']} running (pid {pids[0]}){unit_note}", **details).observe("trading_bot_up", 1)
    return Outcome.error(f"no {spec['script']} process runs in {ctx.root}{unit_note}", **details).observe(
        "trading_bot_up", 0)
