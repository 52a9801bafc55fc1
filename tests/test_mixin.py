"""`trading-readiness generate`: the mixin config renders rules, Alertmanager config and dashboards.

What the operator relies on: without a config the command writes exactly the committed files; a
config of their own (another job name, grouping labels, URLs, durations) shows up in every
artefact, and the rules it renders pass promtool and keep two bots apart; a bad config exits 3
with one line naming the key and writes nothing. Every run is the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules.config import CONFIG, ConfigError, load_config

from .conftest import REPO, clean_env

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


def generate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "generate", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=120)


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_without_a_config_generate_writes_exactly_the_committed_files(tmp_path: Path) -> None:
    r = generate("--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = files(tmp_path / "out")
    assert {"rules/trading-readiness.rules.yml", "alertmanager/alertmanager.yml",
            "grafana/dashboards/trading-readiness-fleet.json"} <= set(out)
    for rel, text in out.items():
        assert (REPO / rel).read_text() == text, f"{rel} differs from the committed file"
    assert r.stdout.count("wrote ") == len(out)


MIXIN = {
    "exporter_job": "bots",
    "healer_job": "bot-healers",
    "group_by": ["strategy", "env"],
    "bot_label": "strategy",
    "runbook_base_url": "https://wiki.example.com/tr/docs",
    "grafana_url": "https://grafana.example.com/",
    "blocked_for": "2m",
    "point_for": {"FP-1.3": "7m"},
    "severity": {"degraded": "critical"},
    "alertmanager": {"pager_url": "https://pager.example.com/hook"},
}


def rules_of(text: str) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def test_a_custom_config_shows_up_in_every_artefact_and_passes_promtool_and_amtool(tmp_path: Path) -> None:
    mixin = tmp_path / "mixin.yaml"
    mixin.write_text(yaml.safe_dump(MIXIN))
    r = generate("--config", str(mixin), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    text = (out / "rules/trading-readiness.rules.yml").read_text()
    assert 'job="trading-readiness"' not in text and 'job="trading-healer"' not in text
    assert 'trading_failure_point_status{job="bots"}' in text and 'trading_healer_gave_up{job="bot-healers"}' in text
    assert "max by (strategy, env) (" in text and "on (strategy, env, fp)" in text
    rules = rules_of(text)
    by_alert = {(r.get("alert"), r.get("labels", {}).get("fp")): r for r in rules if "alert" in r}
    assert by_alert[("TradingBlocked", None)]["for"] == "2m"
    assert by_alert[("TradingDegraded", None)]["labels"]["severity"] == "critical"
    assert by_alert[("TradingFailurePoint", "FP-1.3")]["for"] == "7m"
    assert by_alert[("TradingFailurePoint", "FP-1.2")]["for"] == "1m"  # the catalog's own
    assert by_alert[("TradingBlocked", None)]["annotations"]["summary"] == (
        "Trading is BLOCKED on {{ or $labels.strategy $labels.instance }}")
    assert by_alert[("TradingBlocked", None)]["annotations"]["dashboard"].startswith(
        "https://grafana.example.com/d/trading-readiness-overview{{ with $labels.strategy }}?var-strategy=")
    assert by_alert[("TradingFailurePoint", "FP-1.3")]["annotations"]["runbook_url"] == (
        "https://wiki.example.com/tr/docs/FAILURE_POINTS.md#fp-13")
    assert by_alert[("Watchdog", None)]["annotations"]["runbook_url"] == (
        "https://wiki.example.com/tr/docs/runbooks.md#watchdog")
    check = subprocess.run([PROMTOOL, "check", "rules", str(out / "rules/trading-readiness.rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    am = yaml.safe_load((out / "alertmanager/alertmanager.yml").read_text())
    assert am["route"]["group_by"] == ["alertname", "fp", "strategy", "env"]
    assert all(rule["equal"] == ["strategy", "env"] for rule in am["inhibit_rules"])
    assert {rc["name"]: rc.get("webhook_configs", [{}])[0].get("url") for rc in am["receivers"]}["pager"] == (
        "https://pager.example.com/hook")
    check = subprocess.run([AMTOOL, "check-config", str(out / "alertmanager/alertmanager.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    for path in (out / "grafana/dashboards").glob("*.json"):
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets") or []]
        assert exprs and not any("trading-readiness\"" in e or "trading-healer\"" in e for e in exprs), path.name
        assert all('strategy=~"$bot"' in e for e in exprs), path.name
        assert [v["name"] for v in dash["templating"]["list"]][:3] == ["datasource", "env", "bot"]


def test_rules_rendered_with_group_by_keep_two_bots_apart(tmp_path: Path) -> None:
    """promtool unit test of the custom rules: two strategies on job `bots`, one instance."""
    mixin = tmp_path / "mixin.yaml"
    mixin.write_text(yaml.safe_dump(MIXIN))
    assert generate("--config", str(mixin), "--out", str(tmp_path)).returncode == 0

    def series(strategy: str, env: str, fp: str, value: int) -> dict[str, str]:
        return {"series": f'trading_failure_point_status{{job="bots", instance="h", strategy="{strategy}", '
                          f'env="{env}", team="x", fp="{fp}", category="c"}}', "values": f"{value}x20"}

    doc = {"rule_files": [str(tmp_path / "rules/trading-readiness.rules.yml")], "evaluation_interval": "15s",
           "tests": [{"interval": "15s",
                      "input_series": [series("momentum", "live", "FP-4.1", 2), series("momentum", "live", "FP-1.1", 0),
                                       series("momentum", "paper", "FP-4.1", 0)],
                      "promql_expr_test": [{"expr": "trading:readiness:status", "eval_time": "1m", "exp_samples": [
                          # group_by keeps exactly the listed labels: team, job and instance are gone
                          {"labels": 'trading:readiness:status{strategy="momentum", env="live"}', "value": 2},
                          {"labels": 'trading:readiness:status{strategy="momentum", env="paper"}', "value": 0}]}],
                      "alert_rule_test": [{"eval_time": "3m", "alertname": "TradingBlocked", "exp_alerts": [{
                          "exp_labels": {"severity": "critical", "strategy": "momentum", "env": "live"},
                          "exp_annotations": {
                              "summary": "Trading is BLOCKED on momentum",
                              "description": ("At least one failure point is ERROR on momentum, so the bot will "
                                              "not trade. The TradingFailurePoint alerts with severity critical "
                                              "name the points; `trading-readiness check` explains each one."),
                              "runbook_url": "https://wiki.example.com/tr/docs/runbooks.md#tradingblocked",
                              "dashboard": ("https://grafana.example.com/d/trading-readiness-overview"
                                            "?var-strategy=momentum")}}]}]}]}
    path = tmp_path / "custom.test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("text, message", [
    ("scrape_intervall: 1s\n", "unknown key 'scrape_intervall'"),
    ("alertmanager: {pager: http://x}\n", "unknown key 'alertmanager.pager'"),
    ("severity: {blocked: page, loud: critical}\n", "unknown key 'severity.loud'"),
    ("point_for: {FP-9.9: 1m}\n", "unknown key 'point_for.FP-9.9' (not a catalog failure point)"),
    ("point_for: {FP-1.3: soon}\n", "point_for.FP-1.3: not a Prometheus duration: 'soon'"),
    ("blocked_for: soon\n", "blocked_for: not a Prometheus duration: 'soon'"),
    ("alertmanager: {group_wait: 5}\n", "alertmanager.group_wait: expected a non-empty string, got 5"),
    ("group_by: [bot, 'not a label']\n", "group_by: expected null or a non-empty list of label names"),
    ("bot_label: bot-name\n", "bot_label: not a label name: 'bot-name'"),
    ("grafana_url: grafana.local\n", "grafana_url: expected an http(s) URL, got 'grafana.local'"),
    ('exporter_job: a"b\n', "exporter_job: must not contain quotes"),
    ("stale_factor: many\n", "stale_factor: expected a non-negative number, got 'many'"),
    ("stale_factor: true\n", "stale_factor: expected int, got True"),
    ("exporter_down_for: 20s\n", "exporter_down_for 20s is shorter than twice the scrape interval 15s"),
    ("stale_evaluation_interval: 0s\n", "stale_evaluation_interval must be positive"),
    ("stale_evaluation_interval: soon\n", "stale_evaluation_interval: not a Prometheus duration: 'soon'"),
    ("severity: critical\n", "severity: expected a mapping"),
    ("- a list\n", "expected a mapping of config keys, got list"),
    ("key: [unclosed\n", "not valid YAML"),
])
def test_a_bad_config_exits_3_with_one_line_naming_the_key_and_writes_nothing(
        tmp_path: Path, text: str, message: str) -> None:
    mixin = tmp_path / "mixin.yaml"
    mixin.write_text(text)
    out = tmp_path / "out"
    r = generate("--config", str(mixin), "--out", str(out))
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stderr.startswith(f"config error: {mixin}: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == "" and not out.exists()
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(mixin)


def test_a_missing_config_file_exits_3(tmp_path: Path) -> None:
    r = generate("--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert r.returncode == 3 and "nope.yaml: cannot read" in r.stderr and not (tmp_path / "out").exists()


def test_load_config_merges_nested_keys_and_is_a_value_error(tmp_path: Path) -> None:
    assert load_config(None) == CONFIG
    mixin = tmp_path / "m.yaml"
    mixin.write_text("alertmanager: {group_wait: 10s}\nseverity: {watchdog: none}\n")
    cfg = load_config(mixin)
    assert cfg["alertmanager"]["group_wait"] == "10s" and cfg["alertmanager"]["group_interval"] == "5m"
    assert cfg["severity"]["watchdog"] == "none" and cfg["severity"]["blocked"] == "critical"
    assert issubclass(ConfigError, ValueError)
    mixin.write_text("")  # an empty file is the defaults
    assert load_config(mixin) == CONFIG


def _keys(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _keys(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, v))
    return out


def test_docs_list_every_key_with_its_default() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text().split("## Mixin config", 1)[1]
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", doc, re.M))
    expected = {k: "null" if v is None else json.dumps(v) if isinstance(v, dict) else str(v) for k, v in _keys(CONFIG)}
    assert rows == expected


def test_the_staleness_alerts_run_in_their_own_group_at_the_configured_interval(tmp_path: Path) -> None:
    """They join every point of every bot: evaluated at stale_evaluation_interval, not every cycle."""
    mixin = tmp_path / "mixin.yaml"
    mixin.write_text("stale_evaluation_interval: 1m\n")
    assert generate("--config", str(mixin), "--out", str(tmp_path)).returncode == 0
    groups = yaml.safe_load((tmp_path / "rules/trading-readiness.rules.yml").read_text())["groups"]
    by_name = {g["name"]: g for g in groups}
    assert by_name["trading-readiness-staleness"]["interval"] == "1m"
    assert {r["alert"] for r in by_name["trading-readiness-staleness"]["rules"]} == {"TradingFailurePointStale"}
    others = [r for g in groups if g["name"] != "trading-readiness-staleness" for r in g["rules"]]
    assert not any(r.get("alert") == "TradingFailurePointStale" for r in others)
    assert all("interval" not in g for g in groups if g["name"] != "trading-readiness-staleness")
