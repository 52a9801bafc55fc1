"""What blocks all trading: the governor's freezes, the safe-mode flag and the kill switch.

Read as the bot reads them (FP-3.1, FP-3.10, FP-3.11 and the probe's gate stage share it).
"""

from __future__ import annotations

import json
from typing import Any

from .context import Context
from .readers import FileProblem, read_json


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


#: what the bot does with a freezes file it cannot use: monitoring_guards.check_freeze_state loads
#: it with safe_json_load(default={}) (any read or parse failure gives {}) and replaces a
#: non-object with {}, so it trades
NO_FREEZE_TO_THE_BOT = "the bot reads it as no freeze and trades; any freeze it was meant to hold is not in force"


def freeze_state(ctx: Context) -> tuple[list[str], dict[str, Any]]:
    """Everything that blocks all trading, each as a readable item; nothing is ever cleared here.

    A freezes file the bot cannot use blocks nothing (the bot reads it as no freeze); it is
    described in ``details["freeze_file_problem"]`` for FP-3.1 to warn about.
    """
    blocking: list[str] = []
    details: dict[str, Any] = {}
    path = ctx.path("governor_freezes")
    try:
        freezes = read_json(path, retries=3, delay=0.1)
        if not isinstance(freezes, dict):
            kind = json_type(freezes)
            details["freeze_file_problem"] = (f"{path.name} holds {kind} ({_short(freezes)}), not a JSON object: "
                                              f"{NO_FREEZE_TO_THE_BOT}")
            details["freeze_file_type"] = kind.split()[-1]
        else:
            found = active_freezes(freezes)
            details["freezes"] = found
            blocking += [f"freeze {f}" for f in found]
    except FileProblem as exc:
        if exc.kind != "missing":  # no freezes file means no freeze
            details["freeze_file_problem"] = f"{exc}: {NO_FREEZE_TO_THE_BOT}"
            details["freeze_file_type"] = exc.kind
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
        # the bot halts on bool(data.get("enabled", False)), and on any error reading it (a
        # document that is not an object has no .get): policy_variants.kill_switch_active
        if not isinstance(ks, dict):
            blocking.append(f"kill switch file kill_switch.json is not a JSON object (got {json_type(ks)}; "
                            "the bot fails closed: halted)")
            details["kill_switch"] = True
        elif ks.get("enabled", False) is True:
            blocking.append("kill switch enabled")
            details["kill_switch"] = True
        elif ks.get("enabled", False):
            blocking.append(f"kill switch file kill_switch.json has 'enabled': {json.dumps(ks['enabled'])}, "
                            "which the bot reads as on (any truthy value halts)")
            details["kill_switch"] = True
        elif ks.get("enabled", False) is not False:
            details["kill_switch_note"] = (f"'enabled': {json.dumps(ks['enabled'])} is off to the bot "
                                           "(a falsy value does not halt)")
    return blocking, details


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, with its article ("an array", "a boolean")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "null"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
