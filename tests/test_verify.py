"""`verify`: one record per run, crash-safe result files, verdict by readiness (issue #8)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.tools.verify import PAUSE_ENV, validate_alerting
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot

from .conftest import REPO, Procs, clean_env, run_cli

pytestmark = pytest.mark.usefixtures("uw")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def market_open(alpaca: FakeAlpaca) -> None:
    now = time.time()
    alpaca.clock = {"is_open": True, "next_close": iso(now + 3 * 3600), "next_open": iso(now + 86400)}


def files(bot: BotRoot) -> tuple[Path, Path, Path]:
    d = bot.p("data")
    return (d / "trading_verification_latest.json", d / "trading_verification_results.jsonl",
            d / "trading_verification_results.json")


def history(bot: BotRoot) -> list[dict[str, Any]]:
    """Every line of the history must be a whole JSON record."""
    text = files(bot)[1].read_text()
    assert text == "" or text.endswith("\n"), "torn last line"
    return [json.loads(line) for line in text.splitlines()]


def verify(bot: BotRoot, *extra: str) -> tuple[int, dict[str, Any]]:
    r = run_cli("--bot-root", str(bot.path), "verify", "--json", *extra)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_ready_bot_verifies_ready_and_writes_the_record(running: Procs, bot: BotRoot, alpaca: FakeAlpaca) -> None:
    market_open(alpaca)
    code, record = verify(bot)
    assert code == 0, record["verification"]["reasons"]
    assert record["readiness"] == "READY" and record["exit_code"] == 0
    assert record["probe"]["outcome"] == "execute"
    assert record["total_checked"] > 20
    latest, hist, legacy = files(bot)
    assert json.loads(latest.read_text()) == record
    assert json.loads(legacy.read_text()) == record
    assert history(bot) == [record]
    assert alpaca.submitted_orders == []
    # a second run appends, the latest is replaced; the text report is readable
    r = run_cli("--bot-root", str(bot.path), "verify")
    assert r.returncode == 0
    assert "verification: READY (exit 0)" in r.stdout and "probe: would execute" in r.stdout
    assert len(history(bot)) == 2
    assert json.loads(latest.read_text()) == history(bot)[-1]
    # nothing but the three record files (and no temp file) was added to data/
    assert sorted(p.name for p in bot.p("data").iterdir() if "verification" in p.name) == sorted(
        p.name for p in files(bot))


def test_blocked_probe_makes_verify_blocked(running: Procs, bot: BotRoot, alpaca: FakeAlpaca) -> None:
    market_open(alpaca)
    alpaca.account = {**alpaca.account, "buying_power": "100.00"}  # checks may warn; the probe must block
    code, record = verify(bot)
    assert code == 2
    assert record["readiness"] == "BLOCKED"
    assert record["probe"]["blocked_stage"] == "execution"
    assert any("insufficient buying power" in r for r in record["verification"]["reasons"])
    assert history(bot)[-1]["readiness"] == "BLOCKED"


def test_probe_symbol_on_cooldown_degrades_but_does_not_block(running: Procs, bot: BotRoot,
                                                              alpaca: FakeAlpaca) -> None:
    """The bot just traded the probe's symbol: that one symbol is refused, every other still trades."""
    market_open(alpaca)
    bot.block("symbol_on_cooldown", at=time.time() - 120, symbol="SPY", score=3.1)
    code, record = verify(bot)
    assert record["probe"]["outcome"] == "blocked" and record["probe"]["blocked_stage"] == "gates"
    assert code == 1 and record["readiness"] == "DEGRADED", record["verification"]["reasons"]
    assert any("per-ticker cooldown" in r for r in record["verification"]["reasons"])


def test_checks_blocked_exit_2_and_config_error_exit_3(bot: BotRoot, tmp_path: Path) -> None:
    # no daemon and no bot process running: the checks say BLOCKED
    code, record = verify(bot)
    assert code == 2 and record["checks_readiness"] == "BLOCKED"
    assert "FP-1.1" in record["critical_fps"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("readiness:\n  max_warningz: 3\n")
    r = run_cli("--config", str(bad), "--bot-root", str(bot.path), "verify")
    assert r.returncode == 3
    assert "unknown key 'readiness.max_warningz'" in r.stderr and "Traceback" not in r.stderr
    assert len(history(bot)) == 1  # a config error writes no record


def _run_until_paused(bot: BotRoot, point: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--bot-root", str(bot.path), "verify"],
                            cwd=REPO, env=clean_env(**{PAUSE_ENV: point}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.strip() == f"verify paused at {point}", line
    return proc


@pytest.mark.parametrize("point", ["latest_mid_write", "latest_before_replace", "before_append",
                                   "legacy_mid_write"])
def test_killed_during_the_write_leaves_previous_record_and_whole_lines(bot: BotRoot, point: str) -> None:
    code, first = verify(bot)
    latest, hist, legacy = files(bot)
    before_latest = latest.read_bytes()
    proc = _run_until_paused(bot, point)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if point == "legacy_mid_write":  # the latest and the history line were already written
        assert json.loads(latest.read_text())["verification"] != first["verification"]
        assert len(history(bot)) == 2
    elif point == "before_append":  # the latest was replaced whole; the history line not yet written
        assert json.loads(latest.read_text())["verification"] != first["verification"]
        assert len(history(bot)) == 1
    else:
        assert latest.read_bytes() == before_latest
        assert len(history(bot)) == 1
    assert json.loads(legacy.read_text())["verification"] == first["verification"]
    # the next run cleans up after itself and writes a full record
    assert list(bot.p("data").glob(".trading_verification_*.tmp")) or point == "before_append"
    code, again = verify(bot)
    assert json.loads(latest.read_text()) == again == history(bot)[-1]
    assert list(bot.p("data").glob(".trading_verification_*.tmp")) == []


def test_random_kills_never_tear_the_files(bot: BotRoot) -> None:
    verify(bot)
    latest, hist, legacy = files(bot)
    rng = random.Random(8)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "--bot-root", str(bot.path), "verify"],
                                cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.2))
        proc.kill()
        proc.wait(timeout=10)
        json.loads(latest.read_text())
        json.loads(legacy.read_text())
        assert history(bot)


def test_rule_and_alertmanager_validation(tmp_path: Path) -> None:
    assert {t.status for t in validate_alerting(tmp_path)} == {"skipped"}
    (tmp_path / "rules").mkdir()
    (tmp_path / "alertmanager").mkdir()
    (tmp_path / "rules" / "good.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - record: trading:x:sum\n    expr: sum(up)\n")
    (tmp_path / "alertmanager" / "alertmanager.yml").write_text(
        "route:\n  receiver: r\nreceivers:\n- name: r\n")
    checks = {t.name: t for t in validate_alerting(tmp_path)}
    assert checks["rules"].status == "ok", checks["rules"].message
    assert checks["alertmanager"].status == "ok", checks["alertmanager"].message
    (tmp_path / "rules" / "bad.yml").write_text("groups:\n- name: g\n  rules:\n  - record: x\n    expr: sum(\n")
    (tmp_path / "alertmanager" / "alertmanager.yml").write_text("route:\n  receiver: nobody\n")
    checks = {t.name: t for t in validate_alerting(tmp_path)}
    assert checks["rules"].status == "failed" and "bad.yml" in checks["rules"].message
    assert checks["alertmanager"].status == "failed"


def test_verify_validates_the_configured_alerting_files(running: Procs, bot: BotRoot, alpaca: FakeAlpaca) -> None:
    """The files this bot's Prometheus and Alertmanager load, named in the config (relative to the
    bot root), not the checkout's: a broken one degrades a READY verdict, a missing one is named."""
    market_open(alpaca)
    bot.p("prom").mkdir()
    (bot.p("prom") / "ours.yml").write_text((REPO / "rules" / "trading-readiness.rules.yml").read_text())
    (bot.p("prom") / "broken.yml").write_text("groups:\n- name: g\n  rules:\n  - record: x\n    expr: sum(\n")
    config = bot.p("trading-readiness.yaml")  # found in the bot root, as an operator would keep it
    config.write_text("verify:\n  rule_files: [prom/ours.yml]\n  alertmanager_config: am/alertmanager.yml\n")
    code, record = verify(bot)
    tools = {t["name"]: t for t in record["rule_validation"]}
    assert tools["rules"]["status"] == "ok", tools
    assert tools["alertmanager"]["status"] == "failed"
    assert tools["alertmanager"]["message"] == f"configured file not found: {bot.p('am/alertmanager.yml')}"
    assert (code, record["readiness"]) == (1, "DEGRADED"), record["verification"]["reasons"]
    bot.p("am").mkdir()
    (bot.p("am") / "alertmanager.yml").write_text((REPO / "alertmanager" / "alertmanager.yml").read_text())
    config.write_text("verify:\n  rule_files: [prom/ours.yml, prom/broken.yml]\n"
                      "  alertmanager_config: am/alertmanager.yml\n")
    code, record = verify(bot)
    tools = {t["name"]: t for t in record["rule_validation"]}
    assert tools["alertmanager"]["status"] == "ok", tools
    assert tools["rules"]["status"] == "failed" and "broken.yml" in tools["rules"]["message"]
    assert code == 1 and "rules validation failed" in " ".join(record["verification"]["reasons"])
    config.write_text("verify:\n  rule_files: []\n")
    r = run_cli("--bot-root", str(bot.path), "verify")
    assert r.returncode == 3
    assert r.stderr.strip().endswith(f"key 'verify.rule_files' in {config} must be a non-empty list of file paths")
