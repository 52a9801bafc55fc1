"""The Grafana dashboards: structure, drift, and every query proven against a real Prometheus.

The structural tests read the generated JSON. The end-to-end test starts a real Prometheus
(scrape interval 1 s) scraping a real `serve` exporter over a bot root with failing points and a
real `heal` receiver that has run a real action, then evaluates every query of every panel
through the Prometheus HTTP API: each must parse and return at least one series.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.core.catalog import load
from grafana.common import SCHEMA_VERSION
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
from rules.generate import RULES_PATH

from .conftest import REPO, Procs, clean_env, wait_for
from .prom import free_port

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
    assert len(dashes) == len(UIDS) == 6
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
        per_bot = dash["uid"] != UIDS["fleet"]
        # every dashboard picks bots by their target labels; a per-bot one also by instance
        assert names[:4] == ["datasource", "env", "bot", "instance"] if per_bot else names == [
            "datasource", "env", "bot"], rel
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
            # every query is scoped to the chosen bots; on a per-bot dashboard also to the chosen
            # exporter and healer instances
            for sel in re.findall(r"\{([^{}]*)\}", expr):
                if "=" not in sel:
                    continue
                assert 'bot=~"$bot"' in sel and 'env=~"$env"' in sel, (rel, title, expr)
                if "trading-healer" in sel:
                    assert 'instance=~"$healer"' in sel or not per_bot, (rel, title, expr)
                else:
                    assert 'job="trading-readiness"' in sel, (rel, title, expr)
                    assert 'instance=~"$instance"' in sel or not per_bot, (rel, title, expr)


def test_every_dashboard_declares_a_schema_version_current_grafana_loads_without_migration() -> None:
    # Grafana 11 migrates anything older than its latest schema (39) on load and would save a
    # different JSON than the one committed
    for rel, dash in generated().items():
        assert dash["schemaVersion"] == SCHEMA_VERSION == 39, rel


def test_fleet_table_is_one_row_per_bot_sorted_worst_first() -> None:
    dash = generated()[f"{DASHBOARD_DIR}/{UIDS['fleet']}.json"]
    table = next(p for p in panels_of(dash) if p["title"] == "Bots, worst first")
    assert table["type"] == "table"
    assert table["options"]["sortBy"][0] == {"displayName": "readiness", "desc": True}
    assert table["transformations"][0]["id"] == "merge"
    names = table["transformations"][1]["options"]["renameByName"]
    assert list(names.values()) == ["readiness", "failing points", "ERROR points", "heals in range", "last heal"]
    for t in table["targets"]:
        assert t["instant"] and t["format"] == "table"
        assert "by (bot, env)" in t["expr"], t["expr"]


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


# -- every query against a real Prometheus ------------------------------------------------------

#: Grafana's variables as the test substitutes them: all bots, all healers, fixed intervals.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$datasource": "prometheus",
             "$instance": ".*", "$healer": ".*", "$bot": ".*", "$env": ".*"}


def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr.replace('"fp-$1$2"', ""), f"unsubstituted variable in {expr}"
    return expr


def http_json(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    assert url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310 (loopback http only)
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
        return json.loads(r.read())


BOTS = [{"bot": "alpha", "env": "live", "team": "a"}, {"bot": "beta", "env": "paper", "team": "b"}]


class Stack:
    """A real exporter, healer and Prometheus on loopback; every process is killed at teardown."""

    def __init__(self, procs: Procs, tmp: Path, bot_root: Path) -> None:
        self.procs, self.tmp = procs, tmp
        self.exporter, self.healer, self.prom = free_port(), free_port(), free_port()
        config = tmp / "trading-readiness.yaml"
        config.write_text(yaml.safe_dump({
            # FP-1.1's action exits 0 but cannot start the daemon, so the heal is honestly
            # "unverified"; with max_attempts 1 the healer then gives up.
            "healers": {"FP-1.1": {"run": ["/bin/true"], "max_attempts": 1, "verify_timeout_seconds": 1,
                                   "cooldown_seconds": 600}},
            "healer": {"verify_interval_seconds": 0.2},
        }))
        base = [sys.executable, "-m", "exporter", "--config", str(config), "--bot-root", str(bot_root)]
        self.logs = {name: open(  # noqa: SIM115 (closed in close(), the processes outlive __init__)
                     tmp / f"{name}.log", "wb") for name in ("exporter", "healer", "prometheus")}
        self.exp_proc = self._start(base + ["serve", "--listen", f"127.0.0.1:{self.exporter}"], "exporter")
        self.heal_proc = self._start(base + ["heal", "--listen", f"127.0.0.1:{self.healer}"], "healer",
                                     clean_env(TRADING_READINESS_HEALER_TOKEN="dash-token-0123456789"))
        prom_cfg = tmp / "prometheus.yml"
        prom_cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            # the committed rules: the overview compares the recording rule with the exporter
            "rule_files": [str(REPO / RULES_PATH)],
            # Two bots, told apart only by the target labels the operator sets: the same exporter
            # and healer scraped as bot alpha (live) and bot beta (paper), plus a label of the
            # operator's own. Every per-bot query must keep them apart, the fleet table shows both.
            "scrape_configs": [
                {"job_name": job, "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": labels} for labels in BOTS]}
                for job, port in (("trading-readiness", self.exporter), ("trading-healer", self.healer))
            ]}))
        self.prom_proc = self._start([PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.prom}"], "prometheus")

    def _start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, cwd=REPO, env=env or clean_env(), stdout=subprocess.DEVNULL,
                             stderr=self.logs[name], start_new_session=True)
        self.procs.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = http_json(url)
        except urllib.error.HTTPError as exc:
            if exc.code == 503:  # still starting up (replaying its WAL): not an answer yet
                raise ConnectionError(f"Prometheus is not ready for {expr!r}") from None
            raise AssertionError(f"Prometheus refused {expr!r}: {exc.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def ready(self, expr: str) -> bool:
        try:
            return bool(self.query(expr))
        except OSError:
            for name, proc in (("exporter", self.exp_proc), ("prometheus", self.prom_proc)):
                assert proc.poll() is None, f"{name} exited: {self.log(name)}"
            return False

    def close(self) -> None:
        self.procs.stop_all()
        for fh in self.logs.values():
            fh.close()


@pytest.fixture
def stack(procs: Procs, tmp_path: Path, bot: Any) -> Iterator[Stack]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (make system-deps)")
    s = Stack(procs, tmp_path, bot.path)
    try:
        yield s
    finally:
        s.close()


def firing(fp: str) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alert = {"status": "firing", "labels": {"alertname": "TradingFailurePoint", "fp": fp, "severity": "critical"},
             "annotations": {}, "startsAt": now, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": f"dash-{fp}"}
    return json.dumps({"version": "4", "status": "firing", "receiver": "healer", "groupKey": "{}:{}",
                       "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://127.0.0.1:9093", "alerts": [alert]}).encode()


def test_every_panel_query_returns_data_from_a_real_prometheus(stack: Stack) -> None:
    """The bot root is healthy but neither the UW daemon nor the bot runs: FP-1.1 and FP-6.1 are
    ERROR, readiness is BLOCKED, and the healer really runs (and gives up on) FP-1.1's action."""
    wait_for(lambda: stack.ready('trading_readiness_status{job="trading-readiness"}'), timeout=20,
             what=f"the exporter's readiness in Prometheus; exporter log: {stack.log('exporter')}", every=0.2)
    wait_for(lambda: stack.heal_proc.poll() is not None or stack.ready('trading_healer_running{job="trading-healer"}'),
             timeout=10, what="the healer's metrics in Prometheus", every=0.2)
    assert stack.heal_proc.poll() is None, f"heal did not start: {stack.log('healer')}"
    # The alert Alertmanager would send for FP-1.1, after the healer's zeroes were scraped once,
    # so increase() sees the attempt.
    reply = http_json(f"http://127.0.0.1:{stack.healer}/alertmanager", data=firing("FP-1.1"),
                      headers={"Authorization": "Bearer dash-token-0123456789", "Content-Type": "application/json"})
    assert reply["state"] == "queued" and reply["alerts"] == 1, reply
    decided = wait_for(lambda: (v := http_json(f"http://127.0.0.1:{stack.healer}/api/heals?delivery={reply['delivery']}"))
                       ["state"] == "decided" and v, timeout=10, what="the healer's decision", every=0.1)
    assert decided["decisions"] == ["accepted"], decided
    # Counters need two samples around the change; wait on that, never a fixed sleep.
    wait_for(lambda: stack.ready('trading_healer_gave_up{fp="FP-1.1"} == 1'), timeout=20,
             what=f"the healer giving up on FP-1.1; healer log: {stack.log('healer')}", every=0.2)
    for expr in ('increase(trading_healer_attempts_total{fp="FP-1.1", outcome="unverified"}[1m]) > 0',
                 'count_over_time(trading_exporter_check_errors_total{fp="FP-1.1"}[1m]) > 2'):
        wait_for(functools.partial(stack.ready, expr), timeout=20, what=f"counter samples: {expr}", every=0.2)

    # the fleet's "last heal" samples the attempts counter once per $__interval step
    last_heal = next(t for p in panels_of(generated()[f"{DASHBOARD_DIR}/{UIDS['fleet']}.json"])
                     for t in p.get("targets") or [] if "timestamp(" in t["expr"])
    wait_for(lambda: len(stack.query(substitute(last_heal["expr"]))) == 2, timeout=30,
             what="the last heal of both bots", every=0.5)

    empty: list[str] = []
    checked = 0
    for rel, dash in generated().items():
        for var in dash["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]) if var["type"] == "query" else None
            if m and not stack.query(f"group by ({m[2]}) ({substitute(m[1])})"):
                empty.append(f"{rel} variable {var['name']}: {var['query']}")
        for title, expr, _ in queries(dash):
            checked += 1
            if not stack.query(substitute(expr)):
                empty.append(f"{rel} {title!r}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert checked >= 50

    # The panels show the truth, not merely something: the failing table lists exactly the
    # ERROR points with their catalog runbook anchors, the readiness panels say BLOCKED.
    overview = generated()[f"{DASHBOARD_DIR}/{UIDS['overview']}.json"]
    table = next(t for title, _, t in queries(overview) if title == "Failing points")
    rows = stack.query(substitute(table["expr"]))
    cat = load()
    assert {r["metric"]["fp"] for r in rows} >= {"FP-1.1", "FP-6.1"}
    for r in rows:
        assert r["metric"]["anchor"] == cat[r["metric"]["fp"]].anchor
        assert r["value"][1] in ("1", "2")
    assert stack.query('trading_readiness_status{job="trading-readiness"}')[0]["value"][1] == "2"
    agree = next(t for title, _, t in queries(overview) if title == "Recording rule agrees with the exporter")
    assert sorted((r["metric"]["bot"], r["value"][1]) for r in stack.query(substitute(agree["expr"]))) == [
        ("alpha", "0"), ("beta", "0")]
    # a per-bot dashboard narrowed to one bot shows only that bot
    only_alpha = substitute(table["expr"]).replace('bot=~".*"', 'bot=~"alpha"')
    assert {r["metric"]["bot"] for r in stack.query(only_alpha)} == {"alpha"}

    # the fleet table: every column is one row per bot, each with its env
    fleet = generated()[f"{DASHBOARD_DIR}/{UIDS['fleet']}.json"]
    bots = next(p for p in panels_of(fleet) if p["title"] == "Bots, worst first")
    columns = {}
    for t in bots["targets"]:
        rows = stack.query(substitute(t["expr"]))
        assert sorted((r["metric"]["bot"], r["metric"]["env"]) for r in rows) == [("alpha", "live"), ("beta", "paper")]
        assert all(set(r["metric"]) == {"bot", "env"} for r in rows), rows
        columns[t["refId"]] = {r["metric"]["bot"]: float(r["value"][1]) for r in rows}
    assert columns["A"] == {"alpha": 2, "beta": 2}  # BLOCKED: the daemon and the bot are not running
    assert columns["C"]["alpha"] >= 2 and columns["B"]["alpha"] >= columns["C"]["alpha"]
    assert columns["D"]["alpha"] >= 1 and columns["E"]["alpha"] / 1000 > time.time() - 300
    attempts = stack.query('sum by (outcome) (increase(trading_healer_attempts_total{job="trading-healer"}[5m]))'
                           ' > 0')
    assert [a["metric"]["outcome"] for a in attempts] == ["unverified"]


def test_docs_describe_every_dashboard_and_panel() -> None:
    section = (REPO / "docs/dashboards.md").read_text()
    missing = []
    for rel, dash in generated().items():
        if dash["uid"] not in section:
            missing.append(dash["uid"])
        # the failure-point dashboard has one panel per catalog point; its row says so once
        per_point = dash["uid"] == UIDS["failure_points"]
        missing += [f"{rel}: {p['title']}" for p in panels_of(dash) if not per_point and p["title"] not in section]
    assert not missing, f"docs/dashboards.md does not describe {missing}"
    assert PROVIDER_PATH in section
