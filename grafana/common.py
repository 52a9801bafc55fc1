"""What every dashboard shares: the config's selectors (``Scope``), the variables that pick the
bots, the links between the dashboards, and the panel kinds they all use.

A bot is identified by the target labels the operator sets (``bot``, ``env``, ...; see
rules/labels.py), so every dashboard has ``env`` and ``bot`` variables and every query filters by
them; the per-bot dashboards also pick the exporter's ``instance`` (and the healer's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grafanalib.core import Dashboard, Panel, StateTimeline, Templating, Time, TimeSeries

from grafana._panels import DATASOURCE, datasource_variable, instance_variable, label_variable, number, target
from rules.config import CONFIG

TAG = "trading-readiness"
UIDS = {
    "overview": "trading-readiness-overview",
    "failure_points": "trading-readiness-failure-points",
    "trends": "trading-readiness-trends",
    "funnel": "trading-readiness-funnel",
    "healer": "trading-readiness-healer",
    "fleet": "trading-readiness-fleet",
}
#: What every dashboard declares: current Grafana (11.x) loads it without migrating it. grafanalib
#: 0.7.1 writes 12, which makes Grafana rewrite every panel on load (and save a different JSON).
SCHEMA_VERSION = 39


@dataclass(frozen=True)
class Scope:
    """The config's selectors as the dashboards use them (the mixin's jobs and bot labels)."""

    cfg: dict[str, Any]

    @property
    def bot(self) -> str:
        return str(self.cfg["bot_label"])

    @property
    def env(self) -> str:
        return str(self.cfg["env_label"])

    @property
    def bots(self) -> str:
        """The matchers of the ``env`` and ``bot`` variables (``.*`` also matches a missing label)."""
        return f'{self.env}=~"$env", {self.bot}=~"$bot"'

    @property
    def sel(self) -> str:
        """Every exporter query of a per-bot dashboard carries this selector."""
        return f'job="{self.cfg["exporter_job"]}", {self.bots}, instance=~"$instance"'

    @property
    def hsel(self) -> str:
        """The healer is its own target (default port 9871), so it has its own instance variable."""
        return f'job="{self.cfg["healer_job"]}", {self.bots}, instance=~"$healer"'

    @property
    def runbook_base(self) -> str:
        return f"{self.cfg['runbook_base_url'].rstrip('/')}/FAILURE_POINTS.md"

    def legend(self, prefix: str = "") -> str:
        """A series legend naming the bot and its instance (a target without a bot label shows its instance)."""
        return f"{prefix}{{{{{self.bot}}}}} {{{{instance}}}}"


DEFAULT = Scope(CONFIG)


def links() -> list[dict[str, Any]]:
    return [{"type": "dashboards", "tags": [TAG], "asDropdown": False, "includeVars": True,
             "keepTime": True, "title": "Trading readiness", "icon": "external link", "targetBlank": False}]


def bot_variables(s: Scope) -> list[Any]:
    """datasource, env and bot: the bot picker offers the bots of the chosen environments."""
    job = s.cfg["exporter_job"]
    return [datasource_variable(),
            label_variable("env", "env", f'trading_exporter_build_info{{job="{job}"}}', s.env),
            label_variable("bot", "bot", f'trading_exporter_build_info{{job="{job}", {s.env}=~"$env"}}', s.bot)]


def dashboard(s: Scope, key: str, title: str, description: str, panels: list[Panel],
              healer: bool = False, per_instance: bool = True) -> Dashboard:
    variables = bot_variables(s)
    if per_instance:
        variables.append(instance_variable("instance", "instance", "trading_exporter_build_info",
                                           s.cfg["exporter_job"], s.bots))
    if healer:
        variables.append(instance_variable("healer", "healer", "trading_healer_running", s.cfg["healer_job"],
                                           s.bots))
    return Dashboard(title=title, uid=UIDS[key], description=description, tags=[TAG], timezone="utc",
                     refresh="30s", time=Time("now-6h", "now"), editable=True, links=links(),
                     templating=Templating(list=variables), panels=number(panels))


def timeseries(title: str, description: str, targets: list[Any], unit: str = "short",
               stacked: bool = False) -> TimeSeries:
    return TimeSeries(title=title, description=description, targets=targets, unit=unit,
                      legendDisplayMode="table", legendPlacement="bottom", legendCalcs=["lastNotNull", "max"],
                      stacking={"mode": "normal", "group": "A"} if stacked else {}, tooltipMode="multi")


def status_timeline(title: str, description: str, expr: str, legend: str, mappings: list[dict[str, Any]],
                    links: list[dict[str, Any]] | None = None) -> StateTimeline:
    return StateTimeline(title=title, description=description, targets=[target(expr, legend)],
                         mappings=mappings, links=links or [], showValue="never", legendDisplayMode="hidden",
                         fillOpacity=80, rowHeight=0.85)


def to_json_data(d: Dashboard) -> dict[str, Any]:
    """The dashboard's JSON, declaring the schema version it is written in."""
    data: dict[str, Any] = d.to_json_data()
    data["schemaVersion"] = SCHEMA_VERSION
    return data


__all__ = ["DATASOURCE", "DEFAULT", "SCHEMA_VERSION", "TAG", "UIDS", "Scope", "bot_variables", "dashboard",
           "links", "status_timeline", "timeseries", "to_json_data"]
