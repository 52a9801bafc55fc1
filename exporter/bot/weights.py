"""The learner's entry-weight components and their bands (``state/signal_weights.json``)."""

from __future__ import annotations

from typing import Any

from .values import number

ENTRY_COMPONENTS = (
    "options_flow", "dark_pool", "insider", "iv_term_skew", "smile_slope", "whale_persistence",
    "event_alignment", "temporal_motif", "toxicity_penalty", "regime_modifier", "congress",
    "shorts_squeeze", "institutional", "market_tide", "calendar_catalyst", "etf_flow", "greeks_gamma",
    "ftd_pressure", "iv_rank", "oi_change", "squeeze_score",
)


def band_problems(bands: Any) -> tuple[list[str], int]:
    """Problems with the entry weight bands and how many components are valid."""
    if not isinstance(bands, dict):
        return ["entry_weights.weight_bands is missing"], 0
    problems: list[str] = []
    valid = 0
    for comp in ENTRY_COMPONENTS:
        band = bands.get(comp)
        if not isinstance(band, dict):
            problems.append(f"{comp} missing")
            continue
        cur, lo, hi = number(band.get("current")), number(band.get("min_weight")), number(band.get("max_weight"))
        if cur is None:
            problems.append(f"{comp}.current is not a finite number ({band.get('current')!r})")
        elif lo is None or hi is None:
            problems.append(f"{comp} has no valid min_weight/max_weight")
        elif not lo <= cur <= hi:
            problems.append(f"{comp}.current {cur:g} outside [{lo:g}, {hi:g}]")
        else:
            valid += 1
    return problems, valid
