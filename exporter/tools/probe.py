"""`trading-readiness probe`: trace one synthetic signal through the bot's decision path.

Checks can all be green while no order would ever go out (a threshold nobody can reach, a gate
that refuses everything). The probe answers the question directly: a signal with a known score
goes cache read → cluster → score → threshold → gates → execution, and each stage says passed
or blocked and why. Nothing is written into the bot root and no order is ever submitted.

Exit codes: 0 it would execute, 2 blocked (stage and reason printed), 3 could not evaluate
(bad config, adapter that cannot load, broker unreachable).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..bot.context import Context
from ..core.config import Config, ConfigError
from ..core.config import load as load_config
from ..core.engine import redacted
from ..core.model import iso_utc
from .pipeline import STAGES, AdapterError, ProbeSignal, StageResult, load_adapter, synthetic_flow

#: the known score of the synthetic signal when ``probe.score`` is not set: above stock-bot's
#: usual entry thresholds (2.7 base, MIN_EXEC_SCORE 1.6-3.2) plus a typical self-healing raise
DEFAULT_SCORE = 4.0

EXIT_EXECUTE, EXIT_BLOCKED, EXIT_ERROR = 0, 2, 3


@dataclass
class ProbeReport:
    """The outcome of one probe: every stage reached, and the verdict."""

    symbol: str
    score: float
    notional: float
    adapter: str
    stages: list[StageResult] = field(default_factory=list)
    timestamp: float = 0.0
    error: str | None = None

    @property
    def outcome(self) -> str:
        """``execute``, ``blocked`` or ``error``."""
        if self.error is not None or any(s.status == "error" for s in self.stages):
            return "error"
        if any(s.status == "blocked" for s in self.stages):
            return "blocked"
        return "execute" if len(self.stages) == len(STAGES) else "error"

    @property
    def exit_code(self) -> int:
        return {"execute": EXIT_EXECUTE, "blocked": EXIT_BLOCKED}.get(self.outcome, EXIT_ERROR)

    @property
    def stopped_at(self) -> StageResult | None:
        return next((s for s in self.stages if s.status != "passed"), None)

    def summary(self) -> str:
        stop = self.stopped_at
        if self.error is not None:
            return f"probe could not run: {self.error}"
        if stop is None:
            return f"would execute: {self.symbol} signal (score {self.score:g}) passes every stage; order not submitted"
        verb = "blocked" if stop.status == "blocked" else "could not evaluate"
        return f"{verb} at {stop.stage}: {stop.reason}"

    def to_json(self) -> dict[str, Any]:
        reached = {s.stage for s in self.stages}
        stages = [s.to_json() for s in self.stages] + [
            {"stage": name, "status": "not_reached", "reason": "", "details": {}}
            for name in STAGES if name not in reached]
        stop = self.stopped_at
        return {"outcome": self.outcome, "exit_code": self.exit_code, "summary": self.summary(),
                "would_execute": self.outcome == "execute", "symbol": self.symbol, "score": self.score,
                "notional": self.notional, "adapter": self.adapter, "timestamp": iso_utc(self.timestamp),
                "blocked_stage": stop.stage if stop is not None else None,
                "blocked_reason": stop.reason if stop is not None else None,
                "order_submitted": False, "stages": stages, "error": self.error}

    def text(self) -> str:
        marks = {"passed": "PASS", "blocked": "BLOCK", "error": "ERROR", "not_reached": "-"}
        lines = [f"probe: {self.symbol} synthetic signal, score {self.score:g}, notional ${self.notional:,.2f} "
                 f"({self.adapter})"]
        for s in self.to_json()["stages"]:
            reason = s["reason"] or "not reached"
            lines.append(f"  {marks[s['status']]:<6} {s['stage']:<11} {reason}")
        lines.append(self.summary())
        return "\n".join(lines)


def run_probe(ctx: Context) -> ProbeReport:
    """Trace the synthetic signal with the configured adapter; never raises for a stage's fault."""
    pcfg = ctx.config["probe"]
    score = float(pcfg["score"]) if pcfg["score"] is not None else DEFAULT_SCORE
    symbol = str(pcfg["symbol"]).strip().upper()
    report = ProbeReport(symbol, score, float(pcfg["notional"]), pcfg["adapter"] or "stock-bot (built-in)",
                         timestamp=ctx.now())
    try:
        adapter = load_adapter(pcfg["adapter"])
    except AdapterError as exc:
        report.error = ctx.redact(str(exc))
        return report
    signal = ProbeSignal(symbol, score, float(pcfg["notional"]), created_at=ctx.now(),
                         flow_trades=synthetic_flow(symbol, ctx.now()))
    for name in STAGES:
        try:
            result = getattr(adapter, name)(ctx, signal)
        except Exception as exc:  # an adapter's bug is a finding of the probe, not a crash
            result = StageResult.error(name, f"stage raised {type(exc).__name__}: {exc}")
        if not isinstance(result, StageResult):
            result = StageResult.error(name, f"stage returned {type(result).__name__}, not a StageResult")
        result.reason = ctx.redact(result.reason)
        result.details = redacted(result.details, ctx.redact)
        report.stages.append(result)
        if result.status != "passed":
            break
    return report


def _validate(cfg: Config) -> None:
    p = cfg["probe"]
    problems = []
    if not str(p["symbol"]).strip():
        problems.append(f"key 'probe.symbol' in {cfg.source} must not be empty")
    if not float(p["notional"]) > 0:
        problems.append(f"key 'probe.notional' in {cfg.source} must be positive")
    if problems:
        raise ConfigError(problems)


def probe_for(cfg: Config, environ: dict[str, str] | None = None) -> ProbeReport:
    _validate(cfg)
    return run_probe(Context(cfg, environ=environ, clock=time.time))


def cli_probe(args: argparse.Namespace) -> int:
    """``trading-readiness probe [--json]``."""
    cfg = load_config(args.config, args.bot_root)
    report = probe_for(cfg)
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text())
    return report.exit_code
