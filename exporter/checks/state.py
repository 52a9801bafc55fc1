"""State & Configuration (FP-5.x): environment, configuration values, state files."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..bot.context import Context
from ..bot.readers import FileProblem, read_json
from ..core.engine import check
from ..core.model import Outcome


@check("FP-5.1")
def required_env(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Without its credentials the bot cannot reach the broker or UW. Presence only: a value is
    never read into a message, a detail or a metric."""
    env = ctx.env
    missing: list[str] = []
    found: dict[str, str] = {}
    for entry in p["required"]:
        names = [n.strip() for n in str(entry).split("|") if n.strip()]
        name = env.which(*names)
        if name is None:
            missing.append(" or ".join(names))
        else:
            found[name] = env.source.get(name, "")
    details: dict[str, Any] = {"present": found, "missing": missing}
    if env.dotenv_error:
        details["dotenv_error"] = env.dotenv_error
    out: Outcome
    if missing:
        where = f" ({env.dotenv_error})" if env.dotenv_error else " in the environment or .env"
        out = Outcome.error(f"{len(missing)} required variable(s) not set{where}: " + "; ".join(missing), **details)
    else:
        out = Outcome.ok(f"all {len(found)} required variables are set ({', '.join(found)})", **details)
    return out.observe("trading_env_missing_variables", len(missing))


def _parse_value(raw: str, kind: str) -> float | None:
    try:
        v = float(raw) if kind == "float" else int(raw)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@check("FP-5.2")
def config_values(ctx: Context, p: dict[str, Any]) -> Outcome:
    """A limit that does not parse or is absurd makes the bot crash at start, or trade with no cap
    (a cap of 0 or 10000 positions) -- both silent until it matters."""
    env = ctx.env
    errors: list[str] = []
    values: dict[str, Any] = {}
    defaults: list[str] = []
    for name, spec in p["ranges"].items():
        try:
            lo, hi, kind = float(spec[0]), float(spec[1]), str(spec[2])
        except (TypeError, ValueError, IndexError):
            errors.append(f"checks.FP-5.2.params.ranges.{name} must be [min, max, int|float]")
            continue
        raw = env.values.get(name)
        if raw is None:
            defaults.append(name)
            continue
        v = _parse_value(raw, kind)
        shown = raw if len(raw) <= 24 else raw[:21] + "..."
        if v is None:
            errors.append(f"{name}={shown!r} is not {'an integer' if kind == 'int' else 'a number'}")
        elif not lo <= v <= hi:
            errors.append(f"{name}={shown} is outside {lo:g}..{hi:g}")
        else:
            values[name] = v
    mode = env.values.get("TRADING_MODE")
    if mode is not None and mode.upper() not in [str(m).upper() for m in p["trading_modes"]]:
        errors.append(f"TRADING_MODE={mode!r} is not one of {', '.join(p['trading_modes'])}")
    warnings: list[str] = []
    cap, per_cycle = values.get("MAX_CONCURRENT_POSITIONS"), values.get("MAX_NEW_POSITIONS_PER_CYCLE")
    if cap is not None and per_cycle is not None and per_cycle > cap:
        warnings.append(f"MAX_NEW_POSITIONS_PER_CYCLE={per_cycle:g} exceeds MAX_CONCURRENT_POSITIONS={cap:g}")
    details: dict[str, Any] = {"values": values, "unset_use_bot_default": defaults, "errors": errors,
                               "warnings": warnings}
    unset = f"; unset (bot defaults): {', '.join(defaults)}" if defaults else ""
    out = (Outcome.error("invalid configuration: " + "; ".join(errors), **details) if errors
           else Outcome.warn("; ".join(warnings), **details) if warnings
           else Outcome.ok(f"{len(values)} limits valid{unset}", **details))
    return out.observe("trading_config_invalid_values", len(errors))


@check("FP-5.3")
def state_files_parse(ctx: Context, p: dict[str, Any]) -> Outcome:
    """A corrupt state file makes the bot crash at start or silently reset what it learned; the
    bot rewrites some non-atomically, so a torn read is retried before it counts."""
    corrupt: list[str] = []
    corrupt_files: list[str] = []
    checked: list[str] = []
    absent: list[str] = []
    retries, delay = int(p["retries"]), float(p["retry_delay_seconds"])

    def parses(f: Path) -> bool:
        read_json(f, retries, delay)  # the content is other points' business; keep nothing
        return True

    for rel in p["files"]:
        path = ctx.config.resolve(str(rel))
        try:
            ctx.files.get(path, parses, kind="FP-5.3")
        except FileProblem as exc:
            if exc.kind == "missing":
                absent.append(str(rel))  # missing files are FP-5.4's
                continue
            corrupt.append(f"{rel}: {exc}")
            corrupt_files.append(str(rel))
            continue
        checked.append(str(rel))
    # a file whose own point is ERROR when it is corrupt (FP-2.1 weights, ...) pages there; here
    # it is named as a warning, so one torn file is one critical, not two
    judged = set(ctx.config.enabled_ids())
    owners = {str(rel): str(fp) for rel, fp in (p.get("owners") or {}).items() if str(fp) in judged}
    paged = sorted({owners[rel] for rel in corrupt_files if rel in owners})
    # a file the bot reads as empty when it does not parse (the freezes file: no freeze) stops
    # nothing: it is a warning wherever it is named
    as_empty = {str(rel): str(what) for rel, what in (p.get("read_as_empty") or {}).items()}
    empty_named = [f"the bot reads {rel} as {as_empty[rel]}" for rel in corrupt_files
                   if rel in as_empty and rel not in owners]
    details = {"parsed": checked, "corrupt": corrupt, "absent": absent, "also_error_in": paged}
    if corrupt:
        text = f"{len(corrupt)} state file(s) corrupt: " + "; ".join(corrupt)
        notes = ([f"each is ERROR in its own point: {', '.join(paged)}"] if paged else []) + empty_named
        if all(rel in owners or rel in as_empty for rel in corrupt_files):
            out = Outcome.warn(f"{text} ({'; '.join(notes)})", **details)
        else:
            out = Outcome.error(text, **details)
    else:
        # an absent file is no corruption; its own point (FP-2.1, FP-3.1, ...) judges the absence
        out = Outcome.ok(f"{len(checked)} state files parse" + (f" ({len(absent)} absent: {', '.join(absent)})"
                                                               if absent else ""), **details)
    return out.observe("trading_state_files_corrupt", len(corrupt))


@check("FP-5.4")
def required_files(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Without its scripts, .env or cache the bot cannot start or trades blind; without writable
    state/log directories it crashes on its first write. (The weights file is not required: the
    bot trades on built-in default weights until its learner first saves it.)"""
    missing: list[str] = []
    unwritable: list[str] = []
    for rel in p["files"]:
        path = ctx.config.resolve(str(rel))
        if not path.is_file():
            missing.append(str(rel) + (" (not a file)" if path.exists() else ""))
        elif not os.access(path, os.R_OK):
            missing.append(f"{rel} (not readable)")
    for rel in p["writable_dirs"]:
        path = ctx.config.resolve(str(rel))
        if not path.is_dir():
            missing.append(f"{rel}/ (directory)")
        elif not os.access(path, os.W_OK | os.X_OK):
            unwritable.append(f"{rel}/")
    details = {"missing": missing, "unwritable": unwritable, "bot_root": str(ctx.root)}
    problems = missing + [f"{d} not writable" for d in unwritable]
    out = (Outcome.error(f"required files missing in {ctx.root}: " + ", ".join(problems), **details) if problems
           else Outcome.ok(f"{len(p['files'])} required files and {len(p['writable_dirs'])} directories present",
                           **details))
    return out.observe("trading_required_files_missing", len(problems))
