"""The catalog is the single source of truth; the committed docs must match it."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

from exporter.core.catalog import CATEGORIES, load
from exporter.tools.render import catalog_markdown
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot

from .conftest import REPO, Procs, evaluate, run_cli

ORIGINAL = {
    "FP-1.1": "UW daemon not running", "FP-1.2": "UW cache file missing or empty", "FP-1.3": "UW cache stale",
    "FP-1.4": "No symbols in cache", "FP-1.5": "UW API authentication failure",
    "FP-1.6": "UW API rate limit exceeded", "FP-1.7": "No clusters generated", "FP-1.8": "Cluster generation errors",
    "FP-2.1": "Adaptive weights not initialised", "FP-2.2": "Composite score calculation failure",
    "FP-2.3": "Score below threshold", "FP-2.4": "Enrichment failure", "FP-2.5": "Regime detection failure",
    "FP-3.1": "Freeze state active", "FP-3.2": "Max positions reached", "FP-3.3": "Max new positions per cycle",
    "FP-3.4": "Expectancy gate blocking", "FP-3.5": "Regime gate blocking", "FP-3.6": "Theme risk limit",
    "FP-3.7": "Cooldown period active", "FP-3.8": "Self-healing threshold raised",
    "FP-4.1": "Alpaca API connection failure", "FP-4.2": "Alpaca API authentication failure",
    "FP-4.3": "Insufficient buying power", "FP-4.4": "Order rejection by broker",
    "FP-4.5": "Position reconciliation failure", "FP-5.1": "Missing environment variables",
    "FP-5.2": "Invalid configuration values", "FP-5.3": "State file corruption", "FP-5.4": "Missing required files",
    "FP-6.1": "Bot process not running", "FP-6.2": "Bot process crashed", "FP-6.3": "Bot stuck or unresponsive",
    "FP-6.4": "Disk space full", "FP-6.5": "Memory exhaustion", "FP-6.6": "Network connectivity issues",
}


def test_original_ids_keep_their_meaning() -> None:
    cat = load()
    for fp, name in ORIGINAL.items():
        assert fp in cat.points, fp
        assert cat[fp].original_name == name, fp
        assert cat[fp].category == CATEGORIES[int(fp[3])]


def test_every_point_is_complete() -> None:
    for p in load():
        assert p.detects and p.how and p.source and p.runbook and p.levels, p.id
        assert p.healer or p.no_healer_reason, p.id
        assert "error" in p.levels or "warn" in p.levels, p.id


def test_no_healer_touches_human_decisions() -> None:
    cat = load()
    assert cat["FP-3.1"].healer is None  # freezes, safe mode, kill switch
    for p in cat:
        if p.healer:
            assert "freeze" not in p.healer and "kill" not in p.healer and "order" not in p.healer


def test_committed_markdown_matches_the_catalog() -> None:
    committed = (REPO / "docs" / "FAILURE_POINTS.md").read_text()
    fresh = catalog_markdown(load())
    if os.environ.get("UPDATE_GOLDEN"):
        (REPO / "docs" / "FAILURE_POINTS.md").write_text(fresh)
    assert committed == fresh, "docs/FAILURE_POINTS.md drifted: run `make generate`"


def test_catalog_cli_json_and_markdown() -> None:
    r = run_cli("catalog", "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data["count"] == len(data["failure_points"]) == len(load())
    r = run_cli("catalog", "--markdown")
    assert r.returncode == 0 and r.stdout == catalog_markdown(load())


def test_observations_carry_exactly_the_labels_the_catalog_declares(bot: BotRoot, running: Procs,
                                                                    alpaca: FakeAlpaca) -> None:
    """The README metrics table and the dashboards read label names from the catalog: a check
    exporting another label set would leave them wrong. Checked in session, where the funnel and
    gate observations are exported."""
    now = time.time()
    alpaca.clock = {"is_open": True, "next_close": datetime.fromtimestamp(now + 3 * 3600, UTC).isoformat(),
                    "next_open": datetime.fromtimestamp(now + 86400, UTC).isoformat()}
    declared: dict[str, set[str]] = {}
    for point in load():
        for obs in point.observations:
            declared.setdefault(str(obs["name"]), set()).update(str(x) for x in obs.get("labels") or ())
    seen: dict[str, set[str]] = {}
    for fp, r in evaluate(bot.path).results.items():
        for o in r.outcome.observations:
            assert o.name in declared, f"{fp} exports {o.name}, which its catalog entry does not declare"
            seen.setdefault(o.name, set()).update(k for k, _ in o.labels)
    for name, labels in seen.items():
        assert labels == declared[name], (name, labels, declared[name])
    assert {"trading_signal_funnel", "trading_blocked_candidates", "trading_network_reachable"} <= set(seen)


def test_depends_on_names_the_point_that_reports_a_fault() -> None:
    """``{id, when}`` entries: the fault kind must exist, and they count for cycles."""
    import pytest

    from exporter.core.catalog import CatalogError, parse

    def entry(fp: str, deps: list[object]) -> dict[str, object]:
        return {"id": fp, "name": fp, "category": CATEGORIES[int(fp[3])], "severity": "warning",
                "detection": "implemented", "source": "s", "detects": "d", "how": "h", "levels": {"warn": "w"},
                "depends_on": deps, "healer": None, "no_healer_reason": "r", "runbook": "r"}

    cat = parse({"failure_points": [entry("FP-1.8", []), entry("FP-1.7", ["FP-1.8"]),
                                    entry("FP-3.3", [{"id": "FP-1.8", "when": "run_log_unreadable"}])]})
    assert cat["FP-3.3"].depends_on == () and cat["FP-3.3"].reported_by == {"run_log_unreadable": "FP-1.8"}
    assert cat.dependents("FP-1.8") == ["FP-1.7"]  # inhibitions follow the unconditional ones only
    with pytest.raises(CatalogError, match="unknown fault 'run_log_gone'"):
        parse({"failure_points": [entry("FP-1.8", []), entry("FP-3.3", [{"id": "FP-1.8", "when": "run_log_gone"}])]})
    with pytest.raises(CatalogError, match="dependency cycle"):
        parse({"failure_points": [entry("FP-1.8", ["FP-3.3"]),
                                  entry("FP-3.3", [{"id": "FP-1.8", "when": "run_log_unreadable"}])]})


def test_broker_errors_name_known_points_and_kinds() -> None:
    """Which point reports a failed broker request is catalog data; an unknown id or kind is one line."""
    import pytest

    from exporter.core.catalog import CatalogError, parse

    shipped = load().broker_errors
    assert shipped.clock == "FP-4.1"
    assert shipped.owners == {"timeout": "FP-4.1", "connection": "FP-4.1", "server": "FP-4.1",
                              "rate_limit": "FP-4.1", "auth": "FP-4.2", "forbidden": "FP-4.2"}
    point = {"id": "FP-4.1", "name": "n", "category": CATEGORIES[4], "severity": "critical",
             "detection": "implemented", "source": "s", "detects": "d", "how": "h", "levels": {"error": "e"},
             "depends_on": [], "healer": None, "no_healer_reason": "r", "runbook": "r"}
    cat = parse({"failure_points": [point], "broker_errors": {"clock": "FP-4.1", "owners": {"timeout": "FP-4.1"}}})
    assert cat.broker_errors.owners == {"timeout": "FP-4.1"}
    for raw, message in (({"owners": {"timeout": "FP-4.7"}}, "broker_errors: timeout is owned by unknown FP-4.7"),
                         ({"clock": "FP-9.9"}, "broker_errors: clock is owned by unknown FP-9.9"),
                         ({"owners": {"teapot": "FP-4.1"}}, "broker_errors: unknown error kind 'teapot'"),
                         ({"owner": {}}, "broker_errors: expected a mapping")):
        with pytest.raises(CatalogError, match=message) as info:
            parse({"failure_points": [point], "broker_errors": raw})
        assert "\n" not in str(info.value)
