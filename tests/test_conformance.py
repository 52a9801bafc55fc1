"""Conformance: every point whose input the real bot's recorded files cover gets the verdict the
recordings' README (``<repo>/../shared/realbot/README.md``, "What a truthful monitor concludes")
states.

Each recording is rebuilt in a temporary bot root with its timestamps shifted so the judged
moment is now (``tests/realbot.py``), beside loopback Alpaca and UW servers that answer like the
ones the recording ran against (three positions, orders refused with 403, market open), and
judged by the real CLI: ``python -m exporter --bot-root <root> check --json --only ...``.
Points that look at processes, the host or our own ``.env`` (FP-1.1, FP-1.5, FP-1.11, FP-3.9,
FP-4.1-4.3, FP-4.5-4.10, FP-5.1, FP-5.2, FP-5.4, FP-6.1, FP-6.2, FP-6.4-6.8) are not covered by
the files and are left out. `check --only` still runs the dependencies of the points judged
(FP-1.10 needs the daemon running, FP-6.3 main.py), so the processes that were running when the
files were written run while they are judged: a daemon holding the lock in every root, main.py
in ``main/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.bot.context import Context
from exporter.checks import registry
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from sandbox.uw import FakeUW

from .conftest import Procs, clean_env, run_cli
from .realbot import (
    DAEMON_BEFORE_429,
    DAEMON_DURING_429,
    MAIN_END,
    Moment,
    RecordedAlpaca,
    Shifter,
    build_root,
    force_open,
    realbot_dir,
    record_time,
)

OK, WARN, ERROR = "OK", "WARN", "ERROR"

# the points the files cover, per recording
UW_POINTS = ["FP-1.2", "FP-1.3", "FP-1.4", "FP-1.6", "FP-1.9", "FP-1.10", "FP-2.4", "FP-2.5"]
STATE_POINTS = ["FP-2.7", "FP-3.1", "FP-3.8", "FP-3.10", "FP-3.11", "FP-5.3"]
MAIN_POINTS = ["FP-1.7", "FP-1.8", "FP-2.1", "FP-2.2", "FP-2.3", "FP-2.6", "FP-3.2", "FP-3.3", "FP-3.4",
               "FP-3.5", "FP-3.6", "FP-3.7", "FP-4.4", "FP-6.3"]
ONLY = {
    DAEMON_BEFORE_429.name: UW_POINTS + STATE_POINTS,
    DAEMON_DURING_429.name: UW_POINTS + STATE_POINTS,
    MAIN_END.name: UW_POINTS + STATE_POINTS + MAIN_POINTS,
}


@dataclass(frozen=True)
class Expect:
    """``statuses``: the acceptable statuses; ``text``: a regex the message must match."""

    statuses: tuple[str, ...]
    why: str
    text: str | None = None


def ok(why: str, text: str | None = None) -> Expect:
    return Expect((OK,), why, text)


def failing(why: str, text: str | None = None) -> Expect:
    return Expect((WARN, ERROR), why, text)


STATE_OK = {
    "FP-2.7": ok("no state/uw_thresholds_hierarchical.json: the bot uses ENTRY_THRESHOLD_BASE"),
    "FP-3.1": ok("no freeze, safe-mode or kill-switch file was written"),
    "FP-3.8": ok("no state/self_healing_threshold.json: no adjustment is active"),
    "FP-3.10": ok("no state/kill_switch.json"),
    "FP-3.11": ok("no state/health_safe_mode.flag"),
    "FP-5.3": ok("every state file present parses"),
}

EXPECTED: dict[str, dict[str, Expect]] = {
    DAEMON_BEFORE_429.name: {
        "FP-1.2": ok("the cache exists and parses"),
        "FP-1.3": ok("_metadata.last_update is fresh"),
        "FP-1.4": ok("5 ticker keys (non-'_'), min_symbols 5", r"\b5\b"),
        "FP-1.6": ok("251 calls of 50000 (calls_today), not the quota log's line count; "
                     "no UW error yet (the 9 HTTP 200 'empty' lines are not errors)", r"\b251\b"),
        "FP-1.9": ok("every ticker carries flow_trades"),
        "FP-1.10": ok("the daemon completed cycle 1 less than 900 s ago"),
        "FP-2.4": ok("the tickers carry intel blocks"),
        "FP-2.5": ok("_market_tide is a dict holding one fresh tide point"),
        **STATE_OK,
    },
    DAEMON_DURING_429.name: {
        "FP-1.2": ok("the cache exists and parses"),
        "FP-1.3": ok("the daemon keeps cycling under 429s: _metadata.last_update stays fresh"),
        "FP-1.4": ok("5 ticker keys", r"\b5\b"),
        "FP-1.6": failing("UW answers HTTP 429 (reports/uw_health/uw_api_errors.jsonl)", r"429"),
        "FP-1.9": ok("every ticker carries flow_trades"),
        "FP-1.10": ok("the daemon does not pause on a 429; cycle 1 ended less than 900 s ago"),
        "FP-2.4": ok("zeroed dark_pool and _rate_limited blocks on two tickers are data-quality facts; "
                     "most blocks hold data"),
        "FP-2.5": ok("_market_tide holds one tide point, polled at most every 600 s"),
        **STATE_OK,
    },
    MAIN_END.name: {
        "FP-1.2": ok("the cache exists and parses"),
        "FP-1.3": ok("_metadata.last_update (the daemon's cycle end) is 149 s old"),
        "FP-1.4": ok("5 ticker keys", r"\b5\b"),
        "FP-1.6": ok("264 calls (calls_today: daemon 120 + main.py's wheel_* 144), not the quota log's "
                     "line count", r"\b264\b"),
        "FP-1.7": ok("3 in-session cycles with clusters 0: fewer than the catalog's cycles=10, not yet a failure"),
        "FP-1.8": ok("no cycle logged an error (errors_this_cycle is empty)"),
        "FP-1.9": ok("every ticker carries flow_trades"),
        "FP-1.10": ok("the daemon's cycle ended 149 s ago"),
        "FP-2.1": ok("no state/signal_weights.json is the fresh-install state: main.py trades on its "
                     "built-in default weights"),
        "FP-2.2": ok("no candidate was scored badly (none reached the gates) and no scoring error"),
        "FP-2.3": ok("3 cycles: fewer than cycles=10, and no candidate was below the threshold"),
        "FP-2.4": ok("the tickers carry intel blocks"),
        "FP-2.5": ok("_market_tide is a dict holding one fresh tide point"),
        "FP-2.6": Expect((OK, "SKIPPED"), "the learner has not saved weights yet: normal for a fresh install, "
                                          "nothing to judge until its first save"),
        "FP-3.2": ok("3 positions (AAPL, MSFT, NVDA), cap 16"),
        "FP-3.3": ok("no blocked candidate"),
        "FP-3.4": ok("no blocked candidate"),
        "FP-3.5": ok("no blocked candidate"),
        "FP-3.6": ok("no blocked candidate"),
        "FP-3.7": ok("no blocked candidate"),
        "FP-4.4": failing("6 orders refused by the broker (logs/orders.jsonl scale_out_failed, "
                          "state/execution_failures.jsonl) although run.jsonl says orders: 0", r"\b6\b"),
        "FP-6.3": ok("main.py completed its third cycle just now"),
        **STATE_OK,
    },
}

#: the usage the bot itself counted (state/uw_usage_state.json calls_today)
CALLS_TODAY = {DAEMON_BEFORE_429.name: 251, MAIN_END.name: 264}


# --- fixtures ---------------------------------------------------------------------------------
@dataclass
class Judged:
    moment: Moment
    root: Path
    shifter: Shifter
    code: int
    data: dict[str, Any]
    started: float


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RecordedAlpaca, FakeUW]]:
    realbot_dir()  # absent recordings fail every test here with the path it looked at
    alpaca, uw = RecordedAlpaca().start(), FakeUW().start()
    force_open(alpaca)
    yield alpaca, uw
    alpaca.stop()
    uw.stop()


def judge(moment: Moment, tmp: Path, servers: tuple[RecordedAlpaca, FakeUW]) -> Judged:
    alpaca, uw = servers
    now = time.time()
    root, sh = build_root(moment, tmp / moment.root, now, alpaca.url, uw.url)
    procs = Procs(root)
    try:
        procs.daemon()
        if moment is MAIN_END:
            procs.bot()
        r = run_cli("--bot-root", str(root), "check", "--json", "--only", *ONLY[moment.name], env=clean_env())
    finally:
        procs.stop_all()
    assert r.stdout, f"check --json printed nothing for {moment.name} (exit {r.returncode}): {r.stderr[-2000:]}"
    return Judged(moment, root, sh, r.returncode, json.loads(r.stdout), now)


@pytest.fixture(scope="module")
def judged(servers: tuple[RecordedAlpaca, FakeUW], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Judged]:
    out = {}
    for m in (DAEMON_BEFORE_429, DAEMON_DURING_429, MAIN_END):
        out[m.name] = judge(m, tmp_path_factory.mktemp(m.name), servers)
    return out


def describe(fp: str, res: dict[str, Any] | None) -> str:
    if res is None:
        return f"{fp}: not in the result"
    return f"{fp}: actual {res['status']} {res['message']!r} details={json.dumps(res.get('details'))[:600]}"


# --- the verdicts -----------------------------------------------------------------------------
CASES = [(m, fp) for m, points in EXPECTED.items() for fp in points]


@pytest.mark.parametrize("moment, fp", CASES, ids=[f"{m}-{fp}" for m, fp in CASES])
def test_verdict(judged: dict[str, Judged], moment: str, fp: str) -> None:
    exp = EXPECTED[moment][fp]
    res = judged[moment].data["failure_points"].get(fp)
    want = " or ".join(exp.statuses) + (f" with a message matching /{exp.text}/" if exp.text else "")
    assert res is not None and res["status"] in exp.statuses, (
        f"[{moment}] {fp} expected {want} ({exp.why}); {describe(fp, res)}")
    if exp.text:
        assert re.search(exp.text, res["message"] or ""), (
            f"[{moment}] {fp} expected {want} ({exp.why}); {describe(fp, res)}")


def test_every_covered_point_is_judged(judged: dict[str, Judged]) -> None:
    for name, j in judged.items():
        assert set(j.data["failure_points"]) == set(ONLY[name]), (name, sorted(j.data["failure_points"]))
        assert set(EXPECTED[name]) == set(ONLY[name]), name


@pytest.mark.parametrize("moment", [DAEMON_BEFORE_429.name, MAIN_END.name])
def test_uw_usage_is_calls_today_not_quota_lines(judged: dict[str, Judged], moment: str) -> None:
    """The exported usage is the bot's own count of calls sent, not the quota log's attempts."""
    j = judged[moment]
    usage = json.loads((j.root / "state/uw_usage_state.json").read_text())
    assert usage["calls_today"] == CALLS_TODAY[moment]
    # the usage file's UTC day moved with the judged moment
    assert usage["date"] == time.strftime("%Y-%m-%d", time.gmtime(j.shifter.now))
    lines = sum(1 for _ in (j.root / "data/uw_api_quota.jsonl").open())
    res = j.data["failure_points"]["FP-1.6"]
    used = res["details"].get("used")
    assert used == usage["calls_today"], (
        f"[{moment}] FP-1.6 expected details.used == calls_today {usage['calls_today']} "
        f"(state/uw_usage_state.json), not the quota log's {lines} lines; {describe('FP-1.6', res)}")


@pytest.mark.parametrize("moment", [DAEMON_BEFORE_429.name, MAIN_END.name])
def test_uw_usage_observation_is_calls_today(servers: tuple[RecordedAlpaca, FakeUW],
                                            tmp_path: Path, moment: str) -> None:
    """The metric (trading_uw_quota_used) says the same as the JSON: the bot's calls_today."""
    m = {DAEMON_BEFORE_429.name: DAEMON_BEFORE_429, MAIN_END.name: MAIN_END}[moment]
    alpaca, uw = servers
    now = time.time()
    root, _ = build_root(m, tmp_path / m.root, now, alpaca.url, uw.url)
    ctx = Context(load_config(None, str(root)), environ={}, clock=lambda: now)
    res = Engine(ctx, registry()).run(["FP-1.6"])["FP-1.6"]
    used = [o.value for o in res.outcome.observations if o.name == "trading_uw_quota_used"]
    assert used == [CALLS_TODAY[moment]], (
        f"[{moment}] FP-1.6 expected trading_uw_quota_used {CALLS_TODAY[moment]}; actual {used}, "
        f"{res.status.value} {res.outcome.message!r}")


def test_no_message_claims_the_daemon_pauses(judged: dict[str, Judged]) -> None:
    """The daemon does not pause on a 429 (its pause flag is never set): nothing may say it does."""
    claims = [f"[{name}] {fp} {res['status']}: {res['message']!r}"
              for name, j in judged.items() for fp, res in sorted(j.data["failure_points"].items())
              if re.search(r"\bpaus", res["message"] or "", re.I)]
    assert not claims, "messages claiming the daemon pauses:\n" + "\n".join(claims)


def test_rate_limit_names_the_uw_error_log(judged: dict[str, Judged]) -> None:
    """During the 429 period the rate-limit verdict comes from the UW client's error log."""
    j = judged[DAEMON_DURING_429.name]
    errors = [json.loads(line) for line in (j.root / "reports/uw_health/uw_api_errors.jsonl").open()]
    n429 = sum(1 for e in errors if e["http_status"] == 429)
    assert n429 > 0 and all(record_time({"ts": e["ts"]}) <= j.shifter.now + 1 for e in errors)
    res = j.data["failure_points"]["FP-1.6"]
    assert res["status"] in (WARN, ERROR) and "429" in res["message"], describe("FP-1.6", res)


# --- the harness itself -----------------------------------------------------------------------
def test_shift_keeps_formats_and_moves_times() -> None:
    sh = Shifter(1796588700.0, 1796588700.0 + 3600)
    assert sh.value(1796588383, False) == 1796588383 + 3600 and isinstance(sh.value(1796588383, False), int)
    assert sh.value(1796588383.5, False) == pytest.approx(1796588383.5 + 3600)
    assert sh.value(1796588813592, False, "timestamp") == 1796588813592 + 3600_000
    assert sh.value("2026-12-06T20:20:21.625670+00:00", False) == "2026-12-06T21:20:21.625670+00:00"
    assert sh.value("2026-12-06T15:14:43.384869-05:00", False) == "2026-12-06T16:14:43.384869-05:00"
    assert sh.value("2026-12-06 20:26:58 UTC", False) == "2026-12-06 21:26:58 UTC"
    assert sh.value("2026-12-06T20:08:18.661495", False) == "2026-12-06T21:08:18.661495"
    assert sh.value("2026-12-06T20:08:18.653946Z", False) == "2026-12-06T21:08:18.653946Z"
    # prices, premiums, volumes and ids stay
    for v in ("660338.0000", 23558, 2500000.0, "AAPL|LONG|1796587698", "300s|1796587500", 101220.55,
              "open_AAPL_2026-12-06T20:08:18.653946+00:00"):
        assert sh.value(v, False) == v
    # a snapshot's later time is "just written" at the judged moment; expires_at stays in the future
    assert sh.value({"last_update": 1796588818, "expires_at": 1796588878}, True) == {
        "last_update": 1796588700 + 3600, "expires_at": 1796588878 + 3600}
    # dates move by the calendar days the judged moment moved
    late = Shifter(1796588700.0, 1796588700.0 + 5 * 3600)
    assert late.value({"date": "2026-12-06", "expiry": "2026-12-11"}, False) == {
        "date": "2026-12-07", "expiry": "2026-12-12"}


def test_built_root_is_trimmed_at_the_judged_moment(servers: tuple[RecordedAlpaca, FakeUW], tmp_path: Path) -> None:
    alpaca, uw = servers
    now = time.time()
    root, sh = build_root(DAEMON_DURING_429, tmp_path / "daemon", now, alpaca.url, uw.url)
    cycles = [json.loads(x) for x in (root / "logs/uw_daemon.jsonl").open()]
    assert [c["cycle"] for c in cycles] == [1], "cycle 2 ended after the judged moment"
    for rel in ("data/uw_api_quota.jsonl", "reports/uw_health/uw_api_errors.jsonl", "logs/system_events.jsonl",
                ".cursor/debug.log", "data/uw_flow_cache.log.jsonl"):
        for line in (root / rel).open():
            t = record_time(json.loads(line))
            assert t is None or t <= sh.now + 1e-3, (rel, line[:200])
    cache = json.loads((root / "data/uw_flow_cache.json").read_text())
    assert cache["_metadata"]["last_update"] <= sh.now
    assert isinstance(cache["_market_tide"]["data"], dict)
    for p in root.rglob("*"):
        if p.is_file():
            assert p.stat().st_mtime <= sh.now + 1e-3, p
    env = (root / ".env").read_text()
    assert f"ALPACA_BASE_URL={alpaca.url}" in env and f"UW_BASE_URL={uw.url}" in env


def test_recorded_broker_refuses_orders_like_the_recording(servers: tuple[RecordedAlpaca, FakeUW]) -> None:
    import requests

    alpaca, _ = servers
    h = {"APCA-API-KEY-ID": alpaca.key, "APCA-API-SECRET-KEY": alpaca.secret}
    r = requests.post(f"{alpaca.url}/v2/orders", json={"symbol": "AAPL", "qty": 5, "side": "sell", "type": "market",
                                                     "time_in_force": "day"}, headers=h, timeout=5)
    assert r.status_code == 403 and r.json() == {"code": 40310000, "message": "orders refused by test server"}
    positions = requests.get(f"{alpaca.url}/v2/positions", headers=h, timeout=5).json()
    assert sorted(p["symbol"] for p in positions) == ["AAPL", "MSFT", "NVDA"]
    assert requests.get(f"{alpaca.url}/v2/clock", headers=h, timeout=5).json()["is_open"] is True



def test_main_cycles_are_three_in_session_with_no_clusters(judged: dict[str, Judged]) -> None:
    """FP-1.7's `cycles` (10) in-session cycles without clusters make a warning; main/ has 3, all
    with clusters 0 and all in today's (forced open) session: not yet a failure, so OK."""
    j = judged[MAIN_END.name]
    cycles = [r for r in map(json.loads, (j.root / "logs/run.jsonl").open()) if r.get("msg") == "complete"]
    assert len(cycles) == 3 and all(r["clusters"] == 0 and r["orders"] == 0 for r in cycles)
    assert all(0 <= j.shifter.now - r["_ts"] <= 200 for r in cycles), [r["_ts"] for r in cycles]
    res = j.data["failure_points"]["FP-1.7"]
    assert res["status"] == OK, describe("FP-1.7", res)
    assert res["details"].get("cycles") == 3, describe("FP-1.7", res)
