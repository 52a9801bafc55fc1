"""Where stock-bot keeps its files, as the exporter reads them by default (``paths`` and
``processes`` in ``exporter/core/config.py``): the one statement of the bot's layout, so the
simulated processes and the fixtures write exactly where the checks look."""

from __future__ import annotations

from pathlib import Path

from exporter.core.config import DEFAULTS


def path(name: str) -> Path:
    """The default location of ``paths.<name>``, relative to the bot root."""
    return Path(DEFAULTS["paths"][name])


UW_CACHE = path("uw_cache")
WEIGHTS = path("weights")
GOVERNOR_FREEZES = path("governor_freezes")
SAFE_MODE_FLAG = path("safe_mode_flag")
KILL_SWITCH = path("kill_switch")
HEARTBEAT = path("heartbeat")
RUN_LOG = path("run_log")
BLOCKED_TRADES = path("blocked_trades")
DAEMON_LOG = path("daemon_log")
QUOTA_LOG = path("quota_log")
UW_USAGE_STATE = path("uw_usage_state")
UW_ERRORS_LOG = path("uw_errors_log")
UW_CACHE_LOG = path("uw_cache_log")
ORDERS_LOG = path("orders_log")
EXECUTION_FAILURES = path("execution_failures")
SUBMIT_ORDER_LOG = path("submit_order_log")
SUPERVISOR_HEALTH = path("supervisor_health")
SELF_HEALING_THRESHOLD = path("self_healing_threshold")
THRESHOLDS = path("thresholds")
READINESS_LOG = path("readiness_log")
DAEMON_LOCK = Path(DEFAULTS["processes"]["uw_daemon"]["lock_file"])
HEAL_AUDIT = Path(DEFAULTS["healer"]["audit_file"])
