"""Bad input never crashes a check and never gets an OK it did not earn.

Every file the checks read is corrupted in every way a disk, a torn write or a bad edit can
corrupt it, in a real bot root during a real market session (fake broker clock on loopback); every
implemented point runs through the engine. No point may raise, every point that judges the file must say
WARN/ERROR/SKIPPED, and at least one must name the file, so the operator knows where to look.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.core.catalog import load as load_catalog
from exporter.core.model import Report, Status
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

from .conftest import Procs, evaluate, market_at

# a Tuesday, 11:00 New York: every in-session point runs instead of skipping for the session
WHEN = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
INTERNAL = re.compile(r"Traceback|check raised|internal error|\b\w+(Error|Exception)\b|cannot convert")

GATES = ("FP-3.3", "FP-3.4", "FP-3.5", "FP-3.6", "FP-3.7")
#: file -> the points whose verdict rests on it (a corrupt file must not leave any of them OK)
JUDGES: dict[str, tuple[str, ...]] = {
    "data/uw_flow_cache.json": ("FP-1.2", "FP-1.3", "FP-1.4", "FP-1.9", "FP-2.4", "FP-2.5"),
    "state/signal_weights.json": ("FP-2.1", "FP-2.6", "FP-5.3"),
    "state/governor_freezes.json": ("FP-3.1", "FP-5.3"),
    "state/kill_switch.json": ("FP-3.1", "FP-3.10", "FP-5.3"),
    "state/bot_heartbeat.json": ("FP-5.3",),
    "state/health.json": ("FP-5.3", "FP-6.7"),
    "state/self_healing_threshold.json": ("FP-3.8", "FP-5.3"),
    "state/uw_thresholds_hierarchical.json": ("FP-2.7", "FP-5.3"),
    "logs/run.jsonl": ("FP-1.7", "FP-1.8", "FP-2.2", "FP-2.3", *GATES),
    "state/blocked_trades.jsonl": ("FP-2.2", "FP-2.3", *GATES),
    "state/uw_usage_state.json": ("FP-1.6",),
}
#: objects are expected; a valid JSON document of another type is as unusable as garbage
WRONG_TYPES = {"list": "[1, 2]", "string": '"hello"', "null": "null", "number": "42"}
#: JSON the parser refuses although every byte of it is JSON: nesting deeper than it goes, and an
#: integer of more digits than int() reads
UNREADABLE = {"deep": "[" * 100_000 + "]" * 100_000, "bigint": '{"ts": ' + "1" * 5000 + "}"}
CORRUPTIONS = ("empty", "truncated", *WRONG_TYPES, *UNREADABLE, "binary", "directory")
#: the points that re-read a file that does not parse (catalog params retries, retry_delay_seconds)
RETRYING = ("FP-1.2", "FP-2.1", "FP-2.6", "FP-2.7", "FP-5.3")
#: every number in the file replaced: valid JSON, absurd values
VALUES = {"huge": 1e308, "negative": -1e18, "nan": math.nan, "inf": math.inf}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeAlpaca, FakeUW, Callable[[], float]]]:
    alpaca, uw = FakeAlpaca().start(), FakeUW().start()
    try:
        clock = market_at(alpaca, WHEN)
        yield alpaca, uw, clock
    finally:
        alpaca.stop()
        uw.stop()


def healthy(tmp_path: Path, servers: tuple[FakeAlpaca, FakeUW, Callable[[], float]]) -> BotRoot:
    alpaca, uw, _ = servers
    bot = BotRoot(tmp_path / "bot", now=WHEN.timestamp()).healthy(alpaca.url, uw.url)
    usage = bot.p("state/uw_usage_state.json")
    if not usage.exists():  # the bot's UW client writes it with its first call
        usage.write_text(json.dumps({"by_endpoint": {"default": 40}, "calls_today": 40,
                                     "date": WHEN.date().isoformat(), "minute_window": []}, indent=2))
    # a file that does not parse is re-read `retries` times before it counts as corrupt: the same
    # retries here, 20 ms apart instead of 200 (nothing rewrites these files)
    bot.p("trading-readiness.yaml").write_text("checks:\n" + "".join(
        f"  {fp}: {{params: {{retry_delay_seconds: 0.02}}}}\n" for fp in RETRYING))
    return bot


def corrupt(path: Path, how: str) -> None:
    jsonl = path.suffix == ".jsonl"
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        text = path.read_text()
        # a JSON file cut mid-write; a log whose last line was cut mid-append
        path.write_text(text[: len(text) // 2] if not jsonl else text + '{"ts": 17')
    elif how in WRONG_TYPES:
        path.write_text(WRONG_TYPES[how] + ("\n" if jsonl else ""))
    elif how in UNREADABLE:
        path.write_text(UNREADABLE[how] + ("\n" if jsonl else ""))
    elif how == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif how == "directory":
        path.unlink()
        (path / "inner").mkdir(parents=True)
    elif how in VALUES:
        v = VALUES[how]
        if jsonl:
            path.write_text("".join(json.dumps(_numbers(json.loads(ln), v)) + "\n"
                                    for ln in path.read_text().splitlines() if ln.strip()))
        else:
            path.write_text(json.dumps(_numbers(json.loads(path.read_text()), v)))
    else:
        raise AssertionError(how)


def _numbers(o: Any, v: float) -> Any:
    if isinstance(o, bool) or o is None:
        return o
    if isinstance(o, (int, float)):
        return v
    if isinstance(o, dict):
        return {k: _numbers(x, v) for k, x in o.items()}
    if isinstance(o, list):
        return [_numbers(x, v) for x in o]
    return o


def no_internal_errors(report: Report) -> None:
    assert len(report.results) == len([p for p in load_catalog() if p.detection == "implemented"])
    crashed = {fp: r.outcome.message for fp, r in report.results.items() if INTERNAL.search(r.outcome.message)}
    assert not crashed, crashed


def judges_left(rel: str, how: str) -> bool:
    return not (rel == "state/bot_heartbeat.json" and how in WRONG_TYPES)


def unparseable(rel: str, how: str) -> bool:
    """Whether ``how`` leaves ``rel`` without anything a reader could use."""
    if rel.endswith(".jsonl"):
        # an empty log and a torn last line are normal life for an append-only log
        return how not in ("empty", "truncated")
    return True


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("rel", sorted(JUDGES))
def test_corrupt_file_is_named_and_never_ok(tmp_path: Path, servers: Any, rel: str, how: str) -> None:
    bot = healthy(tmp_path, servers)
    corrupt(bot.p(rel), how)
    report = evaluate(bot.path, clock=servers[2])
    no_internal_errors(report)
    if not unparseable(rel, how):
        return
    name = Path(rel).name
    if not judges_left(rel, how):
        # a wrong-type heartbeat parses: only FP-6.3 can tell, and only with the bot running
        assert report.results["FP-5.3"].status is Status.OK
        return
    # FP-5.3 answers "does it parse": a valid document of the wrong type does
    judges = [fp for fp in JUDGES[rel] if not (fp == "FP-5.3" and how in WRONG_TYPES)]
    said_ok = {fp: report.results[fp].outcome.message for fp in judges
               if report.results[fp].status is Status.OK}
    assert not said_ok, said_ok
    flagged = [fp for fp, r in report.results.items()
               if r.status in (Status.WARN, Status.ERROR) and name in r.outcome.message]
    assert flagged, {fp: (report.results[fp].status.name, report.results[fp].outcome.message)
                     for fp in JUDGES[rel]}


@pytest.mark.parametrize("how", list(VALUES))
@pytest.mark.parametrize("rel", sorted(JUDGES))
def test_absurd_values_never_crash(tmp_path: Path, servers: Any, rel: str, how: str) -> None:
    bot = healthy(tmp_path, servers)
    corrupt(bot.p(rel), how)
    report = evaluate(bot.path, clock=servers[2])
    no_internal_errors(report)
    # an age computed from an absurd timestamp is shown in a few digits, not as a 300-digit number
    # (counts the bot wrote are echoed as written)
    unreadable = {fp: r.outcome.message[:80] for fp, r in report.results.items()
                  if re.search(r"\d{30}(\.\d+)? (days|h|min|s)\b", r.outcome.message)}
    assert not unreadable, unreadable


@pytest.mark.parametrize("how", ["empty", "binary", "directory", "nan", "inf", "huge", "negative"])
def test_corrupt_env_names_the_problem(tmp_path: Path, servers: Any, how: str) -> None:
    bot = healthy(tmp_path, servers)
    env = bot.p(".env")
    if how in ("nan", "inf", "huge", "negative"):
        # every numeric setting absurd: each must be refused by name, never used
        text = {"nan": "nan", "inf": "inf", "huge": "1e308", "negative": "-1e18"}[how]
        lines = [ln.split("=", 1) for ln in env.read_text().splitlines()]
        env.write_text("".join(f"{k}={text if v.replace('.', '').isdigit() else v}\n" for k, v in lines))
    else:
        corrupt(env, how)
    report = evaluate(bot.path, clock=servers[2])
    no_internal_errors(report)
    if how in ("empty", "binary", "directory"):
        assert report.results["FP-5.1"].status is Status.ERROR
        assert ".env" in report.results["FP-5.1"].outcome.message
        return
    assert report.results["FP-5.2"].status is Status.ERROR
    for var, fp in (("MAX_CONCURRENT_POSITIONS", "FP-3.2"), ("UW_DAILY_LIMIT", "FP-1.6")):
        r = report.results[fp]
        if r.status is Status.OK:
            assert how in ("huge",), (fp, r.outcome.message)  # 1e308 is a (silly) valid cap/limit
        else:
            assert var in r.outcome.message, (fp, r.outcome.message)


LIVE = {"state/bot_heartbeat.json": ("bot", "FP-6.3", "heartbeat"),
        "logs/uw_daemon.jsonl": ("daemon", "FP-1.10", "uw_daemon.jsonl")}


@pytest.mark.parametrize("how", [*CORRUPTIONS, *VALUES])
@pytest.mark.parametrize("rel", sorted(LIVE))
def test_corrupt_file_of_a_running_process(tmp_path: Path, servers: Any, rel: str, how: str) -> None:
    """FP-6.3 and FP-1.10 judge their files only while main.py / the daemon run: run them for real."""
    bot = healthy(tmp_path, servers)
    which, fp, named = LIVE[rel]
    procs = Procs(bot.path)
    try:
        procs.bot() if which == "bot" else procs.daemon()
        corrupt(bot.p(rel), how)
        report = evaluate(bot.path, clock=servers[2])
    finally:
        procs.stop_all()
    no_internal_errors(report)
    r = report.results[fp]
    assert "depends on" not in r.outcome.message, r.outcome.message
    if how in VALUES and (how != "nan" or rel.endswith(".jsonl")):
        return  # absurd but numeric: judged on its merits (a future or ancient time), never a crash
    if rel.endswith(".jsonl") and how in ("empty", "truncated"):
        return
    assert r.status in (Status.WARN, Status.ERROR), r.outcome.message
    assert named in r.outcome.message, r.outcome.message


# --- malformed broker and UW answers ---------------------------------------------------------------
def _account_strings(a: FakeAlpaca) -> None:
    a.account = {k: "abc" for k in a.account}


BROKER_FAULTS: dict[str, tuple[Callable[[FakeAlpaca, FakeUW], None], dict[str, str]]] = {
    # name: (how the answer is broken, {point: text its non-OK message must carry})
    "alpaca-html-200": (lambda a, u: a.set_mode("nonjson"), {"FP-4.1": "not JSON"}),
    "alpaca-500": (lambda a, u: a.set_mode("500"), {"FP-4.1": "500"}),
    "uw-html-200": (lambda a, u: u.set_mode("nonjson"), {"FP-1.5": "not JSON"}),
    "uw-500": (lambda a, u: u.set_mode("500"), {"FP-1.5": "500"}),
    "account-empty": (lambda a, u: setattr(a, "account", {}), {"FP-4.6": "status", "FP-4.10": "equity"}),
    "account-strings": (lambda a, u: _account_strings(a), {"FP-4.6": "status", "FP-4.10": "equity"}),
    "account-list": (lambda a, u: setattr(a, "account", [1, 2]), {"FP-4.2": "object"}),
    "account-nan": (lambda a, u: setattr(a, "account", {**a.account, "equity": "NaN", "buying_power": "Infinity"}),
                    {"FP-4.10": "equity"}),
    "positions-object": (lambda a, u: setattr(a, "positions", {"not": "a list"}),
                         {"FP-3.2": "positions", "FP-4.5": "positions"}),
    "positions-garbage": (lambda a, u: setattr(a, "positions", [{"x": 1}, "str", None,
                                                                {"symbol": None, "qty": "abc"}]),
                          {"FP-4.5": "symbol"}),
    # one endpoint broken while the clock answers: FP-4.1 is OK, so "reported by FP-4.1" would
    # leave a dead endpoint reported by nobody
    "orders-500-only": (lambda a, u: a.set_mode("500", paths=["/v2/orders"]), {"FP-4.4": "500", "FP-4.7": "500"}),
    "account-500-only": (lambda a, u: a.set_mode("500", paths=["/v2/account"]), {"FP-4.2": "500"}),
    "positions-html-only": (lambda a, u: a.set_mode("nonjson", paths=["/v2/positions"]),
                            {"FP-3.2": "not JSON", "FP-4.5": "not JSON"}),
    "clock-garbage": (lambda a, u: setattr(a, "clock", {"timestamp": "yesterday", "is_open": "maybe",
                                                        "next_open": 5, "next_close": None}),
                      {"FP-4.1": "is_open"}),
}


@pytest.mark.parametrize("fault", sorted(BROKER_FAULTS))
def test_malformed_broker_and_uw_answers(tmp_path: Path, fault: str) -> None:
    """Fresh fakes per case: a broken answer must not leak into the next case through the module servers."""
    alpaca, uw = FakeAlpaca().start(), FakeUW().start()
    try:
        clock = market_at(alpaca, WHEN)
        bot = BotRoot(tmp_path / "bot", now=WHEN.timestamp()).healthy(alpaca.url, uw.url)
        breaks, expect = BROKER_FAULTS[fault]
        breaks(alpaca, uw)
        report = evaluate(bot.path, clock=clock)
    finally:
        alpaca.stop()
        uw.stop()
    no_internal_errors(report)
    for fp, text in expect.items():
        r = report.results[fp]
        assert r.status in (Status.WARN, Status.ERROR), (fp, r.status.name, r.outcome.message)
        assert text in r.outcome.message, (fp, r.outcome.message)
    if fault == "clock-garbage":
        # "maybe" is no open market: in-session points fall back to New York hours, not "after the close"
        assert "after the close" not in report.results["FP-1.7"].outcome.message


# --- the exporter's HTTP server under hostile clients -------------------------------------------
ODD_REQUESTS: dict[str, tuple[bytes, int | None]] = {
    # name: (raw request, expected status; None when any answer or none is fine as long as /metrics lives)
    "PUT": (b"PUT /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "unknown method": (b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "lower-case get": (b"get /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    "traversal": (b"GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "encoded traversal": (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "absolute URI": (b"GET http://elsewhere/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "NUL in path": (b"GET /met\x00rics HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "huge request line": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 414),
    "huge header": (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    "500 headers": (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(500)) + b"\r\n", 431),
    "bad version": (b"GET /metrics HTTP/9.9\r\n\r\n", None),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
    "binary": (bytes(range(256)) * 4, None),
    "garbage basic auth": (b"GET /metrics HTTP/1.1\r\nAuthorization: Basic !!!\r\n\r\n", 200),
    "POST huge length": (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc", 405),
}


@pytest.fixture(scope="module")
def exporter_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The real HTTP server in-process on an ephemeral loopback port (the scheduler is not started:
    the exposition before the first run is all these tests need)."""
    from exporter.core.config import load as load_config
    from exporter.serve.scheduler import Scheduler
    from exporter.serve.server import make_server

    bot = BotRoot(tmp_path_factory.mktemp("srv") / "bot").healthy()
    server = make_server(Scheduler(load_config(None, str(bot.path))), "127.0.0.1:0")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:  # the server may reset a connection that sent garbage: fine
            pass
        return out


def metrics_answer(port: int) -> bool:
    r = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return r.startswith(b"HTTP/1.1 200 ") and b"trading_failure_point_info{" in r


@pytest.mark.parametrize("name", sorted(ODD_REQUESTS))
def test_odd_requests_get_an_answer_and_metrics_keep_answering(exporter_port: int, name: str) -> None:
    data, status = ODD_REQUESTS[name]
    answer = raw_request(exporter_port, data)
    if status is not None:
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:120]
    assert b"root:" not in answer and b"Traceback" not in answer
    assert metrics_answer(exporter_port)


def test_slow_loris_connections_do_not_starve_metrics(exporter_port: int) -> None:
    """Clients that send half a request and wait hold a thread each (bounded by Handler.timeout);
    they must not stop a scrape from being answered."""
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", exporter_port), timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(s)
        assert metrics_answer(exporter_port)
    finally:
        for s in held:
            s.close()
    assert metrics_answer(exporter_port)


@pytest.mark.parametrize("adjustment", ["NaN", "Infinity", '"high"', "[0.5]"])
def test_active_self_healing_adjustment_that_is_not_a_number_is_not_ok(tmp_path: Path, servers: Any,
                                                                       adjustment: str) -> None:
    """An active adjustment the bot adds to its threshold: NaN there blocks every entry."""
    bot = healthy(tmp_path, servers)
    bot.p("state/self_healing_threshold.json").write_text(
        f'{{"adjustment": {adjustment}, "activated_at": {WHEN.timestamp() - 600}, "consecutive_losses": 3}}')
    r = evaluate(bot.path, only=["FP-3.8"], clock=servers[2]).results["FP-3.8"]
    assert r.status is Status.WARN, r.outcome.message
    assert "self_healing_threshold.json" in r.outcome.message


@pytest.mark.parametrize("tide", ['{"data": "x"}', '{"data": null}', "[1, 2]", '{"data": [1, "x", null]}'])
def test_market_tide_without_a_single_point_is_not_ok(tmp_path: Path, servers: Any, tide: str) -> None:
    bot = healthy(tmp_path, servers)
    cache = json.loads(bot.p("data/uw_flow_cache.json").read_text())
    cache["_market_tide"] = json.loads(tide)
    bot.p("data/uw_flow_cache.json").write_text(json.dumps(cache))
    r = evaluate(bot.path, only=["FP-2.5"], clock=servers[2]).results["FP-2.5"]
    assert r.status is Status.WARN, r.outcome.message
    assert "_market_tide" in r.outcome.message
