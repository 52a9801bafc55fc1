"""The example Alertmanager configuration, generated from the catalog: pages and tickets by
severity, each healable point's alerts to the healer, and an inhibition per dependency so the
root cause pages alone."""

from __future__ import annotations

import re
from typing import Any

from exporter.core.catalog import Catalog, load

from .config import HEADER, config, dump


def alertmanager_config(cat: Catalog | None = None, **overrides: Any) -> dict[str, Any]:
    """Routing: critical pages, warning tickets, healable points also reach the healer."""
    cfg = config(**overrides)
    cat = cat or load()
    am = cfg["alertmanager"]
    # A bot is its target, or its bot and env labels when several bots share one instance (a
    # label a target lacks is empty on both sides, so equal); a configured group_by names the
    # bot's labels instead. One bot's BLOCKED never silences another bot's DEGRADED.
    bot = list(cfg["group_by"] or ["job", "instance", cfg["bot_label"], cfg["env_label"]])
    inhibit: list[dict[str, Any]] = [{
        "source_matchers": ['alertname="TradingBlocked"'],
        "target_matchers": ['alertname="TradingDegraded"'],
        "equal": list(bot),
    }]
    # The root cause pages; the points that depend on it would only repeat it.
    for p in cat:
        dependents = cat.dependents(p.id)
        if dependents:
            inhibit.append({
                "source_matchers": ['alertname="TradingFailurePoint"', f'fp="{p.id}"', 'severity="critical"'],
                "target_matchers": ['alertname="TradingFailurePoint"',
                                    "fp=~\"" + "|".join(re.escape(d) for d in dependents) + '"'],
                "equal": list(bot),
            })

    def webhook(name: str, url: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "webhook_configs": [{"url": url, "send_resolved": True, **extra}]}

    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "ticket",
            "group_by": ["alertname", "fp", *bot],
            "group_wait": am["group_wait"],
            "group_interval": am["group_interval"],
            "repeat_interval": am["repeat_interval"],
            "routes": [
                # The heartbeat repeats often: its receiver alarms when it stops arriving.
                {"receiver": "heartbeat", "matchers": ['alertname="Watchdog"'],
                 "group_wait": "0s", "group_interval": am["heartbeat_interval"],
                 "repeat_interval": am["heartbeat_interval"]},
                # continue: the healer acts, and the humans still hear about it below.
                {"receiver": "healer", "matchers": ['alertname="TradingFailurePoint"', 'healer=~".+"'],
                 "continue": True, "group_wait": am["healer_group_wait"],
                 "group_interval": am["healer_group_interval"], "repeat_interval": am["healer_repeat_interval"]},
                {"receiver": "pager", "matchers": ['severity="critical"'],
                 "repeat_interval": am["pager_repeat_interval"]},
                {"receiver": "ticket", "matchers": ['severity="warning"']},
                # info is not routed to people.
                {"receiver": "null", "matchers": ['severity="info"']},
            ],
        },
        "inhibit_rules": inhibit,
        "receivers": [
            webhook("pager", am["pager_url"]),
            webhook("ticket", am["ticket_url"]),
            webhook("heartbeat", am["heartbeat_url"], send_resolved=False),
            webhook("healer", am["healer_url"], max_alerts=0, http_config={
                "authorization": {"type": "Bearer", "credentials_file": am["healer_token_file"]}}),
            {"name": "null"},
        ],
    }


def render_alertmanager(cat: Catalog | None = None, **overrides: Any) -> str:
    return HEADER + dump(alertmanager_config(cat, **overrides))
