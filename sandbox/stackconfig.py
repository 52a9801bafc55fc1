"""The Prometheus and Alertmanager configurations a demo or test stack runs with: every bot's
exporter scraped, and each bot's healer alerts routed to that bot's healer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class StackBot(Protocol):
    """A bot of the stack (:class:`sandbox.stack.Bot`) as the configurations name it."""

    name: str
    healer_port: int

    @property
    def instance(self) -> str: ...

    @property
    def healer_url(self) -> str: ...


def route_healers(am: dict[str, Any], bots: Sequence[StackBot]) -> dict[str, Any]:
    """One healer route per bot, matched on the exporter's ``instance``: a healer repairs only the
    bot root it was started for, so bot A's alert must never reach bot B's healer."""
    if len(bots) < 2:
        return am
    receivers = am["receivers"]
    template = next(r for r in receivers if r["name"] == "healer")
    routes = am["route"]["routes"]
    i = next(n for n, r in enumerate(routes) if r.get("receiver") == "healer")
    generic = routes.pop(i)
    receivers.remove(template)
    for offset, bot in enumerate(bots):
        name = f"healer-{bot.name}"
        hook = json.loads(json.dumps(template["webhook_configs"][0]))
        hook["url"] = f"{bot.healer_url}/alertmanager"
        receivers.append({"name": name, "webhook_configs": [hook]})
        route = json.loads(json.dumps(generic))
        route["receiver"] = name
        route["matchers"] = [*generic.get("matchers", []), f'instance="{bot.instance}"']
        routes.insert(i + offset, route)
    return am


def prometheus_config(bots: Sequence[StackBot], alertmanager_ports: Sequence[int], rules_dir: Path,
                      scrape: str, evaluation: str) -> dict[str, Any]:
    """Prometheus scraping every bot's exporter (job trading-readiness) and healer (trading-healer)."""
    return {
        "global": {"scrape_interval": scrape, "evaluation_interval": evaluation,
                   "scrape_timeout": _timeout(scrape)},
        "rule_files": [str(rules_dir / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{p}" for p in alertmanager_ports]}]}]},
        "scrape_configs": [
            {"job_name": "trading-readiness",
             "static_configs": [{"targets": [b.instance for b in bots], "labels": {}}]},
            {"job_name": "trading-healer",
             "static_configs": [{"targets": [f"127.0.0.1:{b.healer_port}" for b in bots]}]},
        ],
    }


def _timeout(scrape: str) -> str:
    ms = int(max(0.5, min(10.0, seconds(scrape) * 0.8)) * 1000)
    return f"{ms}ms"  # Prometheus durations take whole units only


def seconds(text: str) -> float:
    """``"1s"``/``"500ms"``/``"1m"`` -> seconds (the few forms this module writes)."""
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    raise ValueError(f"not a duration: {text!r}")
