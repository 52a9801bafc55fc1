"""Grafana dashboards generated from the failure-point catalog (`make generate`).

Five dashboards, each with a stable uid, a datasource variable and a bot (instance) variable so
one JSON serves every bot a Prometheus scrapes:

- overview: readiness now and over time, ERROR/WARN/SKIPPED counts, the failing points with
  runbook links;
- failure points: one row per category, one state timeline per implemented failure point;
- trends: cache lag, symbols, buying power and equity, positions against the cap, UW quota,
  check durations and check errors;
- signal funnel: the funnel by stage and the blocked candidates by reason;
- healer: heal attempts by outcome, skips by reason, running and gave-up points.

Panels name only metrics the exporter or the healer really exports: the trend and funnel panels
look their gauges up in the catalog's ``observations`` (a renamed observation fails generation
instead of leaving an empty panel), and ``tests/test_dashboards.py`` runs every query against a
real Prometheus scraping a real exporter and healer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    Panel,
    RowPanel,
    Stat,
    StateTimeline,
    Table,
    TableSortByField,
    Templating,
    Time,
    TimeSeries,
)

from exporter.core.catalog import Catalog, FailurePoint, load
from grafana._panels import (
    FP_STATUS,
    READINESS,
    bar_gauge,
    datasource_variable,
    field_link,
    field_mappings,
    instance_variable,
    layout,
    number,
    target,
    value_mappings,
)
from rules.config import CONFIG

EXPORTER_JOB: str = CONFIG["exporter_job"]
HEALER_JOB: str = CONFIG["healer_job"]
RUNBOOK_BASE: str = CONFIG["runbook_base_url"]

#: Every exporter query carries this selector; ``$instance`` is the bot variable.
SEL = f'job="{EXPORTER_JOB}", instance=~"$instance"'
#: The healer is its own target (default port 9871), so it has its own instance variable.
HSEL = f'job="{HEALER_JOB}", instance=~"$healer"'

TAG = "trading-readiness"
UIDS = {
    "overview": "trading-readiness-overview",
    "failure_points": "trading-readiness-failure-points",
    "trends": "trading-readiness-trends",
    "funnel": "trading-readiness-funnel",
    "healer": "trading-readiness-healer",
}
DASHBOARD_DIR = "grafana/dashboards"
PROVIDER_PATH = "/var/lib/grafana/dashboards/trading-readiness"
DATASOURCE_UID = "trading-readiness-prometheus"
PROMETHEUS_URL = "http://prometheus:9090"


class MissingObservation(LookupError):
    """A panel names a gauge no catalog point declares: it would stay empty forever."""


def observation(cat: Catalog, name: str) -> str:
    """The help text the catalog declares for ``name``; raises if no point observes it."""
    for p in cat:
        for obs in p.observations:
            if obs.get("name") == name:
                return str(obs.get("help") or name)
    raise MissingObservation(f"no failure point in the catalog observes {name!r}")


def described(cat: Catalog, *names: str) -> str:
    return " ".join(f"`{n}`: {observation(cat, n)}" for n in names)


def runbook_url(p: FailurePoint) -> str:
    return f"{RUNBOOK_BASE}#{p.anchor}"


def implemented(points: Iterable[FailurePoint]) -> list[FailurePoint]:
    """Points the exporter evaluates; planned ones export no status, so they get no panel."""
    return [p for p in points if p.detection == "implemented"]


def _links() -> list[dict[str, Any]]:
    return [{"type": "dashboards", "tags": [TAG], "asDropdown": False, "includeVars": True,
             "keepTime": True, "title": "Trading readiness", "icon": "external link", "targetBlank": False}]


def _dashboard(key: str, title: str, description: str, panels: list[Panel], healer: bool = False) -> Dashboard:
    variables = [datasource_variable(),
                 instance_variable("instance", "bot", "trading_exporter_build_info", EXPORTER_JOB)]
    if healer:
        variables.append(instance_variable("healer", "healer", "trading_healer_running", HEALER_JOB))
    return Dashboard(title=title, uid=UIDS[key], description=description, tags=[TAG], timezone="utc",
                     refresh="30s", time=Time("now-6h", "now"), editable=True, links=_links(),
                     templating=Templating(list=variables), panels=number(panels))


def _timeseries(title: str, description: str, targets: list[Any], unit: str = "short",
                stacked: bool = False) -> TimeSeries:
    return TimeSeries(title=title, description=description, targets=targets, unit=unit,
                      legendDisplayMode="table", legendPlacement="bottom", legendCalcs=["lastNotNull", "max"],
                      stacking={"mode": "normal", "group": "A"} if stacked else {}, tooltipMode="multi")


def _status_timeline(title: str, description: str, expr: str, legend: str, mappings: list[dict[str, Any]],
                     links: list[dict[str, Any]] | None = None) -> StateTimeline:
    return StateTimeline(title=title, description=description, targets=[target(expr, legend)],
                         mappings=mappings, links=links or [], showValue="never", legendDisplayMode="hidden",
                         fillOpacity=80, rowHeight=0.85)


# -- overview ---------------------------------------------------------------------------------

def _count_stat(title: str, description: str, value: int, color: str) -> Stat:
    expr = f"sum by (instance) (trading_failure_point_status{{{SEL}}} == bool {value})"
    return Stat(title=title, description=description, targets=[target(expr, "{{instance}}")],
                colorMode="background", graphMode="area", reduceCalc="lastNotNull", textMode="value_and_name",
                thresholds=[{"color": "green", "value": None}, {"color": color, "value": 1}], format="none",
                noValue="no data")


def overview(cat: Catalog) -> Dashboard:
    failing = (f"label_replace((trading_failure_point_status{{{SEL}}} > 0)"
               f" * on (job, instance, fp) group_left (name, healer) trading_failure_point_info{{{SEL}}},"
               f' "anchor", "fp-$1$2", "fp", "FP-([0-9]+)[.]([0-9]+)")')
    table = Table(
        title="Failing points", targets=[target(failing, instant=True, table=True)],
        description="Every failure point in WARN or ERROR now, per bot, with its runbook in "
                    "docs/FAILURE_POINTS.md. Empty means nothing is failing. The exporter's status page "
                    "(/) and /api/failure_points give the reason text.",
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "job": True, "__name__": True},
            "indexByName": {"instance": 0, "fp": 1, "name": 2, "category": 3, "Value": 4, "healer": 5, "anchor": 6},
            "renameByName": {"fp": "point", "healer": "healer configured"}}}],
        overrides=[field_mappings("Value", FP_STATUS, "status"),
                   field_link("anchor", "Runbook for ${__data.fields.point}", f"{RUNBOOK_BASE}#${{__value.raw}}",
                              display_name="runbook")],
        sortBy=[TableSortByField(displayName="status", desc=True)], filterable=True)
    readiness_now = Stat(
        title="Readiness now", targets=[target(f"trading_readiness_status{{{SEL}}}", "{{instance}}")],
        description="The exporter's verdict: READY, DEGRADED (more WARN points than readiness.max_warnings) "
                    "or BLOCKED (any ERROR point). No value means the exporter has not finished its first "
                    "round of checks or is not scraped.",
        colorMode="background", graphMode="none", reduceCalc="lastNotNull", textMode="value_and_name",
        mappings=READINESS, format="none",
                noValue="no data")
    counts = [
        _count_stat("ERROR points", "Failure points in ERROR now: any one blocks trading.", 2, "red"),
        _count_stat("WARN points", "Failure points in WARN now: more than readiness.max_warnings degrade "
                    "readiness.", 1, "yellow"),
        _count_stat("SKIPPED points", "Points not evaluated now: a point they depend on fails, or they apply "
                    "only while the market is open.", -1, "blue"),
    ]
    up = Stat(title="Exporter scraped", targets=[target(f'up{{{SEL}}}', "{{instance}}")],
              description="1 while Prometheus scrapes the exporter. 0 means every panel here is stale.",
              colorMode="background", graphMode="none", reduceCalc="lastNotNull", format="none",
              mappings=value_mappings([(0, "DOWN", "red"), (1, "UP", "green")]))
    age = Stat(title="Newest check age",
               targets=[target(f"time() - max by (instance) "
                               f"(trading_failure_point_last_check_timestamp_seconds{{{SEL}}})", "{{instance}}")],
               description="Seconds since the exporter last completed any check. Growing means the "
                           "scheduler is stuck even though /metrics answers.",
               colorMode="value", graphMode="area", reduceCalc="lastNotNull", format="s",
               thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 120}], noValue="no data")
    timeline = _status_timeline(
        "Readiness over time", "READY/DEGRADED/BLOCKED as the exporter decided it, per bot, over the time range.",
        f"trading_readiness_status{{{SEL}}}", "{{instance}}", READINESS)
    counts_ts = _timeseries(
        "ERROR and WARN points over time", "How many points failed at each moment: spikes show flapping, "
        "plateaus show an outage nobody fixed.",
        [target(f"sum by (instance) (trading_failure_point_status{{{SEL}}} == bool 2)", "ERROR {{instance}}", "A"),
         target(f"sum by (instance) (trading_failure_point_status{{{SEL}}} == bool 1)", "WARN {{instance}}", "B")])
    agree = _status_timeline(
        "Recording rule agrees with the exporter",
        "Compares the recording rule trading:readiness:status (what the alerts use) with the exporter's own "
        "verdict: they must agree (CONTRACT.md). Disagreement means the rules' threshold or selectors are out "
        "of date. No data means the rules from rules/ are not loaded in this Prometheus.",
        f"trading:readiness:status{{{SEL}}} != bool on (job, instance) trading_readiness_status{{{SEL}}}",
        "{{instance}}",
        value_mappings([(0, "agree", "green"), (1, "DISAGREE", "red")]))
    alerts = Table(
        title="Readiness alerts pending and firing",
        description="Prometheus' ALERTS series for this bot's exporter: what Alertmanager is (or will soon be) "
                    "told. Empty when nothing fails or when the rules are not loaded.",
        targets=[target(f'ALERTS{{{SEL}, alertname=~"Trading.*"}}', instant=True, table=True)],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "job": True, "__name__": True, "Value": True},
            "indexByName": {"instance": 0, "alertname": 1, "alertstate": 2, "severity": 3, "fp": 4, "healer": 5}}}],
        filterable=True)
    panels = layout([
        (readiness_now, 6, 5), (counts[0], 4, 5), (counts[1], 4, 5), (counts[2], 4, 5), (up, 3, 5), (age, 3, 5),
        (timeline, 24, 5),
        (table, 24, 10),
        (counts_ts, 12, 8), (agree, 12, 8),
        (alerts, 24, 8),
    ])
    return _dashboard("overview", "Trading readiness: overview",
                      "Will the bot trade? The exporter's readiness now and over time, and what fails.", panels)


# -- failure points -----------------------------------------------------------------------------

def failure_points(cat: Catalog) -> Dashboard:
    items: list[Any] = []
    for category, points in cat.by_category().items():
        points = implemented(points)
        if not points:
            continue  # a category of planned points only has nothing exported to draw
        items.append(RowPanel(title=category))
        for p in points:
            desc = f"{p.detects} Healer: {p.healer or 'none'}. Runbook: {runbook_url(p)}"
            items.append((_status_timeline(
                f"{p.id} {p.name}", desc,
                f'trading_failure_point_status{{{SEL}, fp="{p.id}"}}', "{{instance}}", FP_STATUS,
                links=[{"title": f"Runbook {p.id}", "url": runbook_url(p), "targetBlank": True}]), 8, 4))
    return _dashboard("failure_points", "Trading readiness: failure points",
                      "One state timeline per implemented failure point, grouped by category.", layout(items))


# -- trends -------------------------------------------------------------------------------------

def trends(cat: Catalog) -> Dashboard:
    lag = "trading_uw_cache_last_update_timestamp_seconds"
    panels = layout([
        (_timeseries("UW cache update lag", "Seconds since the UW daemon last wrote the cache (`time() - "
                     f"{lag}`). {described(cat, lag)}",
                     [target(f"time() - {lag}{{{SEL}}}", "{{instance}}")], unit="s"), 12, 8),
        (_timeseries("Symbols in the UW cache", described(cat, "trading_uw_cache_symbols",
                                                          "trading_uw_cache_tickers_with_trades"),
                     [target(f"trading_uw_cache_symbols{{{SEL}}}", "symbols {{instance}}", "A"),
                      target(f"trading_uw_cache_tickers_with_trades{{{SEL}}}", "with trades {{instance}}", "B")]),
         12, 8),
        (_timeseries("Buying power and equity", described(cat, "trading_account_buying_power_usd",
                                                          "trading_account_equity_usd"),
                     [target(f"trading_account_buying_power_usd{{{SEL}}}", "buying power {{instance}}", "A"),
                      target(f"trading_account_equity_usd{{{SEL}}}", "equity {{instance}}", "B")],
                     unit="currencyUSD"), 12, 8),
        (_timeseries("Open positions against the cap", described(cat, "trading_positions_open",
                                                                 "trading_positions_max"),
                     [target(f"trading_positions_open{{{SEL}}}", "open {{instance}}", "A"),
                      target(f"trading_positions_max{{{SEL}}}", "cap {{instance}}", "B")]), 12, 8),
        (_timeseries("UW quota used against the limit", described(cat, "trading_uw_quota_used",
                                                                  "trading_uw_quota_limit"),
                     [target(f"trading_uw_quota_used{{{SEL}}}", "used {{instance}}", "A"),
                      target(f"trading_uw_quota_limit{{{SEL}}}", "limit {{instance}}", "B")]), 12, 8),
        (_timeseries("Check durations (slowest 10)", "How long each check's last run took, the ten slowest, "
                     "and the whole batch. A check close to its timeout is about to turn ERROR.",
                     [target(f"topk(10, trading_failure_point_check_duration_seconds{{{SEL}}})",
                             "{{fp}} {{instance}}", "A"),
                      target(f"trading_exporter_cycle_duration_seconds{{{SEL}}}", "batch {{instance}}", "B")],
                     unit="s"), 12, 8),
        (_timeseries("Check errors (exporter faults)", "Checks that raised or timed out per interval, by "
                     "point: a fault of the exporter or of its access to the bot, not of the bot itself.",
                     [target(f"sum by (instance, fp) (increase(trading_exporter_check_errors_total{{{SEL}}}"
                             "[$__rate_interval]))", "{{fp}} {{instance}}")]), 24, 7),
    ])
    return _dashboard("trends", "Trading readiness: trends",
                      "How the bot's inputs move over time: cache lag, symbols, money, positions, quota, "
                      "and the exporter's own cost.", panels)


# -- funnel -------------------------------------------------------------------------------------

def funnel(cat: Catalog) -> Dashboard:
    stage = described(cat, "trading_signal_funnel")
    reason = described(cat, "trading_blocked_candidates")
    panels = layout([
        (bar_gauge(title="Signal funnel by stage (now)", description=stage,
                  targets=[target(f"sum by (stage) (trading_signal_funnel{{{SEL}}})", "{{stage}}", instant=True)]),
         12, 8),
        (bar_gauge(title="Blocked candidates by reason (now)", description=reason,
                  targets=[target(f"sum by (reason) (trading_blocked_candidates{{{SEL}}})", "{{reason}}",
                                  instant=True)]), 12, 8),
        (_timeseries("Signal funnel over time", stage,
                     [target(f"trading_signal_funnel{{{SEL}}}", "{{stage}} {{instance}}")]), 12, 9),
        (_timeseries("Blocked candidates by reason over time", reason,
                     [target(f"trading_blocked_candidates{{{SEL}}}", "{{reason}} {{instance}}")], stacked=True),
         12, 9),
    ])
    return _dashboard("funnel", "Trading readiness: signal funnel",
                      "Where signals are lost: symbols, clusters, blocked candidates, orders.", panels)


# -- healer -------------------------------------------------------------------------------------

def healer(cat: Catalog) -> Dashboard:
    panels = layout([
        (_timeseries("Heal attempts by outcome", "Actions the healer ran per interval, by point and outcome "
                     "(success, failed, timeout, unverified, dry_run).",
                     [target(f"sum by (fp, outcome) (increase(trading_healer_attempts_total{{{HSEL}}}"
                             "[$__rate_interval]))", "{{fp}} {{outcome}}")], stacked=True), 12, 8),
        (bar_gauge(title="Heal attempts in the time range", description="Attempts over the whole range, by outcome.",
                  targets=[target(f"sum by (outcome) (increase(trading_healer_attempts_total{{{HSEL}}}"
                                  "[$__range]))", "{{outcome}}", instant=True)]), 12, 8),
        (_timeseries("Alerts not healed, by reason", "Deliveries deliberately skipped: duplicates, cooldowns, "
                     "disabled healers, resolved alerts, gave up.",
                     [target(f"sum by (reason) (increase(trading_healer_skipped_total{{{HSEL}}}"
                             "[$__rate_interval]))", "{{reason}}")], stacked=True), 12, 8),
        (_status_timeline("Healer running", "1 while a point's action runs.",
                          f"trading_healer_running{{{HSEL}}}", "{{fp}}",
                          value_mappings([(0, "idle", "transparent"), (1, "running", "blue")])),
         12, 8),
        (_status_timeline("Gave up (a human is needed)", "1 after max_attempts failed within window_seconds, "
                          "until the point's alert resolves.", f"trading_healer_gave_up{{{HSEL}}}", "{{fp}}",
                          value_mappings([(0, "trying", "green"), (1, "gave up", "red")])),
         12, 8),
        (Table(title="Healers configured per point", targets=[target(
            f'trading_failure_point_info{{{SEL}, healer!=""}}', instant=True, table=True)],
            description="Points the exporter reports with a configured healer (trading_failure_point_info).",
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "job": True, "__name__": True, "Value": True},
                "indexByName": {"instance": 0, "fp": 1, "name": 2, "healer": 3, "category": 4}}}]), 12, 8),
    ])
    return _dashboard("healer", "Trading readiness: healer",
                      "What the Alertmanager webhook healer did: attempts, outcomes, skips, give-ups.", panels,
                      healer=True)


def dashboards(cat: Catalog | None = None) -> dict[str, Dashboard]:
    cat = cat or load()
    return {"overview": overview(cat), "failure_points": failure_points(cat), "trends": trends(cat),
            "funnel": funnel(cat), "healer": healer(cat)}


def to_json(d: Dashboard) -> str:
    return json.dumps(d.to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def provisioning() -> dict[str, str]:
    """Grafana provisioning: the Prometheus datasource and a file provider for the dashboards."""
    datasource = (
        "# Generated by `make generate` (grafana/dashboards.py). Grafana reads this from\n"
        "# /etc/grafana/provisioning/datasources/. The uid is what the dashboards' datasource\n"
        "# variable resolves to by default.\n"
        "apiVersion: 1\n"
        "datasources:\n"
        "  - name: Prometheus\n"
        f"    uid: {DATASOURCE_UID}\n"
        "    type: prometheus\n"
        "    access: proxy\n"
        f"    url: {PROMETHEUS_URL}\n"
        "    isDefault: true\n"
        "    editable: false\n"
        "    jsonData:\n"
        "      timeInterval: 15s\n"
    )
    provider = (
        "# Generated by `make generate` (grafana/dashboards.py). Grafana reads this from\n"
        "# /etc/grafana/provisioning/dashboards/; mount grafana/dashboards/ at the path below.\n"
        "apiVersion: 1\n"
        "providers:\n"
        "  - name: trading-readiness\n"
        "    orgId: 1\n"
        "    folder: Trading readiness\n"
        "    folderUid: trading-readiness\n"
        "    type: file\n"
        "    disableDeletion: true\n"
        "    allowUiUpdates: false\n"
        "    updateIntervalSeconds: 30\n"
        "    options:\n"
        f"      path: {PROVIDER_PATH}\n"
        "      foldersFromFilesStructure: false\n"
    )
    return {"grafana/provisioning/datasources/prometheus.yml": datasource,
            "grafana/provisioning/dashboards/trading-readiness.yml": provider}


def artefacts() -> dict[str, str]:
    """{relative path: text} of every dashboard JSON and the provisioning files."""
    out = {f"{DASHBOARD_DIR}/{d.uid}.json": to_json(d) for d in dashboards().values()}
    out.update(provisioning())
    return out
