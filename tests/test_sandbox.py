"""The sandbox: a real simulated bot (daemon and bot processes, loopback servers) and its faults.

One sandbox is shared by the in-process tests (starting one costs a few seconds); the CLI tests
start their own ``trading-readiness sandbox`` process and prove it leaves nothing running.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
import requests

from exporter.core.config import load as load_config
from exporter.core.model import Status
from sandbox import faults
from sandbox.botroot import BotRoot
from sandbox.sandbox import Sandbox, SandboxError, read_state

from .conftest import REPO, clean_env, evaluate, run_cli, wait_for


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox") / "bot", fast=True).start()
    try:
        yield box
    finally:
        box.stop()


def _status(sb: Sandbox, fp: str) -> Status:
    return evaluate(sb.root, only=[fp]).results[fp].status


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sandbox_runs_a_real_daemon_and_bot_that_write_what_the_real_ones_do(sb: Sandbox) -> None:
    lock = (sb.root / "state/uw_flow_daemon.lock").read_text()
    assert sb.daemon_proc is not None and lock.startswith(f"pid={sb.daemon_proc.pid} ts=")
    cache = json.loads((sb.root / "data/uw_flow_cache.json").read_text())
    meta = cache["_metadata"]
    assert meta["updated_by"] == "uw_flow_daemon" and meta["ticker_count"] == len(sb.tickers)
    nvda = cache["NVDA"]
    assert nvda["flow_trades"] and nvda["trade_count"] == len(nvda["flow_trades"])
    assert set(nvda["dark_pool"]) == {"sentiment", "total_premium", "total_notional", "total_notional_1h",
                                      "print_count", "last_update"}
    # the market tide is one point (the first of UW's list) under "data", copied into every ticker
    tide = cache["_market_tide"]
    assert isinstance(tide["data"], dict) and isinstance(tide["last_update"], int)
    assert set(tide["data"]) == {"date", "net_call_premium", "net_put_premium", "net_volume", "timestamp"}
    assert all(cache[t]["market_tide"] == tide["data"] for t in sb.tickers)
    top = cache["_top_net_impact"]
    assert top["data"] and set(top["data"][0]) == {"ticker", "net_premium"} and isinstance(top["last_update"], int)
    wait_for(lambda: _lines(sb.root / "logs/uw_daemon.jsonl")[-1].get("cycle", 0) >= 2, what="two daemon cycles")
    cycle = _lines(sb.root / "logs/uw_daemon.jsonl")[-1]
    assert cycle["event"] == "uw_flow_cycle" and cycle["source"] == "uw_flow_daemon" and isinstance(cycle["ts"], int)
    # an attempt line per call and a sent line per call that went out; the usage state counts the latter
    quota = _lines(sb.root / "data/uw_api_quota.jsonl")
    attempts = [q for q in quota if q["source"] == "uw_flow_daemon"]
    sent = [q for q in quota if q["source"] == "src/uw/uw_client"]
    assert attempts and sent and len(attempts) + len(sent) == len(quota)
    daemon = [q for q in quota if q["url"].startswith(sb.uw.url + "/api/")]  # not the root's seed lines
    assert daemon and all(isinstance(q["ts"], int) and isinstance(q["params"], dict) for q in daemon)
    assert {q["endpoint_name"] for q in sent} == {"default"}
    usage = json.loads((sb.root / "state/uw_usage_state.json").read_text())
    assert usage["date"] == datetime.now(UTC).date().isoformat()
    assert abs(usage["calls_today"] - len(sent)) <= 2 and usage["by_endpoint"]["default"] == usage["calls_today"]
    assert not (sb.root / "reports/uw_health/uw_api_errors.jsonl").exists()  # UW answered every call
    beat = json.loads((sb.root / "state/bot_heartbeat.json").read_text())
    assert sb.bot_proc is not None and beat["pid"] == sb.bot_proc.pid and beat["iter_count"] >= 1
    runs = _lines(sb.root / "logs/run.jsonl")
    cycles = [r for r in runs if r.get("msg") == "complete"]
    assert cycles and "clusters" in cycles[-1] and cycles[-1]["engine_status"] == "ok"
    # main.py mixes decision lines (event_type, no msg or _ts) into the run log
    wait_for(lambda: any("event_type" in r for r in _lines(sb.root / "logs/run.jsonl")), what="a decision line")
    assert all("msg" not in r and "_ts" not in r for r in _lines(sb.root / "logs/run.jsonl") if "event_type" in r)
    # the sandbox's own config and .env are what the exporter and the healer will read
    cfg = load_config(None, str(sb.root))
    run = cfg["healers"]["FP-1.1"]["run"]
    assert run[-2:] == ["sandbox", "restart-daemon"] and str(sb.root) in run
    env = (sb.root / ".env").read_text()
    assert f"UW_BASE_URL={sb.uw.url}" in env and f"ALPACA_BASE_URL={sb.alpaca.url}" in env


def test_a_healthy_sandbox_is_ready(sb: Sandbox) -> None:
    report = evaluate(sb.root)
    failing = {fp: (r.status.name, r.outcome.message) for fp, r in report.results.items()
               if r.status in (Status.ERROR, Status.WARN)}
    assert report.readiness.name == "READY", failing


def test_the_bot_re_stamps_the_cache_so_mtime_lies_while_metadata_tells_the_truth(sb: Sandbox) -> None:
    sb.fault("daemon-stop-writing")
    try:
        cache = sb.root / "data/uw_flow_cache.json"
        meta_then = json.loads(cache.read_text())["_metadata"]["last_update"]
        mtime_then = cache.stat().st_mtime
        wait_for(lambda: cache.stat().st_mtime > mtime_then + 1.5, what="the bot rewriting the cache")
        data = json.loads(cache.read_text())
        assert data["_metadata"]["last_update"] == meta_then  # only the daemon stamps _metadata
        assert data["NVDA"]["_last_update"] > meta_then  # the bot re-stamped the ticker anyway
    finally:
        sb.clear("daemon-stop-writing")


def test_daemon_kill_is_seen_and_restart_daemon_is_idempotent(sb: Sandbox) -> None:
    sb.fault("daemon-kill")
    assert "daemon-kill" in sb.state()["active_faults"]
    assert _status(sb, "FP-1.1") is Status.ERROR
    first = sb.restart_daemon()
    assert first.startswith("uw daemon restarted")
    assert sb.restart_daemon().startswith("uw daemon already running")  # a duplicate webhook: no restart
    assert "daemon-kill" not in sb.state()["active_faults"]
    wait_for(lambda: _status(sb, "FP-1.1") is Status.OK, what="FP-1.1 OK after the restart")


def test_a_hung_daemon_holds_its_lock_and_restart_daemon_replaces_it(sb: Sandbox) -> None:
    assert sb.daemon_proc is not None
    hung = sb.daemon_proc.pid
    sb.fault("daemon-hang")
    assert psutil.Process(hung).status() == psutil.STATUS_STOPPED
    assert f"pid={hung} " in (sb.root / "state/uw_flow_daemon.lock").read_text()
    assert not sb.daemon_healthy()
    assert "restarted" in sb.restart_daemon()
    assert sb.daemon_proc.pid != hung and _gone(hung)


@pytest.mark.parametrize("name", ["uw-401", "broker-401", "kill-switch", "full-positions", "expectancy-gate",
                                  "daemon-duplicate", "uw-unreachable", "main-missing", "env-missing-var",
                                  "env-invalid-limit", "paper-live-url"])
def test_faults_trip_their_failure_point_and_clear_restores_it(sb: Sandbox, name: str) -> None:
    fault = faults.get(name)
    (fp, expected), = fault.expects.items()
    sb.fault(name)
    try:
        wait_for(lambda: _status(sb, fp).name == expected, timeout=15, what=f"{fp} {expected} under {name}")
    finally:
        sb.clear(name)
    wait_for(lambda: _status(sb, fp) is Status.OK, timeout=15, what=f"{fp} OK after clearing {name}")


def test_the_supervisor_rewrites_its_health_report_until_it_hangs_or_fails(sb: Sandbox) -> None:
    path = sb.root / "state/health.json"

    def report() -> dict[str, object]:
        data: dict[str, object] = json.loads(path.read_text())
        return data

    first = report()["timestamp"]
    wait_for(lambda: report()["timestamp"] != first, what="the supervisor's next report")
    assert report()["overall_status"] == "OK" and report()["services"] == {
        "trading-bot": "OK", "uw-daemon": "OK", "heartbeat-keeper": "OK"}
    sb.fault("supervisor-hung")
    try:
        stale = report()["timestamp"]
        assert isinstance(stale, str) and stale < first  # its last report, before it hung
        with pytest.raises(AssertionError, match="timed out"):
            wait_for(lambda: report()["timestamp"] != stale, timeout=2.5, what="a report from a hung supervisor")
    finally:
        sb.clear("supervisor-hung")
    sb.fault("supervisor-failed")
    try:
        failed = report()
        assert failed["overall_status"] == "FAILED"
        assert failed["services"] == {"trading-bot": "OK", "uw-daemon": "OK", "heartbeat-keeper": "FAILED"}
        assert _status(sb, "FP-6.7") is Status.ERROR
    finally:
        sb.clear("supervisor-failed")
    assert report()["overall_status"] == "OK" and _status(sb, "FP-6.7") is Status.OK


def test_the_sandbox_broker_fills_the_bots_market_orders_and_refuses_them_under_the_fault(sb: Sandbox) -> None:
    # a paper account fills a market order at once: nothing the bot sent waits as "accepted"
    wait_for(lambda: sb.alpaca.submitted_orders, what="the bot's first orders")
    bot_orders = [o for o in sb.alpaca.orders if o.get("notional") is not None]
    assert bot_orders and {o["status"] for o in bot_orders} <= {"filled", "rejected"}
    held = {p["symbol"] for p in sb.alpaca.positions}
    assert held and {o["symbol"] for o in bot_orders if o["status"] == "filled"} <= held
    called = sb.root / "logs/submit_order_called.jsonl"
    assert {c["msg"] for c in _lines(called)} == {"SUBMIT_ORDER_CALLED"}
    orders_log, failures_log = sb.root / "logs/orders.jsonl", sb.root / "state/execution_failures.jsonl"

    def refused() -> list[dict[str, object]]:
        return [o for o in _lines(orders_log) if str(o.get("action", "")).endswith("_failed")] \
            if orders_log.exists() else []

    before = len(sb.alpaca.orders)
    sb.fault("orders-rejected")
    try:
        # the broker refuses each submission with 403 {"code": 40310000, "message": ...}: no order is
        # created; the bot, scaling out of what it holds, logs each refusal as main.py does
        wait_for(lambda: len(refused()) >= 3, timeout=15, what="three refused scale-outs in logs/orders.jsonl")
        assert sb.alpaca.refuse_orders == faults.REFUSAL and len(sb.alpaca.orders) == before
        fail = refused()[-1]
        assert fail["type"] == "order" and fail["action"] == "scale_out_failed" and fail["symbol"] in held
        assert fail["error"] == faults.REFUSAL[1] and fail["fraction"] == 0.5
        assert datetime.fromisoformat(str(fail["ts"])).tzinfo is not None
        recorded = _lines(failures_log)
        assert recorded and {r["failure_type"] for r in recorded} <= {"scale_out_failed", "market_fail"}
        assert all(r["details"]["error"] == faults.REFUSAL[1] and datetime.fromisoformat(r["timestamp"])
                   for r in recorded)
        assert sb.alpaca.submitted_orders[-1]["side"] in ("buy", "sell")
        wait_for(lambda: _status(sb, "FP-4.4") is Status.ERROR, timeout=15, what="FP-4.4 ERROR under orders-rejected")
    finally:
        sb.clear("orders-rejected")
    assert sb.alpaca.refuse_orders is None
    wait_for(lambda: _status(sb, "FP-4.4") is Status.OK, timeout=15, what="FP-4.4 OK after clearing orders-rejected")


def test_under_uw_429_the_daemon_keeps_cycling_and_logs_the_rate_limit(sb: Sandbox) -> None:
    """UW answers 429 to everything: the daemon does not pause (the real one's pause flag is never
    set); it completes its cycles with fresh stamps, a zeroed dark pool and the previous flow
    trades, logs each call once in uw_api_errors.jsonl and counts it once in the usage state."""
    errors = sb.root / "reports/uw_health/uw_api_errors.jsonl"
    usage_file = sb.root / "state/uw_usage_state.json"
    daemon_log = sb.root / "logs/uw_daemon.jsonl"

    def rate_limited() -> list[dict[str, object]]:
        return [e for e in _lines(errors) if e.get("uw_api_error_type") == "rate_limit"] if errors.exists() else []

    def sent() -> int:
        return sum(1 for q in _lines(sb.root / "data/uw_api_quota.jsonl") if q["source"] == "src/uw/uw_client")

    def cycle() -> int:
        return int(_lines(daemon_log)[-1]["cycle"])

    calls_then, sent_then = json.loads(usage_file.read_text())["calls_today"], sent()
    sb.fault("uw-429")
    try:
        wait_for(lambda: len(rate_limited()) >= 5, timeout=15, what="rate_limit lines in uw_api_errors.jsonl")
        now_cycle = cycle()
        wait_for(lambda: cycle() >= now_cycle + 2, timeout=15, what="two more daemon cycles under 429")
        line = rate_limited()[-1]
        assert line["http_status"] == 429 and isinstance(line["ts"], float)
        assert str(line["endpoint"]).startswith(sb.uw.url + "/api/") and isinstance(line["request_params"], dict)
        assert "response_body_truncated" in line and str(line["caller"]).endswith("uw_flow_daemon.py:339:_get")
        cache = json.loads((sb.root / "data/uw_flow_cache.json").read_text())
        assert time.time() - cache["_metadata"]["last_update"] < 5  # re-stamped although UW answered 429
        nvda = cache["NVDA"]
        assert nvda["dark_pool"]["print_count"] == 0 and time.time() - nvda["dark_pool"]["last_update"] < 5
        assert nvda["flow_trades"] and time.time() - nvda["flow"]["last_update"] < 5  # last cycle's trades
        limited = [x for x in _lines(sb.root / "data/uw_flow_cache.log.jsonl") if x["event"] == "UW_API_RATE_LIMITED"]
        assert limited and limited[-1]["status"] == 429 and isinstance(limited[-1]["daily_count"], str)
        # one count per call although the client sent each of them three times
        usage = json.loads(usage_file.read_text())
        assert usage["calls_today"] - calls_then == pytest.approx(sent() - sent_then, abs=2)
        assert sb.uw.daily_req_count >= 0
        # a rate-limited daemon is not a dead or stuck one
        assert _status(sb, "FP-1.3") is Status.OK and _status(sb, "FP-1.10") is Status.OK
        wait_for(lambda: _status(sb, "FP-1.6") is Status.ERROR, timeout=10, what="FP-1.6 ERROR under uw-429")
    finally:
        sb.clear("uw-429")
    # UW answers again: the next cycles bring real data back (FP-1.6 stays red until the 20:00 ET reset)
    wait_for(lambda: json.loads((sb.root / "data/uw_flow_cache.json").read_text())["NVDA"]["dark_pool"]["print_count"]
             > 0, timeout=15, what="dark-pool prints again after clearing uw-429")


def test_the_bot_runs_without_adaptive_weights_like_a_fresh_install(sb: Sandbox) -> None:
    weights = sb.root / "state/signal_weights.json"
    weights.unlink()
    try:
        since = time.time()
        wait_for(lambda: any(r.get("msg") == "complete" and float(r["_ts"]) >= since
                             for r in _lines(sb.root / "logs/run.jsonl")[-20:]),
                 what="a completed bot cycle without state/signal_weights.json")
    finally:
        BotRoot(sb.root).write_weights()


def test_the_sandbox_bot_refuses_a_paper_mode_live_url_and_any_remote_broker() -> None:
    from sandbox.bot import refuse_url

    assert refuse_url("PAPER", "http://127.0.0.1:8080") is None
    assert "not the paper host" in str(refuse_url("PAPER", faults.LIVE_URL))
    # a sandbox never talks to a remote broker, the paper host included
    assert "loopback broker only" in str(refuse_url("PAPER", "https://paper-api.alpaca.markets"))
    assert "loopback broker only" in str(refuse_url("LIVE", faults.LIVE_URL))


def test_a_duplicate_daemon_waits_for_the_lock_and_clear_stops_it(sb: Sandbox) -> None:
    sb.fault("daemon-duplicate")
    try:
        dup = sb.duplicate_proc
        assert dup is not None
        wait_for(lambda: psutil.Process(dup.pid).cwd() == str(sb.root), what="the duplicate running")
        assert dup.poll() is None and sb.daemon_proc is not None
        assert f"pid={sb.daemon_proc.pid} " in (sb.root / "state/uw_flow_daemon.lock").read_text()
    finally:
        sb.clear("daemon-duplicate")
    assert sb.duplicate_proc is None and _gone(dup.pid)


def test_admin_endpoint_lists_injects_and_clears_faults(sb: Sandbox) -> None:
    url = sb.admin_url
    listing = requests.get(f"{url}/faults", timeout=5).json()
    assert {f["name"] for f in listing["faults"]} == set(faults.FAULTS)
    r = requests.post(f"{url}/faults/safe-mode", timeout=5)
    assert r.status_code == 200 and "safe-mode" in r.json()["active"]
    assert (sb.root / "state/health_safe_mode.flag").exists()
    r = requests.delete(f"{url}/faults/safe-mode", timeout=5)
    assert r.status_code == 200 and "safe-mode" not in r.json()["active"]
    assert not (sb.root / "state/health_safe_mode.flag").exists()
    assert requests.post(f"{url}/faults/no-such-fault", timeout=5).status_code == 404
    assert requests.get(f"{url}/nowhere", timeout=5).status_code == 404


def test_every_fault_names_a_catalogued_failure_point_and_a_valid_status() -> None:
    from exporter.core.catalog import load

    ids = set(load().ids())
    for f in faults.FAULTS.values():
        assert f.expects, f.name
        for fp, status in f.expects.items():
            assert fp in ids, f"{f.name}: {fp} is not in the catalog"
            assert status in ("WARN", "ERROR"), f.name
    with pytest.raises(KeyError, match="unknown fault"):
        faults.get("nope")


def test_a_second_sandbox_in_the_same_root_is_refused(sb: Sandbox) -> None:
    # the running one belongs to this process, so pretend another process owns it
    state = read_state(sb.root)
    assert state is not None
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (sb.root / ".sandbox/state.json").write_text(json.dumps({**state, "pid": other.pid}))
        with pytest.raises(SandboxError, match="already running"):
            Sandbox(sb.root).start()
    finally:
        other.kill()
        other.wait()
        sb._write_state()


def test_cli_sandbox_runs_takes_faults_and_stops_leaving_nothing_running(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "sandbox", "--dir", str(root), "--fast"],
                            cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state = wait_for(lambda: (read_state(root) or {}).get("bot_pid") and read_state(root), timeout=30,
                         what="the sandbox to come up")
        children = [state["daemon_pid"], state["bot_pid"]]
        r = run_cli("sandbox", "fault", "kill-switch", "--dir", str(root))
        assert r.returncode == 0 and "injected kill-switch" in r.stdout and "FP-3.10 ERROR" in r.stdout
        r = run_cli("sandbox", "faults", "--dir", str(root))
        assert r.returncode == 0 and "* kill-switch" in r.stdout
        r = run_cli("sandbox", "clear", "kill-switch", "--dir", str(root))
        assert r.returncode == 0 and "cleared kill-switch" in r.stdout
        r = run_cli("--bot-root", str(root), "sandbox", "restart-daemon")  # the healer's argv form
        assert r.returncode == 0 and "already running" in r.stdout
        r = run_cli("sandbox", "fault", "no-such-fault", "--dir", str(root))
        assert r.returncode == 3 and "unknown fault" in r.stderr
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "sandbox stopped" in out, out
    assert all(_gone(pid) for pid in children)
    assert read_state(root) is None


@pytest.mark.parametrize("argv, needle", [
    (["sandbox", "--bogus"], "unrecognized arguments: --bogus"),
    (["sandbox", "--alpaca-port", "70000"], "--alpaca-port must be a port number"),
    (["sandbox", "fault"], "the following arguments are required: name"),
])
def test_bad_sandbox_usage_is_one_line_and_exit_3(argv: list[str], needle: str, tmp_path: Path) -> None:
    r = run_cli(*argv, "--dir", str(tmp_path / "x"))
    assert r.returncode == 3 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_client_commands_without_a_running_sandbox_say_so(tmp_path: Path) -> None:
    r = run_cli("sandbox", "fault", "daemon-kill", "--dir", str(tmp_path))
    assert r.returncode == 3 and "no sandbox is running" in r.stderr
    r = run_cli("sandbox", "faults", "--dir", str(tmp_path))  # the list needs no sandbox
    assert r.returncode == 0 and "daemon-kill" in r.stdout


def test_a_killed_sandbox_leaves_no_daemon_or_bot_behind(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "sandbox", "--dir", str(root), "--fast"],
                            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        state = wait_for(lambda: (read_state(root) or {}).get("bot_pid") and read_state(root), timeout=30,
                         what="the sandbox to come up")
        children = [state["daemon_pid"], state["bot_pid"]]
        proc.kill()  # no chance to clean up: the children must notice and exit by themselves
        proc.wait(timeout=10)
        wait_for(lambda: all(_gone(pid) for pid in children), timeout=10, what="the orphaned children to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            if not _gone(pid):
                psutil.Process(pid).kill()
