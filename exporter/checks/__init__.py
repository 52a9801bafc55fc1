"""Checks, one module per catalog category: judgement only.

A check reads the bot through ``exporter.bot`` and reports through ``exporter.core``; it never
imports another check (shared facts live in the bot layer).
"""

from ..core.engine import REGISTRY, CheckFn
from . import broker, data, gates, scoring, state, system  # noqa: F401  (importing registers every check)


def registry() -> dict[str, CheckFn]:
    """Every registered check by failure-point id."""
    return dict(REGISTRY)
