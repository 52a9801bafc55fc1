"""State & Configuration FP-5.1 ... FP-5.4: each broken in the bot root, then recovered."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from exporter.core.model import Result, Status
from sandbox.botroot import BotRoot

from .conftest import check_json, clean_env, evaluate


def one(root: BotRoot, fp: str, **kw: object) -> Result:
    return evaluate(root.path, only=[fp], **kw).results[fp]  # type: ignore[arg-type]


def test_required_env_names_missing_variables_never_values(bot: BotRoot) -> None:
    assert one(bot, "FP-5.1").status is Status.OK
    bot.set_env(ALPACA_SECRET=None, UW_API_KEY=None)
    code, data = check_json(bot.path, "--only", "FP-5.1")
    point = data["failure_points"]["FP-5.1"]
    assert point["status"] == "ERROR" and code == 2
    assert "ALPACA_SECRET or ALPACA_API_SECRET or APCA_API_SECRET_KEY" in point["last_error"]
    assert "UW_API_KEY" in point["last_error"]
    assert point["details"]["present"] == {"ALPACA_KEY": ".env"}
    assert "PKTEST" not in json.dumps(data)
    # any alias satisfies it, from the process environment too
    bot.set_env(APCA_API_SECRET_KEY="SECRETTEST")
    r = one(bot, "FP-5.1", environ={"UW_API_KEY": "uw-test-token"})
    assert r.status is Status.OK and r.outcome.details["present"]["UW_API_KEY"] == "environment"
    assert "SECRETTEST" not in json.dumps(r.to_json()) and "uw-test-token" not in json.dumps(r.to_json())


def test_empty_value_counts_as_missing(bot: BotRoot) -> None:
    bot.set_env(UW_API_KEY='""')
    r = one(bot, "FP-5.1")
    assert r.status is Status.ERROR and r.outcome.details["missing"] == ["UW_API_KEY"]


@pytest.mark.parametrize("change, expected, text", [
    ({"MAX_CONCURRENT_POSITIONS": "sixteen"}, Status.ERROR, "MAX_CONCURRENT_POSITIONS='sixteen' is not an integer"),
    ({"MAX_CONCURRENT_POSITIONS": "0"}, Status.ERROR, "MAX_CONCURRENT_POSITIONS=0 is outside 1..200"),
    ({"MIN_EXEC_SCORE": "nan"}, Status.ERROR, "MIN_EXEC_SCORE='nan' is not a number"),
    ({"ENTRY_THRESHOLD_BASE": "27"}, Status.ERROR, "ENTRY_THRESHOLD_BASE=27 is outside 0..10"),
    ({"COOLDOWN_MINUTES_PER_TICKER": "-5"}, Status.ERROR, "COOLDOWN_MINUTES_PER_TICKER=-5 is outside"),
    ({"UW_DAILY_LIMIT": "5e4"}, Status.ERROR, "UW_DAILY_LIMIT='5e4' is not an integer"),
    ({"TRADING_MODE": "YOLO"}, Status.ERROR, "TRADING_MODE='YOLO' is not one of PAPER, LIVE"),
    ({"MAX_NEW_POSITIONS_PER_CYCLE": "20"}, Status.WARN, "exceeds MAX_CONCURRENT_POSITIONS=16"),
])
def test_invalid_configuration_values(bot: BotRoot, change: dict[str, str], expected: Status, text: str) -> None:
    bot.set_env(**change)
    r = one(bot, "FP-5.2")
    assert r.status is expected and text in r.outcome.message, r.outcome.message
    bot.set_env(**{k: None for k in change})  # unset: the bot's defaults apply
    r = one(bot, "FP-5.2")
    assert r.status is Status.OK and set(change) <= set(r.outcome.details["unset_use_bot_default"]) | {"TRADING_MODE"}


def test_corrupt_state_file_is_named_and_torn_reads_retried(bot: BotRoot) -> None:
    assert one(bot, "FP-5.3").status is Status.OK
    good = bot.p("state/health.json").read_text()
    bot.torn("state/health.json")
    code, data = check_json(bot.path, "--only", "FP-5.3")
    point = data["failure_points"]["FP-5.3"]
    assert point["status"] == "ERROR" and "state/health.json" in point["last_error"] and code == 2
    # a writer that finishes while we retry is not corruption
    fixer = threading.Timer(0.15, lambda: bot.p("state/health.json").write_text(good))
    fixer.start()
    try:
        r = one(bot, "FP-5.3")
    finally:
        fixer.join()
    assert r.status is Status.OK, r.outcome.message
    bot.p("state/kill_switch.json").write_text("")
    r = one(bot, "FP-5.3")
    # the unreadable kill switch halts trading and pages in FP-3.1, its own point, as in the whole cycle
    assert r.status is Status.WARN and "state/kill_switch.json" in r.outcome.message
    assert "ERROR in its own point: FP-3.1" in r.outcome.message
    bot.kill_switch(False)
    bot.p("state/self_healing_threshold.json").unlink()  # absent is FP-5.4's business, not corruption
    r = one(bot, "FP-5.3")
    assert r.status is Status.OK and r.outcome.details["absent"] == ["state/self_healing_threshold.json"]


def test_missing_required_files(bot: BotRoot) -> None:
    assert one(bot, "FP-5.4").status is Status.OK
    bot.p("main.py").unlink()
    shutil.rmtree(bot.p("logs"))
    bot.p("uw_flow_daemon.py").unlink()
    bot.p("uw_flow_daemon.py").mkdir()
    code, data = check_json(bot.path, "--only", "FP-5.4")
    point = data["failure_points"]["FP-5.4"]
    assert point["status"] == "ERROR" and code == 2
    for text in ("main.py", "uw_flow_daemon.py (not a file)", "logs/ (directory)"):
        assert text in point["last_error"]
    bot.p("main.py").write_text("# back\n")
    bot.p("uw_flow_daemon.py").rmdir()
    bot.p("uw_flow_daemon.py").write_text("# back\n")
    bot.p("logs").mkdir()
    assert one(bot, "FP-5.4").status is Status.OK


def test_a_torn_file_whose_own_point_pages_is_one_critical(bot: BotRoot) -> None:
    """Torn weights are FP-2.1's ERROR: FP-5.3 names the file as a warning, so one cause pages
    once. A corrupt file no other point pages for keeps FP-5.3 ERROR. `check --only FP-5.3` gives
    the verdict of the whole cycle (the owner is enabled, so it pages there), and a configuration
    that disables the owner keeps FP-5.3 ERROR."""
    bot.torn("state/signal_weights.json")
    report = evaluate(bot.path)
    assert report.results["FP-2.1"].status is Status.ERROR
    r = report.results["FP-5.3"]
    assert r.status is Status.WARN, r.outcome.message
    assert "state/signal_weights.json" in r.outcome.message and "ERROR in its own point: FP-2.1" in r.outcome.message
    assert "FP-5.3" not in report.to_json()["critical_fps"]
    code, data = check_json(bot.path, "--only", "FP-5.3")
    assert (code, data["failure_points"]["FP-5.3"]["status"]) == (0, "WARN")
    assert "ERROR in its own point: FP-2.1" in data["failure_points"]["FP-5.3"]["last_error"]
    cfg = bot.path / "no-fp21.yaml"
    cfg.write_text("checks:\n  FP-2.1: {enabled: false}\n")
    code, data = check_json(bot.path, "--only", "FP-5.3", env=clean_env(TRADING_READINESS_CONFIG=str(cfg)))
    assert (code, data["failure_points"]["FP-5.3"]["status"]) == (2, "ERROR")
    bot.torn("state/health.json")  # FP-6.7 only warns about it: FP-5.3 is where it pages
    r = evaluate(bot.path).results["FP-5.3"]
    assert r.status is Status.ERROR and "state/health.json" in r.outcome.message
    assert "state/signal_weights.json" in r.outcome.message
    bot.write_weights()
    bot.p("state/health.json").write_text("{}")
    assert evaluate(bot.path).results["FP-5.3"].status is Status.OK


def test_a_fresh_install_without_learned_weights_has_every_required_file(bot: BotRoot) -> None:
    """state/signal_weights.json is written only after the first learning update; main.py trades on
    built-in default weights until then, so its absence is neither a missing file nor corruption."""
    bot.p("state/signal_weights.json").unlink()
    r = one(bot, "FP-5.4")
    assert r.status is Status.OK, r.outcome.message
    r = one(bot, "FP-5.3")
    assert r.status is Status.OK and "state/signal_weights.json" in r.outcome.details["absent"]
    assert "FP-5.4" not in r.outcome.message, r.outcome.message
