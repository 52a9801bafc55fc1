"""The generated Prometheus rules: promtool validation, promtool unit tests, drift, a real Prometheus.

What the operator relies on: the recording rule computes the same verdict as the exporter, every
alert fires when it should and not otherwise (rules/tests/readiness.test.yml, run by promtool),
every per-point alert renders its annotations and healer label, and a real Prometheus scraping a
real exporter pages TradingBlocked when a critical point breaks and resolves it when it is fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.core.catalog import load
from rules import generate as rulegen
from sandbox.botroot import BotRoot

from .conftest import Procs, wait_for
from .prom import PROMETHEUS, Prometheus
from .test_exporter import Exporter, fast_config

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / rulegen.RULES_PATH
UNIT_TESTS = sorted((REPO / "rules" / "tests").glob("*.test.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool not installed (make system-deps)")


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_committed_rules_match_the_catalog() -> None:
    fresh = rulegen.artefacts()
    drifted = []
    for rel, text in fresh.items():
        path = REPO / rel
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if not path.is_file() or path.read_text() != text:
            drifted.append(rel)
    assert not drifted, f"{drifted} drifted from exporter/catalog.yaml: run `make generate`"


def test_promtool_check_rules_passes() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    # every catalog point has its two levels, plus the readiness, meta and recording rules
    assert f"SUCCESS: {2 * len(load()) + 9} rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests under rules/tests/"
    r = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_unit_tests_catch_an_off_by_one_threshold(tmp_path: Path) -> None:
    """The truth table is not vacuous: `>=` instead of `>` max_warnings makes it fail."""
    text = RULES.read_text()
    threshold = "> bool ignoring (fp, category, name, healer)"
    assert threshold in text
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(text.replace(threshold, ">=" + threshold[1:]))
    (tmp_path / "rules" / "tests").mkdir()
    # the truth table is readiness.test.yml's (fleet.test.yml tests the labels that keep bots apart)
    table = REPO / "rules" / "tests" / "readiness.test.yml"
    assert table in UNIT_TESTS and "warn_at_threshold" in table.read_text()
    shutil.copy(table, tmp_path / "rules" / "tests" / table.name)
    r = promtool("test", "rules", str(tmp_path / "rules" / "tests" / table.name))
    assert r.returncode != 0 and "warn_at_threshold" in r.stdout + r.stderr, r.stdout + r.stderr


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    by_group = {g["name"]: g for g in groups}
    first = by_group["trading-readiness"]["rules"]
    # the recording rule evaluates before the alerts that read it, in the same group
    assert first[0]["record"] == "trading:readiness:status"
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert names == {"TradingBlocked", "TradingDegraded", "TradingFailurePoint", "TradingReadinessExporterDown",
                     "TradingFailurePointStale", "TradingHealerGaveUp", "TradingHealerStuck", "Watchdog"}
    docs = (REPO / "docs" / "FAILURE_POINTS.md").read_text()
    for a in alerts:
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert a["annotations"].get(key), (a["alert"], key)
    cat = load()
    fp_alerts = [a for a in alerts if a["alert"] == "TradingFailurePoint"]
    assert sorted((a["labels"]["fp"], a["labels"]["severity"]) for a in fp_alerts) == sorted(
        (p.id, sev) for p in cat for sev in ("critical", "warning"))
    for a in fp_alerts:
        p = cat[a["labels"]["fp"]]
        assert a["labels"]["category"] == p.category
        assert a["for"] == p.alert_for
        assert a["annotations"]["runbook_url"].endswith(f"FAILURE_POINTS.md#{p.anchor}")
        assert f"### {p.id}\n" in docs  # the anchor's section exists
    scrape = rulegen.duration_seconds(rulegen.CONFIG["scrape_interval"])
    down = next(a for a in alerts if a["alert"] == "TradingReadinessExporterDown")
    assert rulegen.duration_seconds(down["for"]) >= 2 * scrape


def _fp_alert(p: Any, inst: str, severity: str, level: str, healer: str, target: dict[str, str]) -> dict[str, Any]:
    labels = {"severity": severity, "fp": p.id, "category": p.category, "job": "trading-readiness", "instance": inst,
              **target}
    if healer:
        labels["healer"] = healer
    text = p.levels.get(level.lower()) or f"{p.id} reports {level}."
    tail = f" Healer: {healer}." if healer else " No healer is configured: a human must fix it."
    return {"exp_labels": labels, "exp_annotations": {
        "summary": f"{p.id} {p.name}: {level} on {target.get('bot', inst)}",
        "description": (f"{p.detects} {text} The reason is in /api/failure_points and "
                        f"`trading-readiness check --only {p.id}`.{tail}"),
        "runbook_url": f"{rulegen.CONFIG['runbook_base_url']}/FAILURE_POINTS.md#{p.anchor}"}}


def test_every_failure_point_alert_fires_with_its_labels_and_annotations(tmp_path: Path) -> None:
    """All points ERROR on one instance and WARN on another: 2 alerts per point, all rendered.

    On instance `err` every point with a catalog healer has it configured, so the healer label is
    present; on `warn` no healer is configured, so the label is absent. `err` is a bot named by
    its target labels (bot, env): every alert keeps them and its summary names the bot; `warn`
    has none, so its summaries name the instance.
    """
    cat = load()
    series = []
    expected = []
    for p in cat:
        for inst, value, healer, target in (("err", 2, p.healer or "", {"bot": "alpha", "env": "live"}),
                                            ("warn", 1, "", {})):
            extra = "".join(f', {k}="{v}"' for k, v in target.items())
            series.append({"series": (f'trading_failure_point_status{{job="trading-readiness", instance="{inst}"{extra}, '
                                      f'fp="{p.id}", category="{p.category}"}}'), "values": f"{value}x20"})
            series.append({"series": (f'trading_failure_point_info{{job="trading-readiness", instance="{inst}"{extra}, '
                                      f'fp="{p.id}", name="{p.name}", category="{p.category}", '
                                      f'healer="{healer}"}}'), "values": "1x20"})
            level, sev = ("ERROR", "critical") if value == 2 else ("WARN", "warning")
            expected.append(_fp_alert(p, inst, sev, level, healer, target))
    longest = max(rulegen.duration_seconds(p.alert_for) for p in cat)
    doc = {"rule_files": [str(RULES)], "evaluation_interval": "15s", "tests": [{
        "interval": "15s", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "0s", "alertname": "TradingFailurePoint", "exp_alerts": []} if longest > 0 else
            {"eval_time": "0s", "alertname": "TradingFailurePoint", "exp_alerts": expected},
            {"eval_time": f"{int(longest) + 15}s", "alertname": "TradingFailurePoint", "exp_alerts": expected},
        ]}]}
    path = tmp_path / "fp.test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = promtool("test", "rules", str(path), cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_render_stack_for_tests_and_demos(tmp_path: Path) -> None:
    out = rulegen.render_stack(scrape_interval="1s", alert_for="2s", webhook_base_url="http://127.0.0.1:5999/",
                               healer_url="http://127.0.0.1:5998/alertmanager",
                               healer_token_file=tmp_path / "token", notify_interval="1s", out_dir=tmp_path)
    assert set(out) == {"trading-readiness.rules.yml", "alertmanager.yml"}
    r = promtool("check", "rules", str(tmp_path / "trading-readiness.rules.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    rules = [r for g in yaml.safe_load(out["trading-readiness.rules.yml"])["groups"] for r in g["rules"]]
    fors = {r["alert"]: r.get("for") for r in rules if "alert" in r}
    assert fors["TradingBlocked"] == fors["TradingFailurePoint"] == fors["TradingFailurePointStale"] == "2s"
    assert fors["TradingReadinessExporterDown"] == "2s"  # never below twice the scrape interval
    stale = next(r for r in rules if r.get("alert") == "TradingFailurePointStale")
    assert stale["expr"].endswith("_seconds{job=\"trading-readiness\"} + 60))")  # a check's timeout is not stale
    short = rulegen.render_stack(scrape_interval="1s", alert_for="2s", stale_slack_seconds=0.5)
    assert "interval_seconds{job=\"trading-readiness\"} + 1)" in short["trading-readiness.rules.yml"]
    am = yaml.safe_load(out["alertmanager.yml"])
    urls = {rc["name"]: rc["webhook_configs"][0]["url"] for rc in am["receivers"] if "webhook_configs" in rc}
    assert urls == {"pager": "http://127.0.0.1:5999/pager", "ticket": "http://127.0.0.1:5999/ticket",
                    "heartbeat": "http://127.0.0.1:5999/heartbeat", "healer": "http://127.0.0.1:5998/alertmanager"}
    healer = next(rc for rc in am["receivers"] if rc["name"] == "healer")["webhook_configs"][0]
    assert healer["http_config"]["authorization"]["credentials_file"] == str(tmp_path / "token")
    assert am["route"]["group_wait"] == "0s" and am["route"]["repeat_interval"] == "1s"


@pytest.mark.parametrize("overrides, message", [
    ({"scrape_interval": "1m"}, "exporter_down_for 1m is shorter than twice the scrape interval 1m"),
    ({"stale_slack_seconds": 5}, "stale_slack_seconds 5 is shorter than the scrape interval 15s"),
    ({"blocked_for": "soon"}, "not a Prometheus duration: 'soon'"),
])
def test_config_refuses_what_would_flap(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rulegen.config(**overrides)
    with pytest.raises(KeyError, match="unknown rule config keys"):
        rulegen.config(scrape_intervall="1s")


# --- a real Prometheus ----------------------------------------------------------------------------
@pytest.fixture
def stack(bot: BotRoot, running: Procs, tmp_path: Path) -> Iterator[tuple[Exporter, Prometheus]]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("Debian prometheus not installed (make system-deps)")
    fast_config(bot.path)
    rulegen.render_stack(scrape_interval="1s", alert_for="2s", out_dir=tmp_path / "rules")
    exp = Exporter(bot.path, tmp_path / "serve.log")
    prom: Prometheus | None = None
    try:
        wait_for(exp.ready, timeout=30, what="exporter ready")
        prom = Prometheus(tmp_path, f"127.0.0.1:{exp.port}", [tmp_path / "rules" / rulegen.RULES_FILE])
        wait_for(prom.ready, timeout=30, what="prometheus ready")
        yield exp, prom
    finally:
        if prom is not None:
            prom.stop()
        exp.stop()


def test_real_prometheus_pages_blocked_on_a_freeze_and_resolves_it(stack: tuple[Exporter, Prometheus],
                                                                    bot: BotRoot, running: Procs) -> None:
    exp, prom = stack
    instance = f"127.0.0.1:{exp.port}"

    def verdicts() -> tuple[str, str] | None:
        rec = prom.query("trading:readiness:status")
        own = prom.query("trading_readiness_status")
        if not rec or not own:
            return None
        return rec[0]["value"][1], own[0]["value"][1]

    # healthy: the recording rule says READY, agreeing with the exporter's own verdict
    wait_for(lambda: verdicts() == ("0", "0"), timeout=30, what="READY in Prometheus", every=0.2)
    assert prom.query("trading:readiness:status")[0]["metric"] == {
        "__name__": "trading:readiness:status", "job": "trading-readiness", "instance": instance}
    assert prom.alerts("TradingBlocked") == [] and prom.alerts("TradingBlocked", "pending") == []

    bot.freeze()
    wait_for(lambda: prom.alerts("TradingBlocked"), timeout=30, what="TradingBlocked firing", every=0.2)
    assert prom.alerts("TradingBlocked") == [{"alertname": "TradingBlocked", "severity": "critical",
                                              "job": "trading-readiness", "instance": instance}]
    assert verdicts() == ("2", "2")
    fp = wait_for(lambda: prom.alerts("TradingFailurePoint"), timeout=15, what="FP-3.1 firing", every=0.2)
    assert [(a["fp"], a["severity"], a.get("healer")) for a in fp] == [("FP-3.1", "critical", None)]

    (bot.path / "state" / "governor_freezes.json").write_text("{}")
    # the groups evaluate at their own offsets within the interval: wait for both to resolve
    wait_for(lambda: not prom.alerts("TradingBlocked") and not prom.alerts("TradingBlocked", "pending")
             and not prom.alerts("TradingFailurePoint"), timeout=30, what="TradingBlocked resolved", every=0.2)
    assert verdicts() == ("0", "0")

    # the UW daemon dies: FP-1.1 has a healer configured (the built-in systemd restart), so its
    # alert carries the healer label that routes it to the healer as well
    daemon = running.procs[0]
    daemon.kill()
    daemon.wait(timeout=5)

    def fp11() -> list[dict[str, str]]:
        return [a for a in prom.alerts("TradingFailurePoint") if a["fp"] == "FP-1.1"]

    (alert,) = wait_for(fp11, timeout=30, what="FP-1.1 firing", every=0.2)
    assert alert["healer"] == "restart-uw-daemon" and alert["severity"] == "critical"

    # the exporter dies: Prometheus pages that readiness is unknown rather than keeping READY
    exp.stop()
    down = wait_for(lambda: prom.alerts("TradingReadinessExporterDown"), timeout=30, what="exporter down",
                    every=0.2)
    assert down == [{"alertname": "TradingReadinessExporterDown", "severity": "critical",
                     "job": "trading-readiness", "instance": instance}]
