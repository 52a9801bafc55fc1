"""Grafana dashboards generated from the failure-point catalog (`make generate`).

Six dashboards, each with a stable uid, a datasource variable and ``env`` and ``bot`` variables
(the bot's target labels; the per-bot dashboards also pick the ``instance``), so one JSON serves
every bot a Prometheus scrapes, and a schemaVersion current Grafana loads without migration:

- overview: readiness now and over time, ERROR/WARN/SKIPPED counts, the failing points with
  runbook links;
- failure points: one row per category, one state timeline per implemented failure point;
- trends: cache lag, symbols, buying power and equity, positions against the cap, UW quota,
  check durations and check errors;
- signal funnel: the funnel by stage and the blocked candidates by reason;
- healer: heal attempts by outcome, skips by reason, running and gave-up points;
- fleet (grafana/fleet.py): one row per bot, worst first.

The selectors, the bot labels and the runbook URL come from the mixin config (rules/config.py).

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
from grafanalib.core import Dashboard, RowPanel, Stat, Table, TableSortByField

from exporter.core.catalog import Catalog, FailurePoint, load
from grafana._panels import (
    FP_STATUS,
    READINESS,
    bar_gauge,
    field_link,
    field_mappings,
    layout,
    target,
    value_mappings,
)
from grafana.common import DEFAULT, TAG, UIDS, Scope, dashboard, status_timeline, timeseries, to_json_data
from grafana.fleet import fleet
from rules.labels import on_bot, on_point, per_bot

__all__ = ["DASHBOARD_DIR", "PROVIDER_PATH", "TAG", "UIDS", "MissingObservation", "artefacts", "dashboards",
           "observation", "to_json"]

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


def runbook_url(s: Scope, p: FailurePoint) -> str:
    return f"{s.runbook_base}#{p.anchor}"


def implemented(points: Iterable[FailurePoint]) -> list[FailurePoint]:
    """Points the exporter evaluates; planned ones export no status, so they get no panel."""
    return [p for p in points if p.detection == "implemented"]


# -- overview ---------------------------------------------------------------------------------

def _count_stat(s: Scope, title: str, description: str, value: int, color: str) -> Stat:
    expr = f"sum {per_bot(s.cfg)} (trading_failure_point_status{{{s.sel}}} == bool {value})"
    return Stat(title=title, description=description, targets=[target(expr, s.legend())],
                colorMode="background", graphMode="area", reduceCalc="lastNotNull", textMode="value_and_name",
                thresholds=[{"color": "green", "value": None}, {"color": color, "value": 1}], format="none",
                noValue="no data")


def overview(cat: Catalog, s: Scope) -> Dashboard:
    failing = (f"label_replace((trading_failure_point_status{{{s.sel}}} > 0)"
               f" * {on_point(s.cfg)} group_left (name, healer) trading_failure_point_info{{{s.sel}}},"
               f' "anchor", "fp-$1$2", "fp", "FP-([0-9]+)[.]([0-9]+)")')
    table = Table(
        title="Failing points", targets=[target(failing, instant=True, table=True)],
        description="Every failure point in WARN or ERROR now, per bot, with its runbook in "
                    "docs/FAILURE_POINTS.md. Empty means nothing is failing. The exporter's status page "
                    "(/) and /api/failure_points give the reason text.",
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "job": True, "__name__": True},
            "indexByName": {s.bot: 0, s.env: 1, "instance": 2, "fp": 3, "name": 4, "category": 5, "Value": 6,
                            "healer": 7, "anchor": 8},
            "renameByName": {"fp": "point", "healer": "healer configured"}}}],
        overrides=[field_mappings("Value", FP_STATUS, "status"),
                   field_link("anchor", "Runbook for ${__data.fields.point}", f"{s.runbook_base}#${{__value.raw}}",
                              display_name="runbook")],
        sortBy=[TableSortByField(displayName="status", desc=True)], filterable=True)
    readiness_now = Stat(
        title="Readiness now", targets=[target(f"trading_readiness_status{{{s.sel}}}", s.legend())],
        description="The exporter's verdict: READY, DEGRADED (more WARN points than readiness.max_warnings) "
                    "or BLOCKED (any ERROR point). No value means the exporter has not finished its first "
                    "round of checks or is not scraped.",
        colorMode="background", graphMode="none", reduceCalc="lastNotNull", textMode="value_and_name",
        mappings=READINESS, format="none",
                noValue="no data")
    counts = [
        _count_stat(s, "ERROR points", "Failure points in ERROR now: any one blocks trading.", 2, "red"),
        _count_stat(s, "WARN points", "Failure points in WARN now: more than readiness.max_warnings degrade "
                    "readiness.", 1, "yellow"),
        _count_stat(s, "SKIPPED points", "Points not evaluated now: a point they depend on fails, or they apply "
                    "only while the market is open.", -1, "blue"),
    ]
    up = Stat(title="Exporter scraped", targets=[target(f'up{{{s.sel}}}', s.legend())],
              description="1 while Prometheus scrapes the exporter. 0 means every panel here is stale.",
              colorMode="background", graphMode="none", reduceCalc="lastNotNull", format="none",
              mappings=value_mappings([(0, "DOWN", "red"), (1, "UP", "green")]))
    age = Stat(title="Newest check age",
               targets=[target(f"time() - max {per_bot(s.cfg)} "
                               f"(trading_failure_point_last_check_timestamp_seconds{{{s.sel}}})", s.legend())],
               description="Seconds since the exporter last completed any check. Growing means the "
                           "scheduler is stuck even though /metrics answers.",
               colorMode="value", graphMode="area", reduceCalc="lastNotNull", format="s",
               thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 120}], noValue="no data")
    timeline = status_timeline(
        "Readiness over time", "READY/DEGRADED/BLOCKED as the exporter decided it, per bot, over the time range.",
        f"trading_readiness_status{{{s.sel}}}", s.legend(), READINESS)
    counts_ts = timeseries(
        "ERROR and WARN points over time", "How many points failed at each moment: spikes show flapping, "
        "plateaus show an outage nobody fixed.",
        [target(f"sum {per_bot(s.cfg)} (trading_failure_point_status{{{s.sel}}} == bool 2)", s.legend("ERROR "), "A"),
         target(f"sum {per_bot(s.cfg)} (trading_failure_point_status{{{s.sel}}} == bool 1)", s.legend("WARN "), "B")])
    agree = status_timeline(
        "Recording rule agrees with the exporter",
        "Compares the recording rule trading:readiness:status (what the alerts use) with the exporter's own "
        "verdict: they must agree (CONTRACT.md). Disagreement means the rules' threshold or selectors are out "
        "of date. No data means the rules from rules/ are not loaded in this Prometheus.",
        f"trading:readiness:status{{{s.sel}}} != bool {on_bot(s.cfg)} trading_readiness_status{{{s.sel}}}",
        s.legend(),
        value_mappings([(0, "agree", "green"), (1, "DISAGREE", "red")]))
    alerts = Table(
        title="Readiness alerts pending and firing",
        description="Prometheus' ALERTS series for this bot's exporter: what Alertmanager is (or will soon be) "
                    "told. Empty when nothing fails or when the rules are not loaded.",
        targets=[target(f'ALERTS{{{s.sel}, alertname=~"Trading.*"}}', instant=True, table=True)],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "job": True, "__name__": True, "Value": True},
            "indexByName": {s.bot: 0, s.env: 1, "instance": 2, "alertname": 3, "alertstate": 4, "severity": 5, "fp": 6,
                            "healer": 7}}}],
        filterable=True)
    panels = layout([
        (readiness_now, 6, 5), (counts[0], 4, 5), (counts[1], 4, 5), (counts[2], 4, 5), (up, 3, 5), (age, 3, 5),
        (timeline, 24, 5),
        (table, 24, 10),
        (counts_ts, 12, 8), (agree, 12, 8),
        (alerts, 24, 8),
    ])
    return dashboard(s, "overview", "Trading readiness: overview",
                      "Will the bot trade? The exporter's readiness now and over time, and what fails.", panels)


# -- failure points -----------------------------------------------------------------------------

def failure_points(cat: Catalog, s: Scope) -> Dashboard:
    items: list[Any] = []
    for category, points in cat.by_category().items():
        points = implemented(points)
        if not points:
            continue  # a category of planned points only has nothing exported to draw
        items.append(RowPanel(title=category))
        for p in points:
            desc = f"{p.detects} Healer: {p.healer or 'none'}. Runbook: {runbook_url(s, p)}"
            items.append((status_timeline(
                f"{p.id} {p.name}", desc,
                f'trading_failure_point_status{{{s.sel}, fp="{p.id}"}}', s.legend(), FP_STATUS,
                links=[{"title": f"Runbook {p.id}", "url": runbook_url(s, p), "targetBlank": True}]), 8, 4))
    return dashboard(s, "failure_points", "Trading readiness: failure points",
                      "One state timeline per implemented failure point, grouped by category.", layout(items))


# -- trends -------------------------------------------------------------------------------------

def trends(cat: Catalog, s: Scope) -> Dashboard:
    lag = "trading_uw_cache_last_update_timestamp_seconds"
    panels = layout([
        (timeseries("UW cache update lag", "Seconds since the UW daemon last wrote the cache (`time() - "
                     f"{lag}`). {described(cat, lag)}",
                     [target(f"time() - {lag}{{{s.sel}}}", s.legend())], unit="s"), 12, 8),
        (timeseries("Symbols in the UW cache", described(cat, "trading_uw_cache_symbols",
                                                          "trading_uw_cache_tickers_with_trades"),
                     [target(f"trading_uw_cache_symbols{{{s.sel}}}", s.legend("symbols "), "A"),
                      target(f"trading_uw_cache_tickers_with_trades{{{s.sel}}}", s.legend("with trades "), "B")]),
         12, 8),
        (timeseries("Buying power and equity", described(cat, "trading_account_buying_power_usd",
                                                          "trading_account_equity_usd"),
                     [target(f"trading_account_buying_power_usd{{{s.sel}}}", s.legend("buying power "), "A"),
                      target(f"trading_account_equity_usd{{{s.sel}}}", s.legend("equity "), "B")],
                     unit="currencyUSD"), 12, 8),
        (timeseries("Open positions against the cap", described(cat, "trading_positions_open",
                                                                 "trading_positions_max"),
                     [target(f"trading_positions_open{{{s.sel}}}", s.legend("open "), "A"),
                      target(f"trading_positions_max{{{s.sel}}}", s.legend("cap "), "B")]), 12, 8),
        (timeseries("UW quota used against the limit", described(cat, "trading_uw_quota_used",
                                                                  "trading_uw_quota_limit"),
                     [target(f"trading_uw_quota_used{{{s.sel}}}", s.legend("used "), "A"),
                      target(f"trading_uw_quota_limit{{{s.sel}}}", s.legend("limit "), "B")]), 12, 8),
        (timeseries("Check durations (slowest 10)", "How long each check's last run took, the ten slowest, "
                     "and the whole batch. A check close to its timeout is about to turn ERROR.",
                     [target(f"topk(10, trading_failure_point_check_duration_seconds{{{s.sel}}})",
                             s.legend("{{fp}} "), "A"),
                      target(f"trading_exporter_cycle_duration_seconds{{{s.sel}}}", s.legend("batch "), "B")],
                     unit="s"), 12, 8),
        (timeseries("Check errors (exporter faults)", "Checks that raised or timed out per interval, by "
                     "point: a fault of the exporter or of its access to the bot, not of the bot itself.",
                     [target(f"sum by ({s.bot}, instance, fp) (increase(trading_exporter_check_errors_total{{{s.sel}}}"
                             "[$__rate_interval]))", s.legend("{{fp}} "))]), 24, 7),
    ])
    return dashboard(s, "trends", "Trading readiness: trends",
                      "How the bot's inputs move over time: cache lag, symbols, money, positions, quota, "
                      "and the exporter's own cost.", panels)


# -- funnel -------------------------------------------------------------------------------------

def funnel(cat: Catalog, s: Scope) -> Dashboard:
    stage = described(cat, "trading_signal_funnel")
    reason = described(cat, "trading_blocked_candidates")
    panels = layout([
        (bar_gauge(title="Signal funnel by stage (now)", description=stage,
                  targets=[target(f"sum by (stage) (trading_signal_funnel{{{s.sel}}})", "{{stage}}", instant=True)]),
         12, 8),
        (bar_gauge(title="Blocked candidates by reason (now)", description=reason,
                  targets=[target(f"sum by (reason) (trading_blocked_candidates{{{s.sel}}})", "{{reason}}",
                                  instant=True)]), 12, 8),
        (timeseries("Signal funnel over time", stage,
                     [target(f"trading_signal_funnel{{{s.sel}}}", s.legend("{{stage}} "))]), 12, 9),
        (timeseries("Blocked candidates by reason over time", reason,
                     [target(f"trading_blocked_candidates{{{s.sel}}}", s.legend("{{reason}} "))], stacked=True),
         12, 9),
    ])
    return dashboard(s, "funnel", "Trading readiness: signal funnel",
                      "Where signals are lost: symbols, clusters, blocked candidates, orders.", panels)


# -- healer -------------------------------------------------------------------------------------

def healer(cat: Catalog, s: Scope) -> Dashboard:
    panels = layout([
        (timeseries("Heal attempts by outcome", "Actions the healer ran per interval, by point and outcome "
                     "(success, failed, timeout, unverified, dry_run).",
                     [target(f"sum by (fp, outcome) (increase(trading_healer_attempts_total{{{s.hsel}}}"
                             "[$__rate_interval]))", "{{fp}} {{outcome}}")], stacked=True), 12, 8),
        (bar_gauge(title="Heal attempts in the time range", description="Attempts over the whole range, by outcome.",
                  targets=[target(f"sum by (outcome) (increase(trading_healer_attempts_total{{{s.hsel}}}"
                                  "[$__range]))", "{{outcome}}", instant=True)]), 12, 8),
        (timeseries("Alerts not healed, by reason", "Deliveries deliberately skipped: duplicates, cooldowns, "
                     "disabled healers, resolved alerts, gave up.",
                     [target(f"sum by (reason) (increase(trading_healer_skipped_total{{{s.hsel}}}"
                             "[$__rate_interval]))", "{{reason}}")], stacked=True), 12, 8),
        (status_timeline("Healer running", "1 while a point's action runs.",
                          f"trading_healer_running{{{s.hsel}}}", "{{fp}}",
                          value_mappings([(0, "idle", "transparent"), (1, "running", "blue")])),
         12, 8),
        (status_timeline("Gave up (a human is needed)", "1 after max_attempts failed within window_seconds, "
                          "until the point's alert resolves.", f"trading_healer_gave_up{{{s.hsel}}}", "{{fp}}",
                          value_mappings([(0, "trying", "green"), (1, "gave up", "red")])),
         12, 8),
        (Table(title="Healers configured per point", targets=[target(
            f'trading_failure_point_info{{{s.sel}, healer!=""}}', instant=True, table=True)],
            description="Points the exporter reports with a configured healer (trading_failure_point_info).",
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True, "job": True, "__name__": True, "Value": True},
                "indexByName": {s.bot: 0, s.env: 1, "instance": 2, "fp": 3, "name": 4, "healer": 5,
                                "category": 6}}}]), 12, 8),
    ])
    return dashboard(s, "healer", "Trading readiness: healer",
                      "What the Alertmanager webhook healer did: attempts, outcomes, skips, give-ups.", panels,
                      healer=True)


def dashboards(cat: Catalog | None = None, cfg: dict[str, Any] | None = None) -> dict[str, Dashboard]:
    """Every dashboard, for the mixin config ``cfg`` (default: CONFIG)."""
    cat = cat or load()
    s = DEFAULT if cfg is None else Scope(cfg)
    return {"overview": overview(cat, s), "failure_points": failure_points(cat, s), "trends": trends(cat, s),
            "funnel": funnel(cat, s), "healer": healer(cat, s), "fleet": fleet(s)}


def to_json(d: Dashboard) -> str:
    return json.dumps(to_json_data(d), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


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


def artefacts(cfg: dict[str, Any] | None = None) -> dict[str, str]:
    """{relative path: text} of every dashboard JSON and the provisioning files."""
    out = {f"{DASHBOARD_DIR}/{d.uid}.json": to_json(d) for d in dashboards(cfg=cfg).values()}
    out.update(provisioning())
    return out
