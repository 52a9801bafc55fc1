"""Human renderings: the check table and the Markdown catalog (docs/FAILURE_POINTS.md)."""

from __future__ import annotations

import shutil

from ..core.catalog import CATEGORIES, Catalog
from ..core.model import Report, Status

SYMBOL = {Status.OK: "OK", Status.WARN: "WARN", Status.ERROR: "ERROR", Status.SKIPPED: "SKIP"}


def table(report: Report, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((120, 20)).columns
    rows = [(fp, r.name, SYMBOL[r.status], r.outcome.message) for fp, r in report.results.items()]
    w_id = max([len("ID")] + [len(r[0]) for r in rows])
    w_name = max([len("FAILURE POINT")] + [len(r[1]) for r in rows])
    w_status = 6
    msg_width = max(30, width - w_id - w_name - w_status - 6)
    lines = [f"{'ID':<{w_id}}  {'FAILURE POINT':<{w_name}}  {'STATUS':<{w_status}}  DETAIL"]
    for fp, name, status, msg in rows:
        msg = msg if len(msg) <= msg_width else msg[: msg_width - 3] + "..."
        lines.append(f"{fp:<{w_id}}  {name:<{w_name}}  {status:<{w_status}}  {msg}")
    j = report.to_json()
    lines.append("")
    summary = (f"{j['readiness']}: {j['critical_count']} critical, {j['warning_count']} warning, "
               f"{len(j['skipped_fps'])} skipped, {j['total_checked']} checked at {j['timestamp']}")
    if j["critical_fps"]:
        summary += "\nCritical: " + ", ".join(j["critical_fps"])
    if j["warning_fps"]:
        summary += "\nWarnings: " + ", ".join(j["warning_fps"])
    lines.append(summary)
    return "\n".join(lines)


def catalog_markdown(cat: Catalog) -> str:
    """docs/FAILURE_POINTS.md; generated, committed, and checked for drift by the tests."""
    out = [
        "# Failure points",
        "",
        "<!-- Generated from exporter/catalog.yaml by `trading-readiness catalog --markdown`; do not edit. -->",
        "",
        f"{len(cat)} failure points. Each evaluates to OK, WARN, ERROR or SKIPPED. Readiness is BLOCKED "
        "if any point is ERROR, DEGRADED if more than `readiness.max_warnings` (default 2) are WARN, "
        "else READY.",
        "",
        "| id | name | category | severity | healer | detection |",
        "|---|---|---|---|---|---|",
    ]
    for p in cat:
        out.append(f"| [{p.id}](#{p.anchor}) | {p.name} | {p.category} | {p.severity} | "
                   f"{p.healer or '—'} | {p.detection} |")
    for number, category in CATEGORIES.items():
        points = [p for p in cat if p.category_number == number]
        if not points:
            continue
        out += ["", f"## {number}. {category}"]
        for p in points:
            out += ["", f"### {p.id}", "", f"**{p.name}**" + (
                f" (originally \"{p.original_name}\")" if p.original_name and p.original_name != p.name else ""), ""]
            out.append(f"- **Detects:** {p.detects}")
            out.append(f"- **Source:** {p.source}")
            out.append(f"- **How:** {p.how}")
            for level in ("warn", "error", "skipped"):
                if level in p.levels:
                    out.append(f"- **{level.upper()}:** {p.levels[level]}")
            out.append(f"- **Severity:** {p.severity}; alert after {p.alert_for}")
            deps = [*p.depends_on, *(f"{fp} when the check meets {kind.replace('_', ' ')}"
                                     for kind, fp in p.reported_by.items())]
            out.append(f"- **Depends on:** {', '.join(deps) if deps else 'nothing'}")
            out.append(f"- **Interval:** {p.interval_seconds:g} s, timeout {p.timeout_seconds:g} s"
                       + ("; relaxed outside the market session" if p.market_hours == "session" else ""))
            if p.params:
                out.append("- **Parameters** (override under `checks: {" + p.id + ": {params: ...}}`): "
                           + ", ".join(f"`{k}` = {v}" for k, v in p.params.items()))
            if p.healer:
                out.append(f"- **Healer:** `{p.healer}`")
            else:
                out.append(f"- **Healer:** none. {p.no_healer_reason}")
            if p.observations:
                out.append("- **Metrics:** " + ", ".join(f"`{o['name']}`" for o in p.observations))
            out.append(f"- **Runbook:** {p.runbook}")
            if p.detection == "planned":
                out.append("- *Detection planned, not implemented yet.*")
    out.append("")
    return "\n".join(out)
