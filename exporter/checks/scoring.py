"""Scoring & Evaluation (FP-2.x): adaptive weights, scores, thresholds, enrichment, regime."""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..engine import check
from ..model import Outcome
from ..readers import FileProblem
from .common import load_state_json, number

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


@check("FP-2.1")
def weights_initialised(ctx: Context, p: dict[str, Any]) -> Outcome:
    try:
        data = load_state_json(ctx, "weights", int(p["retries"]), float(p["retry_delay_seconds"]))
    except FileProblem as exc:
        return Outcome.error(str(exc), problem=exc.kind).observe("trading_weights_components", 0)
    entry = data.get("entry_weights") if isinstance(data, dict) else None
    problems, valid = band_problems(entry.get("weight_bands") if isinstance(entry, dict) else None)
    details = {"valid_components": valid, "expected_components": len(ENTRY_COMPONENTS)}
    if problems:
        shown = "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
        out = Outcome.error(f"weights not initialised: {shown}", problems=problems[:21], **details)
    else:
        out = Outcome.ok(f"all {len(ENTRY_COMPONENTS)} entry weight bands valid", **details)
    return out.observe("trading_weights_components", valid)
