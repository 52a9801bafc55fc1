"""The fleet dashboard: every bot on one screen, worst first.

One row per bot (its ``bot`` and ``env`` labels): readiness, how many points fail and how many
are ERROR, the heals in the time range and when the last one ran, in a table sorted by
readiness (BLOCKED first) and then by failing points. A bot's name links to its overview. Above
it, how many bots are BLOCKED, DEGRADED and READY; below it, readiness per bot over time. The
queries read the exporter's own verdict (``trading_readiness_status``), so the dashboard works
on a central store that holds only the scraped series.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Stat, Table, TableSortByField

from grafana._panels import READINESS, field_link, field_mappings, layout, target
from grafana.common import UIDS, Scope, dashboard, status_timeline


def fleet(s: Scope) -> Dashboard:
    by = f"by ({s.bot}, {s.env})"
    sel = f'job="{s.cfg["exporter_job"]}", {s.bots}'
    hsel = f'job="{s.cfg["healer_job"]}", {s.bots}'
    status = f"trading_failure_point_status{{{sel}}}"
    attempts = f"trading_healer_attempts_total{{{hsel}}}"
    columns = [
        ("A", "readiness", f"max {by} (trading_readiness_status{{{sel}}})"),
        ("B", "failing points", f"sum {by} ({status} > bool 0)"),
        ("C", "ERROR points", f"sum {by} ({status} == bool 2)"),
        ("D", "heals in range", f"sum {by} (increase({attempts}[$__range]))"),
        # the newest step (one per $__interval) at which a heal attempt had just been counted, in
        # ms for Grafana: the healer exports counters, not the attempt's time
        ("E", "last heal", f"1000 * max {by} (max_over_time(timestamp(increase({attempts}[2m]) > 0)"
                           f"[$__range:$__interval]))"),
    ]
    table = Table(
        title="Bots, worst first",
        description="One row per bot (its bot and env labels): the exporter's readiness, the points in WARN "
                    "or ERROR and those in ERROR, the healer's attempts in the time range and when the last "
                    "one ran. Sorted BLOCKED first, then by failing points; a bot's name opens its overview.",
        targets=[target(expr, ref=ref, instant=True, table=True) for ref, _, expr in columns],
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "indexByName": {s.bot: 0, s.env: 1,
                                **{f"Value #{ref}": i + 2 for i, (ref, _, _) in enumerate(columns)}},
                "renameByName": {f"Value #{ref}": name for ref, name, _ in columns}}},
        ],
        overrides=[
            field_mappings("readiness", READINESS, "readiness"),
            {"matcher": {"id": "byName", "options": "last heal"},
             "properties": [{"id": "unit", "value": "dateTimeFromNow"}]},
            # increase() extrapolates: a single attempt reads 1.02
            {"matcher": {"id": "byName", "options": "heals in range"}, "properties": [{"id": "decimals", "value": 0}]},
            field_link(s.bot, "Overview of ${__value.raw}",
                       f"/d/{UIDS['overview']}?var-bot=${{__value.raw}}&${{__url_time_range}}"
                       "&${datasource:queryparam}"),
        ],
        sortBy=[TableSortByField(displayName="readiness", desc=True),
                TableSortByField(displayName="failing points", desc=True)],
        filterable=True)

    def count(title: str, value: int, color: str) -> Stat:
        return Stat(title=title, description=f"How many of the chosen bots are {title.split()[1]} now.",
                    targets=[target(f"sum(trading_readiness_status{{{sel}}} == bool {value})", title)],
                    colorMode="background", graphMode="area", reduceCalc="lastNotNull", format="none",
                    thresholds=[{"color": "green", "value": None}, {"color": color, "value": 1}],
                    noValue="no data")

    timeline = status_timeline(
        "Readiness per bot over time", "READY/DEGRADED/BLOCKED per bot as its exporter decided it.",
        f"max {by} (trading_readiness_status{{{sel}}})", f"{{{{{s.bot}}}}} {{{{{s.env}}}}}", READINESS)
    panels = layout([
        (count("Bots BLOCKED", 2, "red"), 8, 4), (count("Bots DEGRADED", 1, "yellow"), 8, 4),
        (count("Bots READY", 0, "green"), 8, 4),
        (table, 24, 12),
        (timeline, 24, 10),
    ])
    return dashboard(s, "fleet", "Trading readiness: fleet",
                     "Every bot at once, worst first: readiness, failing points and the last heal.", panels,
                     per_instance=False)
