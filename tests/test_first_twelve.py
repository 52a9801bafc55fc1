"""The first twelve failure points on the stock-bot layout, broken in every way BOT.md describes.

Every way goes through the real CLI as a subprocess (`check --json`, exit code asserted); the
variants and the recoveries run the same engine in-process. Everything is real: files in a
temporary bot root, processes, loopback Alpaca and UW servers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.core.model import Readiness, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot, write_json
from sandbox.factories import make_position
from sandbox.uw import FakeUW

from .conftest import Procs, check_json, clean_env, evaluate, run_cli, wait_for

TWELVE = ["FP-1.1", "FP-1.2", "FP-1.3", "FP-1.4", "FP-1.5", "FP-2.1", "FP-3.1", "FP-3.2", "FP-4.1", "FP-4.2",
          "FP-4.3", "FP-6.1"]


def market(alpaca: FakeAlpaca, is_open: bool) -> None:
    """The broker says the market is open (or closed) now. Its clock's ``timestamp`` stays live
    (the fake's own time), so clock-skew points see no skew however long the test runs."""
    now = datetime.now(UTC)
    alpaca.clock = {
        "is_open": is_open,
        "next_open": (now + timedelta(hours=14 if not is_open else 20)).isoformat(),
        "next_close": (now + timedelta(hours=3)).isoformat(),
    }


def status(root: Path, fp: str, **kw: object) -> tuple[Status, str]:
    r = evaluate(root, **kw).results[fp]  # type: ignore[arg-type]
    return r.status, r.outcome.message


# --- through the CLI ---------------------------------------------------------------------------
def test_healthy_root_is_ready(bot: BotRoot, running: Procs) -> None:
    code, data = check_json(bot.path)
    assert data["readiness"] == "READY", data
    assert code == 0
    assert data["color"] == "green"
    assert set(TWELVE) <= set(data["failure_points"])
    for fp in TWELVE:
        assert data["failure_points"][fp]["status"] == "OK", (fp, data["failure_points"][fp])
    assert data["timestamp"].endswith("Z")


@pytest.mark.parametrize("fp, breakage, expected, text", [
    ("FP-1.1", "kill_daemon", "ERROR", "no uw_flow_daemon.py process"),
    ("FP-1.2", "delete_cache", "ERROR", "does not exist"),
    ("FP-1.3", "stale_metadata_fresh_mtime", "ERROR", "old (limit"),
    ("FP-1.4", "only_global_keys", "ERROR", "no ticker"),
    ("FP-1.5", "uw_401", "ERROR", "HTTP 401"),
    ("FP-2.1", "weights_missing_component", "ERROR", "iv_rank missing"),
    ("FP-3.1", "dict_freeze", "ERROR", "max_drawdown_exceeded"),
    ("FP-3.2", "positions_at_cap", "WARN", "cap MAX_CONCURRENT_POSITIONS=2"),
    ("FP-4.1", "alpaca_500", "ERROR", "server error"),
    ("FP-4.2", "alpaca_403_no_code", "ERROR", "HTTP 403"),
    ("FP-4.3", "low_buying_power", "WARN", "below the minimum"),
    ("FP-4.6", "account_blocked", "ERROR", "trading_blocked"),
    ("FP-6.1", "kill_bot", "ERROR", "no main.py process"),
])
def test_each_point_broken_through_cli(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW,
                                       fp: str, breakage: str, expected: str, text: str) -> None:
    if breakage == "kill_daemon":
        running.procs[0].kill()
        running.procs[0].wait()
    elif breakage == "delete_cache":
        bot.p("data/uw_flow_cache.json").unlink()
    elif breakage == "stale_metadata_fresh_mtime":
        market(alpaca, True)
        bot.write_cache(last_update=time.time() - 3 * 3600)
        os.utime(bot.p("data/uw_flow_cache.json"))  # main.py rewrote it: mtime is fresh
    elif breakage == "only_global_keys":
        write_json(bot.p("data/uw_flow_cache.json"), {"_metadata": {"last_update": time.time()},
                                                     "_market_tide": {}, "_top_net_impact": {}})
    elif breakage == "uw_401":
        uw.set_mode("401")
    elif breakage == "weights_missing_component":
        data = json.loads(bot.p("state/signal_weights.json").read_text())
        del data["entry_weights"]["weight_bands"]["iv_rank"]
        write_json(bot.p("state/signal_weights.json"), data)
    elif breakage == "dict_freeze":
        bot.freeze("max_drawdown_exceeded")
    elif breakage == "positions_at_cap":
        bot.set_env(MAX_CONCURRENT_POSITIONS="2")
        alpaca.positions = [{"symbol": s, "qty": "10", "side": "long", "market_value": "1000",
                             "avg_entry_price": "100", "asset_id": s} for s in ("AAPL", "MSFT")]
    elif breakage == "alpaca_500":
        alpaca.set_mode("500")
    elif breakage == "alpaca_403_no_code":
        alpaca.set_mode("403", paths=["/v2/account"])
    elif breakage == "low_buying_power":
        alpaca.account = {**alpaca.account, "buying_power": "250.00"}
    elif breakage == "account_blocked":
        alpaca.account = {**alpaca.account, "trading_blocked": True}
    elif breakage == "kill_bot":
        running.procs[1].kill()
        running.procs[1].wait()
    code, data = check_json(bot.path)
    point = data["failure_points"][fp]
    assert point["status"] == expected, point
    assert text in point["last_error"], point
    if expected == "ERROR":
        assert code == 2 and data["readiness"] == "BLOCKED" and fp in data["critical_fps"]
    else:
        assert fp in data["warning_fps"]
        assert code == 0 and data["readiness"] == "READY"  # one warning is within max_warnings


def _dead_daemon_fresh_mtime(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    running.procs[0].kill()  # the daemon is dead...
    running.procs[0].wait()
    # ...and main.py rewrote the cache since: fresh mtime, re-stamped tickers, the daemon's old stamp
    bot.write_cache(last_update=time.time() - 3 * 3600)
    os.utime(bot.p("data/uw_flow_cache.json"))


def _safe_mode_torn_weights_uw_403(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    bot.safe_mode()
    bot.torn("state/signal_weights.json")
    uw.set_mode("403")


def _kill_switch_empty_cache_alpaca_401(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    bot.kill_switch(True)
    bot.p("data/uw_flow_cache.json").write_text("")
    alpaca.set_mode("401")  # {"code": 40110000, "message": "request is not authorized"}


def _kill_switch_unreadable_torn_cache(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    bot.p("state/kill_switch.json").write_text("{not json")
    bot.torn("data/uw_flow_cache.json")


def _boolean_freeze(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW) -> None:
    write_json(bot.p("state/governor_freezes.json"), {"performance_freeze": True,
                                                     "performance_freeze_reason": "win rate 31%"})


#: name -> (breakage, expected {fp: (status, text in its message)}, the complete critical list, the
#: message of `check --only FP-3.1` or None). Breakages batched in one run hit independent points,
#: so each cause must show up as its own critical and nothing else may be critical.
CLI_BREAKAGES = {
    "dead-daemon-fresh-mtime": (_dead_daemon_fresh_mtime, {
        "FP-1.1": ("ERROR", "no uw_flow_daemon.py process"),
        "FP-1.3": ("ERROR", "cache data is 3.0 h old (limit 1800 s while the market is open)"),
        "FP-1.2": ("OK", ""),  # the file itself is fine
        "FP-1.10": ("SKIPPED", "depends on FP-1.1"),
        "FP-1.11": ("SKIPPED", "depends on FP-1.1"),
        "FP-1.9": ("SKIPPED", "depends on FP-1.3"),
    }, ["FP-1.1", "FP-1.3"], None),
    "safe-mode+torn-weights+uw-403": (_safe_mode_torn_weights_uw_403, {
        "FP-3.11": ("ERROR", "safe mode flag present (state/health_safe_mode.flag)"),
        "FP-3.1": ("SKIPPED", "depends on FP-3.11"),
        "FP-2.1": ("ERROR", "signal_weights.json is not valid JSON"),
        "FP-2.6": ("SKIPPED", "depends on FP-2.1"),
        # the generic state-file point names the same torn file; FP-2.1 pages for it
        "FP-5.3": ("WARN", "state/signal_weights.json"),
        "FP-1.5": ("ERROR", "UW rejected the token (HTTP 403)"),
    }, ["FP-1.5", "FP-2.1", "FP-3.11"], "safe mode"),
    "kill-switch+empty-cache+alpaca-401": (_kill_switch_empty_cache_alpaca_401, {
        "FP-3.10": ("ERROR", "kill switch enabled"),
        "FP-3.1": ("SKIPPED", "depends on FP-3.10"),
        "FP-1.2": ("ERROR", "uw_flow_cache.json is empty after 3 reads"),
        "FP-1.3": ("SKIPPED", "depends on FP-1.2"),
        "FP-1.4": ("SKIPPED", "depends on FP-1.2"),
        "FP-4.1": ("OK", "HTTP 401"),  # it answered: reachable
        "FP-4.2": ("ERROR", "Alpaca rejected the credentials (HTTP 401 code 40110000: request is not authorized)"),
        "FP-4.3": ("SKIPPED", "depends on FP-4.2"),
        "FP-3.2": ("SKIPPED", "depends on FP-4.2"),
    }, ["FP-1.2", "FP-3.10", "FP-4.2"], "kill switch enabled"),
    "kill-switch-unreadable+torn-cache": (_kill_switch_unreadable_torn_cache, {
        "FP-3.10": ("ERROR", "kill switch unreadable"),
        "FP-3.1": ("SKIPPED", "depends on FP-3.10"),
        "FP-5.3": ("WARN", "state/kill_switch.json"),
        "FP-1.2": ("ERROR", "uw_flow_cache.json is not valid JSON"),
        "FP-1.4": ("SKIPPED", "depends on FP-1.2"),
    }, ["FP-1.2", "FP-3.10"], "kill switch unreadable"),
    "boolean-freeze": (_boolean_freeze, {
        "FP-3.1": ("ERROR", "trading blocked: freeze performance_freeze"),
    }, ["FP-3.1"], "freeze performance_freeze"),
}


@pytest.mark.parametrize("name", list(CLI_BREAKAGES))
def test_each_point_broken_every_way_through_cli(bot: BotRoot, running: Procs, alpaca: FakeAlpaca, uw: FakeUW,
                                                 name: str) -> None:
    breakage, expected, critical, only_fp31 = CLI_BREAKAGES[name]
    market(alpaca, True)  # in session: the session-aware points do their real work
    breakage(bot, running, alpaca, uw)
    code, data = check_json(bot.path)
    for fp, (status, text) in expected.items():
        point = data["failure_points"][fp]
        assert point["status"] == status and text in point["message"], (fp, point)
        if status == "SKIPPED":
            assert fp in data["skipped_fps"]
    assert data["critical_fps"] == critical, {fp: data["failure_points"][fp]["message"] for fp in data["critical_fps"]}
    assert code == 2 and data["readiness"] == "BLOCKED" and data["color"] == "red"
    assert data["critical_count"] == len(critical)
    if only_fp31:
        # FP-3.1 run on its own gives the whole cycle's verdict and still names the blocker: either
        # itself, or skipped for the point that pages for it, which is reported with it
        code, data = check_json(bot.path, "--only", "FP-3.1")
        point = data["failure_points"]["FP-3.1"]
        assert point["status"] == expected["FP-3.1"][0], point
        cause = point["details"].get("depends_on", "FP-3.1")
        assert only_fp31 in data["failure_points"][cause]["last_error"], data["failure_points"][cause]
        assert code == 2 and data["critical_fps"] == [cause]


def test_more_warnings_than_allowed_is_degraded_in_the_table(bot: BotRoot, running: Procs, alpaca: FakeAlpaca) -> None:
    """Three WARN points, readiness.max_warnings 2 (the default): DEGRADED, exit 1, and the table
    names the verdict, every point, its status and why."""
    market(alpaca, True)
    alpaca.account = {**alpaca.account, "buying_power": "250.00"}  # FP-4.3
    bot.self_healing(adjustment=0.5, activated_at=time.time() - 600, losses=4)  # FP-3.8
    weights = json.loads(bot.p("state/signal_weights.json").read_text())
    weights["saved_at"] = time.time() - 5 * 86400  # FP-2.6: the learner stopped saving
    write_json(bot.p("state/signal_weights.json"), weights)
    r = run_cli("--bot-root", str(bot.path), "check", env=clean_env(COLUMNS="250"))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "FAILURE", "POINT", "STATUS", "DETAIL"]
    rows = {ln.split()[0]: ln for ln in lines[1:] if ln.startswith("FP-")}
    assert len(rows) == len(json.loads(run_cli("catalog", "--json").stdout)["failure_points"])
    expected = {
        "FP-4.3": ("Buying power", "WARN", "buying power $250.00 below the minimum $1,000.00"),
        "FP-3.8": ("Entry threshold not raised", "WARN", "raised by 0.5 to 3.2"),
        "FP-2.6": ("Adaptive weights saved", "WARN", "weights not saved for 5.0 days"),
        "FP-1.1": ("UW daemon running", "OK", "uw_flow_daemon.py"),
        "FP-4.1": ("Alpaca API reachable", "OK", "Alpaca answered the clock (market open)"),
    }
    for fp, (name, status, text) in expected.items():
        cells = [c.strip() for c in rows[fp].split("  ") if c.strip()]
        assert cells[:3] == [fp, name, status], rows[fp]
        assert text in cells[3], rows[fp]
    summary = lines[lines.index("") + 1:]
    assert summary[0].startswith("DEGRADED: 0 critical, 3 warning, "), summary
    assert summary[1:] == ["Warnings: FP-2.6, FP-3.8, FP-4.3"], summary


# --- FP-1.1 / FP-6.1: processes ------------------------------------------------------------------
def test_lookalike_processes_do_not_count(bot: BotRoot, procs: Procs) -> None:
    (bot.p("uw_flow_daemon.py")).write_text("x\n")
    procs.start(["tail", "-f", "uw_flow_daemon.py"])
    procs.start(["tail", "-f", "main.py"])
    procs.start([sys.executable, "-c", "import time; time.sleep(60)", "main.py", "uw_flow_daemon.py"])
    time.sleep(0.2)
    r = evaluate(bot.path, only=["FP-1.1", "FP-6.1"]).results
    assert r["FP-1.1"].status is Status.ERROR
    assert r["FP-6.1"].status is Status.ERROR


def test_daemon_without_lock_is_a_warning_and_lock_holder_wins(bot: BotRoot, procs: Procs) -> None:
    owner = procs.daemon()
    dup = procs.daemon(linger=30)  # a duplicate that will exit on the lock
    time.sleep(0.3)
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.OK and r.outcome.details["pids"] == [owner.pid]
    owner.kill()
    owner.wait()
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.WARN and dup.pid in r.outcome.details["pids"]
    assert "none holds" in r.outcome.message


def test_daemon_killed_then_restarted(bot: BotRoot, procs: Procs) -> None:
    first = procs.daemon()
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.OK and r.outcome.details["pids"] == [first.pid]
    first.kill()
    first.wait()
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.ERROR and "no uw_flow_daemon.py process" in r.outcome.message
    second = procs.daemon()  # systemd restarted it: recovered, and the new pid is the one reported
    r = evaluate(bot.path, only=["FP-1.1"]).results["FP-1.1"]
    assert r.status is Status.OK and r.outcome.details["pids"] == [second.pid], r.outcome.message


def test_bot_in_another_directory_is_not_our_bot(bot: BotRoot, procs: Procs, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.py").write_text("import time\nwhile True: time.sleep(1)\n")
    procs.start([sys.executable, "main.py"], cwd=other)
    time.sleep(0.2)
    assert status(bot.path, "FP-6.1", only=["FP-6.1"])[0] is Status.ERROR
    procs.bot()
    wait_for(lambda: status(bot.path, "FP-6.1", only=["FP-6.1"])[0] is Status.OK, what="our bot seen")


# --- FP-1.2 / FP-1.3 / FP-1.4: the cache --------------------------------------------------------
@pytest.mark.parametrize("content, text", [
    ("", "is empty"),
    ('{"NVDA": {"flow_trades": [', "not valid JSON"),
    ("[1, 2, 3]", "not a JSON object"),
])
def test_cache_corrupt_empty_or_wrong_shape(bot: BotRoot, content: str, text: str) -> None:
    bot.p("data/uw_flow_cache.json").write_text(content)
    s, msg = status(bot.path, "FP-1.2", only=["FP-1.2", "FP-1.3", "FP-1.4"])
    assert s is Status.ERROR and text in msg
    rep = evaluate(bot.path, only=["FP-1.2", "FP-1.3", "FP-1.4"])
    assert rep.results["FP-1.3"].status is Status.SKIPPED
    assert rep.results["FP-1.3"].outcome.message == "depends on FP-1.2"
    bot.write_cache()  # the daemon's next atomic write: recovered, and its dependents judged again
    rep = evaluate(bot.path, only=["FP-1.2", "FP-1.3", "FP-1.4"])
    assert {fp: r.status for fp, r in rep.results.items()} == dict.fromkeys(("FP-1.2", "FP-1.3", "FP-1.4"), Status.OK)


def test_cache_deleted_then_written_again(bot: BotRoot) -> None:
    only = ["FP-1.2", "FP-1.3", "FP-1.4"]
    bot.p("data/uw_flow_cache.json").unlink()
    s, msg = status(bot.path, "FP-1.2", only=only)
    assert s is Status.ERROR and "does not exist" in msg
    bot.write_cache()
    s, msg = status(bot.path, "FP-1.2", only=only)
    assert s is Status.OK, msg


def test_torn_cache_read_is_retried(bot: BotRoot) -> None:
    path = bot.p("data/uw_flow_cache.json")
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    fixer = threading.Timer(0.15, lambda: path.write_text(good))
    fixer.start()
    try:
        s, msg = status(bot.path, "FP-1.2", only=["FP-1.2"])
    finally:
        fixer.join()
    assert s is Status.OK, msg


def test_cache_freshness_follows_the_session(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-1.2", "FP-1.3"]
    market(alpaca, True)
    bot.write_cache(last_update=time.time() - 1000)
    s, msg = status(bot.path, "FP-1.3", only=only)
    assert s is Status.WARN and "while the market is open" in msg
    bot.write_cache(last_update=time.time() - 2000)
    assert status(bot.path, "FP-1.3", only=only)[0] is Status.ERROR
    market(alpaca, False)  # same stale cache, market closed: not an error
    s, msg = status(bot.path, "FP-1.3", only=only)
    assert s is Status.OK and "market closed" in msg
    bot.write_cache(last_update=time.time() - 30000)
    assert status(bot.path, "FP-1.3", only=only)[0] is Status.WARN
    bot.write_cache()  # the daemon writes again: recovered
    assert status(bot.path, "FP-1.3", only=only)[0] is Status.OK


def test_cache_without_metadata_is_an_error(bot: BotRoot) -> None:
    data = json.loads(bot.p("data/uw_flow_cache.json").read_text())
    del data["_metadata"]
    write_json(bot.p("data/uw_flow_cache.json"), data)
    s, msg = status(bot.path, "FP-1.3", only=["FP-1.2", "FP-1.3"])
    assert s is Status.ERROR and "_metadata.last_update" in msg


def test_few_symbols_warn(bot: BotRoot) -> None:
    bot.write_cache(tickers=("NVDA", "AAPL"))
    s, msg = status(bot.path, "FP-1.4", only=["FP-1.2", "FP-1.4"])
    assert s is Status.WARN and "only 2 symbols" in msg


def test_symbols_gone_then_back(bot: BotRoot) -> None:
    """Only `_`-prefixed keys (globals, no ticker): an error; the daemon's next full write recovers."""
    only = ["FP-1.2", "FP-1.4"]
    assert status(bot.path, "FP-1.4", only=only)[0] is Status.OK
    write_json(bot.p("data/uw_flow_cache.json"), {"_metadata": {"last_update": time.time(), "ticker_count": 0},
                                                 "_market_tide": {"data": []}, "_top_net_impact": {}})
    s, msg = status(bot.path, "FP-1.4", only=only)
    assert s is Status.ERROR and "no ticker" in msg
    bot.write_cache(tickers=("NVDA", "AAPL"))
    assert status(bot.path, "FP-1.4", only=only)[0] is Status.WARN
    bot.write_cache()
    r = evaluate(bot.path, only=only).results["FP-1.4"]
    assert r.status is Status.OK, r.outcome.message


# --- FP-1.5: UW auth -------------------------------------------------------------------------
@pytest.mark.parametrize("mode, expected", [("403", Status.ERROR), ("429", Status.WARN), ("500", Status.WARN),
                                            ("ok", Status.OK)])
def test_uw_auth_modes(bot: BotRoot, uw: FakeUW, mode: str, expected: Status) -> None:
    uw.set_mode(mode)
    assert status(bot.path, "FP-1.5", only=["FP-1.5"])[0] is expected


def test_uw_key_missing_or_wrong(bot: BotRoot, uw: FakeUW) -> None:
    bot.set_env(UW_API_KEY=None)
    s, msg = status(bot.path, "FP-1.5", only=["FP-1.5"])
    assert s is Status.ERROR and "UW_API_KEY is not set" in msg
    bot.set_env(UW_API_KEY="wrong-token")
    s, msg = status(bot.path, "FP-1.5", only=["FP-1.5"])
    assert s is Status.ERROR and "wrong-token" not in msg
    bot.set_env(UW_API_KEY="uw-test-token")  # the operator puts the right token back: recovered
    s, msg = status(bot.path, "FP-1.5", only=["FP-1.5"])
    assert s is Status.OK, msg


def test_uw_token_revoked_then_restored(bot: BotRoot, uw: FakeUW) -> None:
    assert status(bot.path, "FP-1.5", only=["FP-1.5"])[0] is Status.OK
    uw.set_mode("401")
    s, msg = status(bot.path, "FP-1.5", only=["FP-1.5"])
    assert s is Status.ERROR and "HTTP 401" in msg
    uw.set_mode("ok")
    assert status(bot.path, "FP-1.5", only=["FP-1.5"])[0] is Status.OK


# --- FP-2.1: weights ---------------------------------------------------------------------------
def _bands(bot: BotRoot) -> dict:
    return json.loads(bot.p("state/signal_weights.json").read_text())["entry_weights"]["weight_bands"]


@pytest.mark.parametrize("mutate, text", [
    (lambda b: b["options_flow"].update(current=math.nan), "options_flow.current is not a finite number"),
    (lambda b: b["dark_pool"].update(current=9.0), "dark_pool.current 9 outside"),
    (lambda b: b["insider"].pop("current"), "insider.current is not a finite number"),
    (lambda b: b.clear(), "options_flow missing"),
])
def test_weights_invalid(bot: BotRoot, mutate, text: str) -> None:  # type: ignore[no-untyped-def]
    bands = _bands(bot)
    mutate(bands)
    bot.write_weights(bands)
    s, msg = status(bot.path, "FP-2.1", only=["FP-2.1"])
    assert s is Status.ERROR and text in msg


def test_legacy_top_level_bands_do_not_count(bot: BotRoot) -> None:
    data = json.loads(bot.p("state/signal_weights.json").read_text())
    legacy = {"weight_bands": data["entry_weights"]["weight_bands"], "saved_at": time.time()}
    write_json(bot.p("state/signal_weights.json"), legacy)
    assert status(bot.path, "FP-2.1", only=["FP-2.1"])[0] is Status.ERROR


def test_weights_torn_or_missing(bot: BotRoot) -> None:
    bot.torn("state/signal_weights.json")
    s, msg = status(bot.path, "FP-2.1", only=["FP-2.1"])
    assert s is Status.ERROR and "not valid JSON" in msg
    bot.p("state/signal_weights.json").unlink()  # a fresh install: the bot uses its default weights
    s, msg = status(bot.path, "FP-2.1", only=["FP-2.1"])
    assert s is Status.OK and "built-in default weights" in msg
    bot.write_weights()
    assert status(bot.path, "FP-2.1", only=["FP-2.1"])[0] is Status.OK


# --- FP-3.1: freezes ----------------------------------------------------------------------------
def test_freeze_kinds(bot: BotRoot) -> None:
    only = ["FP-3.1"]
    # companion keys and inactive objects are not freezes
    write_json(bot.p("state/governor_freezes.json"), {
        "performance_freeze": False, "performance_freeze_reason": "was tripped yesterday",
        "daily_loss_pct_limit": {"active": False, "reason": "old"}})
    assert status(bot.path, "FP-3.1", only=only)[0] is Status.OK
    bot.freeze("production_freeze", as_object=False)
    s, msg = status(bot.path, "FP-3.1", only=only)
    assert s is Status.ERROR and "production_freeze" in msg and "performance_freeze_reason" not in msg
    write_json(bot.p("state/governor_freezes.json"), {})
    bot.safe_mode()
    s, msg = status(bot.path, "FP-3.1", only=only)
    assert s is Status.ERROR and "safe mode" in msg
    bot.p("state/health_safe_mode.flag").unlink()
    bot.kill_switch(True)
    s, msg = status(bot.path, "FP-3.1", only=only)
    assert s is Status.ERROR and "kill switch enabled" in msg
    bot.p("state/kill_switch.json").write_text("{not json")
    s, msg = status(bot.path, "FP-3.1", only=only)
    assert s is Status.ERROR and "kill switch unreadable" in msg
    bot.kill_switch(False)
    bot.p("state/governor_freezes.json").write_text("{torn")  # the bot reads it as no freeze and trades
    s, msg = status(bot.path, "FP-3.1", only=only)
    assert s is Status.WARN and "reads it as no freeze" in msg
    write_json(bot.p("state/governor_freezes.json"), {})
    assert status(bot.path, "FP-3.1", only=only)[0] is Status.OK


# --- FP-3.2 / FP-4.x: the broker ------------------------------------------------------------------
def test_position_cap_from_process_environment_beats_dotenv(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    alpaca.positions = [{"symbol": "AAPL", "qty": "1", "side": "long", "market_value": "100",
                         "avg_entry_price": "100", "asset_id": "a"}]
    only = ["FP-4.1", "FP-4.2", "FP-3.2"]
    assert status(bot.path, "FP-3.2", only=only, environ={"MAX_CONCURRENT_POSITIONS": "1"})[0] is Status.WARN
    r = evaluate(bot.path, only=only, environ={}).results["FP-3.2"]
    assert r.status is Status.OK and r.outcome.details["max_positions"] == 16


def test_positions_at_the_cap_then_one_closes(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-4.1", "FP-4.2", "FP-3.2"]
    bot.set_env(MAX_CONCURRENT_POSITIONS="2")
    alpaca.positions = [make_position("AAPL", 10, 228.4), make_position("MSFT", 3, 505.8)]
    s, msg = status(bot.path, "FP-3.2", only=only)
    assert s is Status.WARN and msg == "2 open positions, cap MAX_CONCURRENT_POSITIONS=2: no new entries"
    alpaca.positions = alpaca.positions[:1]
    s, msg = status(bot.path, "FP-3.2", only=only)
    assert s is Status.OK and msg == "1 of 2 positions open"


def test_position_cap_unknown_or_positions_unlisted(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-4.1", "FP-4.2", "FP-3.2"]
    bot.set_env(MAX_CONCURRENT_POSITIONS="sixteen")
    s, msg = status(bot.path, "FP-3.2", only=only)
    assert s is Status.ERROR and msg == "MAX_CONCURRENT_POSITIONS is not a number: cannot tell the position cap"
    bot.set_env(MAX_CONCURRENT_POSITIONS="inf")
    s, msg = status(bot.path, "FP-3.2", only=only)
    assert s is Status.ERROR and "MAX_CONCURRENT_POSITIONS=inf is not a finite number" in msg
    bot.set_env(MAX_CONCURRENT_POSITIONS="16")
    assert status(bot.path, "FP-3.2", only=only)[0] is Status.OK
    # /v2/positions broken on its own while the clock and the account answer: this point's error
    alpaca.set_mode("500", paths=["/v2/positions"])
    rep = evaluate(bot.path, only=only)
    r = rep.results["FP-3.2"]
    assert r.status is Status.ERROR and "cannot list positions: Alpaca server error (HTTP 500" in r.outcome.message
    assert rep.results["FP-4.1"].status is Status.OK
    # a 429 is the shared request budget running out: FP-4.1's to report, never a BLOCKED here
    alpaca.set_mode("429", paths=["/v2/positions"])
    rep = evaluate(bot.path, only=only)
    r = rep.results["FP-3.2"]
    assert r.status is Status.SKIPPED and r.outcome.skipped_by == "FP-4.1" and "HTTP 429" in r.outcome.message
    assert rep.readiness is Readiness.READY
    alpaca.set_mode("ok")
    assert status(bot.path, "FP-3.2", only=only)[0] is Status.OK


#: points that read only files and processes: a hung broker must not hold them up
FILE_POINTS = ("FP-1.1", "FP-1.2", "FP-1.4", "FP-2.1", "FP-3.10", "FP-3.11", "FP-5.1", "FP-5.3", "FP-5.4",
               "FP-6.1", "FP-6.4")


def test_hanging_broker_times_out_without_delaying_others(bot: BotRoot, running: Procs, alpaca: FakeAlpaca,
                                                          tmp_path: Path) -> None:
    alpaca.set_mode("hang")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("alpaca: {timeout_seconds: 1.0}\nchecks:\n  FP-4.1: {timeout_seconds: 3}\n")
    rep = evaluate(bot.path, config=cfg)
    r = rep.results
    hung = r["FP-4.1"]
    assert hung.status is Status.ERROR and hung.outcome.message == "Alpaca did not answer /clock within 1 s"
    for fp in ("FP-4.2", "FP-4.3", "FP-3.2"):
        assert r[fp].status is Status.SKIPPED and r[fp].outcome.message == "depends on FP-4.1"
    # Ordering, not speed: every file point finished before the hung request was given up on,
    # including points started after FP-4.1 was already waiting -- they ran beside it, not after.
    hung_done = hung.last_check + hung.duration_seconds
    for fp in FILE_POINTS:
        assert r[fp].status is Status.OK, (fp, r[fp].outcome.message)
        assert r[fp].last_check + r[fp].duration_seconds < hung_done, fp
    assert any(r[fp].last_check > hung.last_check for fp in FILE_POINTS)
    assert rep.readiness is Readiness.BLOCKED
    assert rep.to_json()["critical_fps"] == ["FP-4.1"]


@pytest.mark.parametrize("mode, text", [("nonjson", "not JSON"), ("500", "server error")])
def test_broker_garbage(bot: BotRoot, alpaca: FakeAlpaca, mode: str, text: str) -> None:
    alpaca.set_mode(mode)
    s, msg = status(bot.path, "FP-4.1", only=["FP-4.1", "FP-4.2"])
    assert s is Status.ERROR and text in msg
    alpaca.set_mode("ok")  # maintenance over: recovered
    s, msg = status(bot.path, "FP-4.1", only=["FP-4.1", "FP-4.2"])
    assert s is Status.OK, msg


def test_broker_refused_connection(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    alpaca.stop()
    s, msg = status(bot.path, "FP-4.1", only=["FP-4.1"])
    assert s is Status.ERROR and "cannot connect" in msg


def test_alpaca_auth_variants(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    only = ["FP-4.1", "FP-4.2"]
    alpaca.set_mode("401")
    r = evaluate(bot.path, only=only).results
    assert r["FP-4.1"].status is Status.OK  # reachable: it answered
    assert r["FP-4.2"].status is Status.ERROR and "40110000" in r["FP-4.2"].outcome.message
    assert "SECRETTEST" not in json.dumps(r["FP-4.2"].to_json())
    alpaca.set_mode("ok")
    # quoted, padded values under the APCA aliases work, as they do for the bot
    bot.set_env(ALPACA_KEY=None, ALPACA_SECRET=None)
    with open(bot.p(".env"), "a") as fh:
        fh.write('APCA_API_KEY_ID = " PKTEST "\nAPCA_API_SECRET_KEY=\'SECRETTEST\'\n')
    r = evaluate(bot.path, only=only).results["FP-4.2"]
    assert r.status is Status.OK and r.outcome.details["key_variable"] == "APCA_API_KEY_ID"
    bot.set_env(APCA_API_KEY_ID=None)
    s, msg = status(bot.path, "FP-4.2", only=only)
    assert s is Status.ERROR and "not set" in msg


@pytest.mark.parametrize("change, fp, expected, text", [
    ({"buying_power": "250.00"}, "FP-4.3", Status.WARN, "below the minimum"),
    ({"buying_power": "n/a"}, "FP-4.3", Status.ERROR, "no numeric buying_power"),
    ({"status": "ACCOUNT_UPDATED"}, "FP-4.6", Status.ERROR, "ACCOUNT_UPDATED"),
    ({"account_blocked": True}, "FP-4.6", Status.ERROR, "account_blocked"),
    ({"trade_suspended_by_user": True}, "FP-4.6", Status.ERROR, "trade_suspended_by_user"),
])
def test_account_states(bot: BotRoot, alpaca: FakeAlpaca, change: dict, fp: str, expected: Status,
                        text: str) -> None:
    only = ["FP-4.1", "FP-4.2", "FP-4.3", "FP-4.6"]
    alpaca.account = {**alpaca.account, **change}
    r = evaluate(bot.path, only=only).results
    assert r[fp].status is expected and text in r[fp].outcome.message
    if fp == "FP-4.6":
        # one cause, one critical: buying power is not judged on an account that cannot trade
        assert r["FP-4.3"].status is Status.SKIPPED and r["FP-4.3"].outcome.message == "depends on FP-4.6"
    else:
        assert r["FP-4.6"].status is Status.OK


def test_secrets_never_in_output(bot: BotRoot, alpaca: FakeAlpaca, uw: FakeUW, running: Procs) -> None:
    alpaca.set_mode("401")
    uw.set_mode("401")
    code, data = check_json(bot.path, env=clean_env())
    text = json.dumps(data)
    for secret in ("PKTEST", "SECRETTEST", "uw-test-token"):
        assert secret not in text
    assert code == 2
