"""What grafanalib 0.7.1 lacks, in one place: datasource references, value mappings with
colours, a current bar gauge, table data links and an automatic 24-column layout.

Everything here returns plain grafanalib objects or JSON-ready dicts, so the dashboards in
``dashboards.py`` read as a list of panels. A layout mistake (a panel wider than the grid)
raises at generation time rather than producing a dashboard Grafana silently rearranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attr
from grafanalib.core import GridPos, Panel, RowPanel, Target, Template

GRID_COLUMNS = 24

#: Every panel and target queries the datasource the dashboard's variable selects, so one JSON
#: works against any Prometheus (provisioned or chosen at import).
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}


def value_mappings(states: Sequence[tuple[float, str, str]]) -> list[dict[str, Any]]:
    """Grafana 8+ value mappings (value -> text and colour); grafanalib only has the old form."""
    options = {f"{value:g}": {"text": text, "color": color, "index": i}
               for i, (value, text, color) in enumerate(states)}
    return [{"type": "value", "options": options}]


#: trading_failure_point_status: 0 OK, 1 WARN, 2 ERROR, -1 SKIPPED (CONTRACT.md)
FP_STATUS = value_mappings([(0, "OK", "green"), (1, "WARN", "yellow"), (2, "ERROR", "red"),
                            (-1, "SKIPPED", "text")])
#: trading_readiness_status: 0 READY, 1 DEGRADED, 2 BLOCKED
READINESS = value_mappings([(0, "READY", "green"), (1, "DEGRADED", "yellow"), (2, "BLOCKED", "red")])


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> Target:
    """A Prometheus query against the selected datasource."""
    return Target(expr=expr, legendFormat=legend, refId=ref, instant=instant, intervalFactor=1,
                  format="table" if table else "time_series", datasource=DATASOURCE)


def datasource_variable() -> Template:
    return Template(name="datasource", label="Data source", query="prometheus", type="datasource",
                    refresh=1, default="")


def instance_variable(name: str, label: str, metric: str, job: str, bots: str = "") -> Template:
    """A multi-value instance picker fed by one always-present series of ``job``, limited to the
    bots the ``bots`` matchers select.

    ``allValue`` is ``.*`` so the regex matchers in every query match all instances when
    "All" is chosen (Grafana would otherwise build an alternation of the values it knows).
    """
    scope = f", {bots}" if bots else ""
    return label_variable(name, label, f'{metric}{{job="{job}"{scope}}}', "instance")


def label_variable(name: str, label: str, series: str, label_name: str) -> Template:
    """A multi-value picker of the values of ``label_name`` on ``series``; "All" is ``.*``, which
    also matches series without the label (a single bot scraped without a bot label)."""
    return Template(name=name, label=label, query=f"label_values({series}, {label_name})",
                    dataSource=DATASOURCE, includeAll=True, multi=True, allValue=".*", refresh=2,
                    default="$__all")


@attr.s
class _BarGauge(Panel):
    """The Grafana 8+ bar gauge (grafanalib's ``BarGauge`` emits the Grafana 6 schema)."""

    unit: str = attr.ib(default="short")
    mappings: list[dict[str, Any]] = attr.ib(default=attr.Factory(list))

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json({
            "type": "bargauge",
            "fieldConfig": {"defaults": {"unit": self.unit, "min": 0, "mappings": self.mappings,
                                         "color": {"mode": "palette-classic"}},
                            "overrides": []},
            "options": {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        })


def bar_gauge(title: str, description: str, targets: list[Target], unit: str = "short") -> Panel:
    """A bar gauge; grafanalib's panels are untyped, so this keeps the keywords checked here."""
    kwargs: dict[str, Any] = {"title": title, "description": description, "targets": targets, "unit": unit}
    return _BarGauge(**kwargs)


def field_link(field: str, title: str, url: str, display_name: str | None = None) -> dict[str, Any]:
    """A table override that turns one field's cells into links (``${__value.raw}`` is the cell)."""
    props: list[dict[str, Any]] = [{"id": "links", "value": [{"title": title, "url": url, "targetBlank": True}]}]
    if display_name:
        props.append({"id": "displayName", "value": display_name})
    return {"matcher": {"id": "byName", "options": field}, "properties": props}


def field_mappings(field: str, mappings: list[dict[str, Any]], display_name: str) -> dict[str, Any]:
    """A table override: show ``field`` through value mappings, coloured cells."""
    return {"matcher": {"id": "byName", "options": field},
            "properties": [{"id": "mappings", "value": mappings}, {"id": "displayName", "value": display_name},
                           {"id": "custom.displayMode", "value": "color-background"}]}


def layout(items: Iterable[Panel | tuple[Panel, int, int]], y: int = 0) -> list[Panel]:
    """Place panels left to right in rows of 24 columns; a ``RowPanel`` starts a new band.

    Each item is a row or ``(panel, width, height)``. A band is as tall as its tallest panel,
    so panels never overlap. Ids are left to :func:`number`.
    """
    placed: list[Panel] = []
    x, band = 0, 0
    for item in items:
        if isinstance(item, RowPanel):
            y, x, band = y + band, 0, 0
            placed.append(attr.evolve(item, gridPos=GridPos(h=1, w=GRID_COLUMNS, x=0, y=y)))
            y += 1
            continue
        panel, w, h = item  # type: ignore[misc]
        if not 0 < w <= GRID_COLUMNS:
            raise ValueError(f"panel {panel.title!r}: width {w} outside 1..{GRID_COLUMNS}")
        if x + w > GRID_COLUMNS:
            y, x, band = y + band, 0, 0
        placed.append(attr.evolve(panel, gridPos=GridPos(h=h, w=w, x=x, y=y)))
        x, band = x + w, max(band, h)
    return placed


def number(panels: list[Panel]) -> list[Panel]:
    """Ids 1..n in layout order (stable across generations, so links to a panel keep working);
    every panel but a row queries the selected datasource."""
    return [attr.evolve(p, id=i) if isinstance(p, RowPanel) else attr.evolve(p, id=i, dataSource=DATASOURCE)
            for i, p in enumerate(panels, start=1)]
