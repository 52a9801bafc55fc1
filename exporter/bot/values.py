"""Helpers shared by checks of several categories."""

from __future__ import annotations

import math
from typing import Any

from . import market
from .context import Context
from .readers import FileProblem, read_json


def number(value: Any) -> float | None:
    """A finite float from an int, float or numeric string (Alpaca sends numbers as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def age_text(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    # 1e308 s from a corrupt timestamp: three significant digits, not a 300-digit line
    return f"{s / 86400:.1f} days" if s < 86400 * 100_000 else f"{s / 86400:.3g} days"


def load_state_json(ctx: Context, name: str, retries: int = 3, delay: float = 0.2) -> Any:
    """Parse a bot state file (torn reads retried), re-parsed only when the file changed."""
    path = ctx.path(name)
    return ctx.files.get(path, lambda p: read_json(p, retries, delay))


def env_limit(ctx: Context, name: str, default: float) -> float:
    """A numeric limit from the bot's environment; raises FileProblem-like ValueError when invalid."""
    return ctx.env.number(name, default)


__all__ = ["FileProblem", "age_text", "env_limit", "load_state_json", "number"]


def record_time(rec: dict[str, Any], *keys: str) -> float | None:
    """Epoch seconds from the first of ``keys`` present: a number, or an ISO string (UTC)."""
    for k in keys or ("_ts", "ts", "timestamp"):
        v = rec.get(k)
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            f = float(v)
            if math.isfinite(f):
                return f
            continue
        dt = market.parse_ts(v)
        if dt is not None:
            return dt.timestamp()
    return None
