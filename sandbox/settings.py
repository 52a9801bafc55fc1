"""The ``trading-readiness.yaml`` a sandbox writes: its healers (argv lists that repair the
sandbox), the loopback servers its probes use, and short intervals in fast mode."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: Environment prefixes never passed to the simulated processes: the sandbox's .env is their truth,
#: and a real key in the operator's shell must never be sent to a loopback fake (or anywhere).
#: UW's daily quota in fast mode: production's 50 000 scaled by 100 (a daemon cycling every second
#: spends it in days, not in an hour; FP-5.2 accepts up to 10 000 000)
FAST_UW_DAILY_LIMIT = 50000 * 100


def python() -> str:
    return sys.executable


def healer_argv(root: Path, action: str) -> list[str]:
    """The argv a healer runs to repair the sandbox: no shell, absolute interpreter path."""
    return [python(), "-m", "exporter", "--bot-root", str(root), "sandbox", action]


def sandbox_config(root: Path, fast: bool, alpaca_url: str | None = None,
                   uw_url: str | None = None) -> dict[str, Any]:
    """``trading-readiness.yaml`` for a sandbox: its healers, the loopback servers its probes use,
    and short intervals in fast mode.

    The probes are pinned to the loopback servers (``alpaca.base_url``, ``uw.base_url``) so that
    a fault that writes a remote-looking URL into ``.env`` (``paper-live-url``) is judged from the
    text by FP-3.9 while nothing in the sandbox connects to that host."""
    healer = {"timeout_seconds": 30, "cooldown_seconds": 5 if fast else 300, "max_attempts": 3,
              "window_seconds": 300 if fast else 3600}
    cfg: dict[str, Any] = {
        "healers": {
            "FP-1.1": {"run": healer_argv(root, "restart-daemon"), **healer},
            "FP-1.3": {"run": healer_argv(root, "restart-daemon"), **healer},
            "FP-6.1": {"run": healer_argv(root, "restart-bot"), **healer},
        },
        "healer": {"audit_file": "logs/trading_readiness_heals.jsonl"},
    }
    if alpaca_url:
        cfg["alpaca"] = {"base_url": alpaca_url}
    if uw_url:
        cfg["uw"] = {"base_url": uw_url}
    if fast:
        cfg["exporter"] = {"default_interval_seconds": 1}
        # broker answers are shared between checks for cache_seconds: scaled down with the checks
        cfg.setdefault("alpaca", {}).update(cache_seconds=0.5, timeout_seconds=2)
        cfg["healer"].update(verify_timeout_seconds=30, verify_interval_seconds=1)
        # run-log windows scaled to a bot that cycles every second instead of every 60 s
        gate = {"params": {"cycles": 3, "min_candidates": 6}}
        cfg["checks"] = {
            # freshness limits scaled to a daemon that cycles every second instead of every 300 s
            "FP-1.3": {"params": {"open_warn_seconds": 5, "open_error_seconds": 8, "closed_warn_seconds": 30}},
            "FP-1.10": {"params": {"open_warn_seconds": 5, "closed_warn_seconds": 30}},
            "FP-1.5": {"interval_seconds": 2},
            "FP-1.7": {"params": {"cycles": 3}},
            "FP-1.8": {"params": {"cycles": 3, "same_cycle_seconds": 0.5}},
            "FP-1.11": {"interval_seconds": 1, "params": {"grace_seconds": 3}},
            "FP-3.3": gate, "FP-3.4": gate, "FP-3.5": gate, "FP-3.6": gate, "FP-3.7": gate,
            # points whose catalog interval is 60 s, checked as often as the rest
            "FP-4.4": {"interval_seconds": 1},
            "FP-4.9": {"interval_seconds": 1},
            "FP-6.6": {"interval_seconds": 1},
            "FP-6.7": {"interval_seconds": 1},
            # liveness scaled to a bot that cycles every second instead of every 60 s
            "FP-6.3": {"params": {"warn_seconds": 5, "error_seconds": 8}},
        }
    return cfg
