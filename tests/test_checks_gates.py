"""Gates & Filters FP-3.3 ... FP-3.11: each broken from the bot's own files, then recovered."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from exporter.core.model import Readiness, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot, write_json
from sandbox.uw import FakeUW

from .conftest import check_json, evaluate, market_at
from .test_checks_data import CLOSED, OPEN, observed, run


@pytest.fixture
def sbot(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> BotRoot:
    market_at(alpaca, OPEN)
    root = BotRoot(tmp_path / "bot", now=OPEN.timestamp()).healthy(alpaca.url, uw.url)
    for rel in ("logs/run.jsonl", "state/blocked_trades.jsonl"):
        root.p(rel).unlink()
    return root


@pytest.mark.parametrize("fp, reason, text", [
    ("FP-3.3", "max_new_positions_per_cycle", "MAX_NEW_POSITIONS_PER_CYCLE=6"),
    ("FP-3.4", "expectancy_blocked:negative_ev", "expectancy gate; negative_ev 16"),
    ("FP-3.5", "regime_gate", "regime gate"),
    ("FP-3.6", "theme_gate", "theme risk limit"),
    ("FP-3.7", "symbol_on_cooldown", "COOLDOWN_MINUTES_PER_TICKER=15"),
])
def test_gate_refusing_most_candidates(sbot: BotRoot, alpaca: FakeAlpaca, fp: str, reason: str, text: str) -> None:
    t = OPEN.timestamp()
    # 8 cycles: 2 refused by the gate, 1 below the score, no order -> 16 of 24
    sbot.cycles_with_blocks(8, blocked={reason: 2, "score_below_min": 1}, orders=0, end=t)
    r = run(sbot, fp, alpaca)
    assert r.status is Status.WARN, r.outcome.message
    assert "16 of 24 recent candidates (67%)" in r.outcome.message and text in r.outcome.message
    label = reason.split(":")[0]
    assert [o.value for o in r.outcome.observations if o.name == "trading_gate_block_share"] == [
        pytest.approx(16 / 24, abs=1e-3)]
    assert dict(r.outcome.observations[0].labels) == {"gate": label}
    # outside the session nothing is judged
    r = run(sbot, fp, alpaca, when=CLOSED)
    assert r.status is Status.SKIPPED and "market closed" in r.outcome.message
    # orders flow again: the share falls below warn_share -> recovered
    sbot.cycles_with_blocks(6, orders=3, end=t + 360)
    r = run(sbot, fp, alpaca, when=OPEN + timedelta(seconds=360))
    assert r.status is Status.OK and "16 of 42" in r.outcome.message, r.outcome.message


def test_a_few_refusals_are_not_most(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.cycles_with_blocks(2, blocked={"regime_gate": 2}, orders=0, end=OPEN.timestamp())
    r = run(sbot, "FP-3.5", alpaca)
    assert r.status is Status.OK and "too few candidates to judge" in r.outcome.message


# --- FP-3.8 ----------------------------------------------------------------------------------
def test_self_healing_threshold_raised(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    assert run(sbot, "FP-3.8", alpaca).status is Status.OK
    sbot.self_healing(adjustment=0.5, activated_at=OPEN.timestamp() - 3600, losses=4)
    r = run(sbot, "FP-3.8", alpaca)
    assert r.status is Status.WARN, r.outcome.message
    assert "raised by 0.5 to 3.2" in r.outcome.message and "4 consecutive losses" in r.outcome.message
    assert {o.name: o.value for o in r.outcome.observations}["trading_entry_threshold_effective"] == 3.2
    # without the per-symbol file the base comes from ENTRY_THRESHOLD_BASE
    sbot.p("state/uw_thresholds_hierarchical.json").unlink()
    sbot.set_env(ENTRY_THRESHOLD_BASE="3.0")
    assert "to 3.5 (ENTRY_THRESHOLD_BASE 3" in run(sbot, "FP-3.8", alpaca).outcome.message
    # an adjustment that is not activated does not raise anything
    sbot.self_healing(adjustment=0.5, activated_at=None)
    assert run(sbot, "FP-3.8", alpaca).status is Status.OK
    sbot.torn("state/self_healing_threshold.json")
    assert run(sbot, "FP-3.8", alpaca).status is Status.WARN


# --- FP-3.9 ----------------------------------------------------------------------------------
def test_paper_mode_with_a_live_url_through_the_cli(sbot: BotRoot) -> None:
    sbot.set_env(ALPACA_BASE_URL=' "https://api.alpaca.markets" ')
    code, data = check_json(sbot.path, "--only", "FP-3.9")
    fp = data["failure_points"]["FP-3.9"]
    assert fp["status"] == "ERROR" and code == 2
    assert "ALPACA_BASE_URL" in fp["last_error"] and "bot refuses to run" in fp["last_error"]
    assert "SECRETTEST" not in str(data)
    sbot.set_env(ALPACA_BASE_URL=None, APCA_API_BASE_URL="https://paper-api.alpaca.markets/")
    code, data = check_json(sbot.path, "--only", "FP-3.9")
    assert data["failure_points"]["FP-3.9"]["status"] == "OK" and code == 0


def test_live_mode_with_the_paper_url_warns(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    sbot.set_env(ALPACA_BASE_URL="https://paper-api.alpaca.markets", TRADING_MODE="live")
    r = run(sbot, "FP-3.9", alpaca)
    assert r.status is Status.WARN and "paper account" in r.outcome.message
    sbot.set_env(TRADING_MODE="PAPER")
    assert run(sbot, "FP-3.9", alpaca).status is Status.OK


# --- FP-3.1: a freezes file the bot cannot use --------------------------------------------------
@pytest.mark.parametrize(("content", "found"), [("[]", "an array"), ("true", "a boolean"), ('"x"', "a string"),
                                                ('["performance_freeze"]', "an array"), ("null", "null")])
def test_a_non_object_freezes_file_is_no_freeze_to_the_bot(sbot: BotRoot, alpaca: FakeAlpaca, content: str,
                                                             found: str) -> None:
    """monitoring_guards.check_freeze_state (called by main.py every cycle) loads
    governor_freezes.json with safe_json_load(default={}) and replaces a non-object with {}: the
    bot trades. That is a file to look at (WARN), not a freeze (ERROR, BLOCKED)."""
    sbot.p("state/governor_freezes.json").write_text(content)
    rep = evaluate(sbot.path, only=["FP-3.1", "FP-3.10", "FP-3.11"], clock=market_at(alpaca, OPEN))
    r = rep.results["FP-3.1"]
    assert r.status is Status.WARN, r.outcome.message
    assert "governor_freezes.json" in r.outcome.message and found in r.outcome.message
    assert "reads it as no freeze" in r.outcome.message
    assert observed(r, "trading_freezes_active") == {(): 0}
    assert rep.readiness is not Readiness.BLOCKED
    # a real blocker beside it is still the error, and the file is still named
    sbot.safe_mode()
    rep = evaluate(sbot.path, only=["FP-3.1", "FP-3.10", "FP-3.11"], clock=market_at(alpaca, OPEN))
    r = rep.results["FP-3.11"]
    assert r.status is Status.ERROR and r.outcome.details["blocking"] == [
        "safe mode flag present (state/health_safe_mode.flag)"]  # the freezes file blocks nothing
    assert "also blocking" not in r.outcome.message and "reads it as no freeze" in r.outcome.message  # not hidden
    alone = evaluate(sbot.path, only=["FP-3.1"], clock=market_at(alpaca, OPEN)).results["FP-3.1"]
    assert alone.status is Status.ERROR and "safe mode" in alone.outcome.message
    assert "governor_freezes.json" in alone.outcome.message


def test_an_unparseable_freezes_file_is_no_freeze_to_the_bot(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """safe_json_load returns its default {} for a file that does not parse (after our torn-read
    retries it is really corrupt): the bot trades, and any freeze the file held is not in force."""
    sbot.p("state/governor_freezes.json").write_text('{"production_freeze": tr')
    r = evaluate(sbot.path, only=["FP-3.1"], clock=market_at(alpaca, OPEN)).results["FP-3.1"]
    assert r.status is Status.WARN, r.outcome.message
    assert "not valid JSON" in r.outcome.message and "reads it as no freeze" in r.outcome.message
    for only in (["FP-3.1", "FP-5.3"], ["FP-5.3"]):  # FP-5.3 names it, as a warning, with or without FP-3.1
        rep = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN))
        r = rep.results["FP-5.3"]
        assert r.status is Status.WARN and "state/governor_freezes.json" in r.outcome.message, r.outcome.message
        assert "ERROR" not in r.outcome.message and "as no freeze" in r.outcome.message
        assert rep.readiness is not Readiness.BLOCKED
    sbot.p("state/governor_freezes.json").write_text("{}")
    assert evaluate(sbot.path, only=["FP-3.1"], clock=market_at(alpaca, OPEN)).results["FP-3.1"].status is Status.OK


# --- FP-3.10 / FP-3.11 with FP-3.1: one cause, one critical ------------------------------------
def test_kill_switch_is_one_critical_and_names_other_blockers(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-3.1", "FP-3.10", "FP-3.11"]
    sbot.kill_switch(True)
    sbot.freeze("daily_loss_pct_limit", reason="-3.1%")
    rep = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN))
    r = rep.results
    assert r["FP-3.10"].status is Status.ERROR
    assert "kill switch enabled" in r["FP-3.10"].outcome.message
    assert "freeze daily_loss_pct_limit (-3.1%)" in r["FP-3.10"].outcome.message  # nothing hidden
    assert r["FP-3.1"].status is Status.SKIPPED and r["FP-3.1"].outcome.message == "depends on FP-3.10"
    assert rep.to_json()["critical_fps"] == ["FP-3.10"]
    # run alone, FP-3.1 still names the kill switch
    alone = evaluate(sbot.path, only=["FP-3.1"], clock=market_at(alpaca, OPEN)).results["FP-3.1"]
    assert alone.status is Status.ERROR and "kill switch enabled" in alone.outcome.message
    sbot.kill_switch(False)
    r = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN)).results
    assert r["FP-3.10"].status is Status.OK
    assert r["FP-3.1"].status is Status.ERROR and "daily_loss_pct_limit" in r["FP-3.1"].outcome.message


def test_safe_mode_on_its_own(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-3.1", "FP-3.10", "FP-3.11"]
    sbot.safe_mode()
    rep = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN))
    assert rep.results["FP-3.11"].status is Status.ERROR
    assert rep.results["FP-3.1"].status is Status.SKIPPED
    assert rep.readiness is Readiness.BLOCKED and rep.to_json()["critical_count"] == 1
    sbot.p("state/health_safe_mode.flag").unlink()
    rep = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN))
    assert {r.status for r in rep.results.values()} == {Status.OK}
    sbot.p("state/kill_switch.json").write_text("{torn")
    r = evaluate(sbot.path, only=only, clock=market_at(alpaca, OPEN)).results["FP-3.10"]
    assert r.status is Status.ERROR and "unreadable" in r.outcome.message


@pytest.mark.parametrize("value, halted", [
    (True, True), (1, True), ("false", True), ("yes", True),  # any truthy value halts the bot
    (False, False), (0, False), (None, False), ("", False),  # any falsy value is off to the bot
])
def test_kill_switch_follows_the_bots_truthiness(sbot: BotRoot, alpaca: FakeAlpaca, value: object,
                                                 halted: bool) -> None:
    """policy_variants.kill_switch_active halts on bool(data.get("enabled", False))."""
    write_json(sbot.p("state/kill_switch.json"), {"enabled": value})
    r = evaluate(sbot.path, only=["FP-3.10"], clock=market_at(alpaca, OPEN)).results["FP-3.10"]
    assert r.status is (Status.ERROR if halted else Status.OK), r.outcome.message
    if halted and value is not True:
        assert "which the bot reads as on" in r.outcome.message
    sbot.p("state/kill_switch.json").write_text("[true]")  # not an object: the bot fails closed
    r = evaluate(sbot.path, only=["FP-3.10"], clock=market_at(alpaca, OPEN)).results["FP-3.10"]
    assert r.status is Status.ERROR and "is not a JSON object" in r.outcome.message


# --- FP-3.12: the audit guard answers orders with mocks -----------------------------------------
def test_audit_guard_switches_stop_real_orders(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """src/audit_guard.py: AUDIT_DRY_RUN makes every order a mock, AUDIT_MODE also refuses the rest."""
    r = run(sbot, "FP-3.12", alpaca)
    assert r.status is Status.OK, r.outcome.message
    assert observed(r, "trading_orders_dry_run") == {(): 0}
    sbot.set_env(AUDIT_DRY_RUN="true")
    r = run(sbot, "FP-3.12", alpaca)
    assert r.status is Status.ERROR and r.outcome.message == (
        "audit guard on: AUDIT_DRY_RUN=true (from .env): every order is a mock, nothing reaches Alpaca")
    assert observed(r, "trading_orders_dry_run") == {(): 1}
    sbot.set_env(AUDIT_DRY_RUN="0", AUDIT_MODE="YES")  # "0" is off to the bot, any case of yes is on
    r = run(sbot, "FP-3.12", alpaca)
    assert r.status is Status.ERROR and "AUDIT_MODE=YES (from .env): entries are mocks and every other order " \
        "is refused" in r.outcome.message and "AUDIT_DRY_RUN" not in r.outcome.message
    sbot.set_env(AUDIT_MODE=None, AUDIT_DRY_RUN=None)
    # the bot's process environment counts before .env, as the bot reads it
    rep = evaluate(sbot.path, only=["FP-3.12"], clock=market_at(alpaca, OPEN), environ={"AUDIT_DRY_RUN": "1"})
    assert "AUDIT_DRY_RUN=1 (from environment)" in rep.results["FP-3.12"].outcome.message
    assert rep.readiness is Readiness.BLOCKED
    assert run(sbot, "FP-3.12", alpaca).status is Status.OK


def test_dry_run_orders_in_the_bots_log(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    """A switch set in the bot's systemd unit is invisible here; the mocks main.py logs are not."""
    t = OPEN.timestamp()
    sbot.order("AMD", at=t - 600)
    for i, symbol in enumerate(("NVDA", "TSLA")):
        sbot.order(symbol, at=t - 120 + i * 60, action="audit_dry_run", dry_run=True,
                   order_id=f"AUDIT-DRYRUN-{i:012d}")
    r = run(sbot, "FP-3.12", alpaca)
    assert r.status is Status.ERROR, r.outcome.message
    assert r.outcome.message.startswith("the bot's latest orders are audit dry-run mocks (2 in the last 900 s, "
                                        "newest TSLA at ")
    # a real order after the mocks: the guard is off again
    sbot.order("AAPL", at=t - 30)
    r = run(sbot, "FP-3.12", alpaca)
    assert r.status is Status.OK and r.outcome.details["dry_run_orders"] == 2, r.outcome.message
    # mocks older than the window are history
    r = run(sbot, "FP-3.12", alpaca, when=OPEN + timedelta(hours=1))
    assert r.status is Status.OK and r.outcome.details["dry_run_orders"] == 0


def test_unreadable_order_log_is_a_warning_naming_it(sbot: BotRoot, alpaca: FakeAlpaca) -> None:
    log = sbot.p("logs/orders.jsonl")
    log.unlink(missing_ok=True)
    log.mkdir()
    r = run(sbot, "FP-3.12", alpaca)
    assert r.status is Status.WARN and "logs/orders.jsonl" in r.outcome.message, r.outcome.message
    assert r.outcome.message.startswith("cannot tell whether orders are mocks: ")
