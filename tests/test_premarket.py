"""Pre-market verification schedule: next session open from the broker, minus the offset.

The fake broker's clock and calendar follow NYSE rules at a controlled moment (November 2026:
Thanksgiving 11-26 closed, 11-27 closes at 13:00; DST ended 11-01), and the schedule runs on
that same moment, on a real bot root, through real loopback HTTP.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.bot.context import Context
from exporter.bot.market import NY
from exporter.core.config import load as load_config
from exporter.serve.premarket import PremarketSchedule, PremarketVerifier, calendar_opens
from exporter.serve.scheduler import Scheduler
from exporter.tools.verify import HISTORY, LATEST
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot

from .conftest import REPO, clean_env, wait_for
from .prom import stop_process

OFFSET = 1800.0  # the default exporter.premarket_verify_offset_seconds


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)  # type: ignore[misc]


@pytest.fixture
def root(tmp_path: Path, alpaca: FakeAlpaca) -> BotRoot:
    alpaca.rate_limit = 1_000_000  # a frozen time source puts every request in one rate window
    return BotRoot(tmp_path / "bot").healthy(alpaca.url, None)


def schedule_at(alpaca: FakeAlpaca, root: BotRoot, when: datetime) -> PremarketSchedule:
    """The broker and the schedule both at ``when`` (a fresh context: no memoised clock)."""
    alpaca.clock = None
    alpaca.calendar = None
    alpaca.time_source = lambda: when
    ts = when.timestamp()
    ctx = Context(load_config(None, str(root.path)), environ={}, clock=lambda: ts)
    return PremarketSchedule(ctx)


def test_weekend_runs_before_monday_open(alpaca: FakeAlpaca, root: BotRoot) -> None:
    monday_run = ny(2026, 11, 23, 9, 0)
    for when in (ny(2026, 11, 20, 16, 30), ny(2026, 11, 21, 12, 0), ny(2026, 11, 22, 23, 59)):
        sched = schedule_at(alpaca, root, when)
        plan = sched.plan(when)
        assert plan.source == "broker"
        assert plan.session_open == ny(2026, 11, 23, 9, 30)
        assert plan.run_at == monday_run == sched.next_run(when)
        assert not sched.due(when, None)
    before = ny(2026, 11, 23, 8, 59, 59)
    assert not schedule_at(alpaca, root, before).due(before, None)
    at = ny(2026, 11, 23, 9, 0)
    sched = schedule_at(alpaca, root, at)
    assert sched.due(at, None)
    # once it ran for Monday's session, the next run is Tuesday's
    later = ny(2026, 11, 23, 9, 10)
    sched = schedule_at(alpaca, root, later)
    assert not sched.due(later, last_run=ny(2026, 11, 23, 9, 0, 5))
    assert sched.next_run(later, last_run=ny(2026, 11, 23, 9, 0, 5)) == ny(2026, 11, 24, 9, 0)
    # a run from the previous session does not count for this one
    assert sched.due(later, last_run=ny(2026, 11, 20, 9, 0, 5))


def test_holiday_and_half_day(alpaca: FakeAlpaca, root: BotRoot) -> None:
    # Wednesday evening: Thursday is Thanksgiving, Friday opens at 09:30 (and closes at 13:00)
    for when in (ny(2026, 11, 25, 17, 0), ny(2026, 11, 26, 9, 0), ny(2026, 11, 26, 12, 0)):
        sched = schedule_at(alpaca, root, when)
        assert sched.next_run(when) == ny(2026, 11, 27, 9, 0), when
        assert not sched.due(when, None)
    # Friday 14:00, after the half day's 13:00 close: the market is closed, next run Monday
    when = ny(2026, 11, 27, 14, 0)
    sched = schedule_at(alpaca, root, when)
    assert sched.next_open(when) == ny(2026, 11, 30, 9, 30)
    assert sched.plan(when, last_run=ny(2026, 11, 27, 9, 0)).run_at == ny(2026, 11, 30, 9, 0)


def test_dst_change_and_offset_from_config(alpaca: FakeAlpaca, root: BotRoot) -> None:
    # Friday 2026-10-30 is EDT (UTC-4); Monday 2026-11-02 is EST (UTC-5)
    when = ny(2026, 10, 30, 17, 0)
    sched = schedule_at(alpaca, root, when)
    assert sched.next_open(when) == datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    assert sched.next_run(when) == datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    (root.path / "trading-readiness.yaml").write_text("exporter: {premarket_verify_offset_seconds: 5400}\n")
    sched = schedule_at(alpaca, root, when)
    assert sched.offset == timedelta(seconds=5400)
    assert sched.next_run(when) == datetime(2026, 11, 2, 13, 0, tzinfo=UTC)


def test_explicit_calendar_closure_is_respected(alpaca: FakeAlpaca, root: BotRoot) -> None:
    """An unscheduled closure the broker announces (no calendar entry, clock agrees) is skipped."""
    when = ny(2026, 11, 23, 17, 0)
    sched = schedule_at(alpaca, root, when)
    alpaca.calendar = [{"date": d, "open": "09:30", "close": "16:00"} for d in ("2026-11-23", "2026-11-25")]
    assert sched.next_run(when) == ny(2026, 11, 25, 9, 0)
    assert calendar_opens([{"date": "2026-11-25", "open": "0930"}, {"date": "bad"}, "junk"]) == [
        ny(2026, 11, 25, 9, 30).astimezone(UTC)]


def test_unreachable_broker_falls_back_to_local_hours_and_says_so(alpaca: FakeAlpaca, root: BotRoot) -> None:
    when = ny(2026, 11, 25, 17, 0)
    sched = schedule_at(alpaca, root, when)
    alpaca.set_mode("500")
    plan = sched.plan(when)
    # regular hours know no holidays: Thanksgiving is planned (harmless), and marked as a guess
    assert plan.source == "local"
    assert plan.session_open == ny(2026, 11, 26, 9, 30)
    with pytest.raises(ValueError):
        sched.plan(datetime(2026, 11, 25, 17, 0))  # naive datetimes are refused


def _record(root: BotRoot, started: datetime, exit_code: int) -> None:
    data = root.path / "data"
    data.mkdir(exist_ok=True)
    (data / LATEST).write_text(json.dumps({"exit_code": exit_code, "verification": {
        "started": started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}))


def test_runner_runs_once_per_session_and_exports_the_outcome(alpaca: FakeAlpaca, root: BotRoot) -> None:
    now = [ny(2026, 11, 25, 12, 0).timestamp()]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    alpaca.time_source = lambda: datetime.fromtimestamp(now[0], UTC)
    cfg = load_config(None, str(root.path))
    ran: list[float] = []

    def run(config: object) -> int:
        ran.append(now[0])
        return 2

    runner = PremarketVerifier(Scheduler(cfg, environ={}, clock=clock), clock=clock, run=run)

    def gauges() -> dict[str, float]:
        return {m.name: m.samples[0].value for m in runner.collect() if m.samples}

    def at(when: datetime) -> float:
        now[0] = when.timestamp()
        return runner.step()

    # open market on Wednesday, Thanksgiving: nothing runs; the next run is Friday 09:00 ET
    for when in (ny(2026, 11, 25, 12, 0), ny(2026, 11, 26, 9, 0), ny(2026, 11, 27, 8, 59)):
        wait = at(when)
        assert ran == [] and 0 < wait <= 300
    assert gauges() == {"trading_verification_next_run_timestamp_seconds": ny(2026, 11, 27, 9, 0).timestamp()}
    at(ny(2026, 11, 27, 9, 0, 30))
    at(ny(2026, 11, 27, 9, 1))
    assert ran == [ny(2026, 11, 27, 9, 0, 30).timestamp()]
    g = gauges()
    assert g["trading_verification_last_status"] == 2
    assert g["trading_verification_last_run_timestamp_seconds"] == ran[0]
    assert g["trading_verification_next_run_timestamp_seconds"] == ny(2026, 11, 30, 9, 0).timestamp()

    # Monday: the systemd timer's verify already ran (record file): the exporter does not repeat it
    _record(root, ny(2026, 11, 30, 9, 5), 0)
    at(ny(2026, 11, 30, 9, 10))
    assert len(ran) == 1
    g = gauges()
    assert g["trading_verification_last_status"] == 0
    assert g["trading_verification_last_run_timestamp_seconds"] == ny(2026, 11, 30, 9, 5).timestamp()


# --- wired into the exporter ------------------------------------------------------------------
class Serve:
    """A real ``trading-readiness serve`` subprocess on a free loopback port."""

    def __init__(self, root: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--bot-root", str(root), "serve", "--listen", f"127.0.0.1:{self.port}"],
            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)

    def get(self, path: str) -> str:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:  # noqa: S310 (loopback URL built here)
                return str(r.read().decode())
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log.read_text()}") from None
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@contextlib.contextmanager
def serve_process(root: Path, log: Path) -> Iterator[Serve]:
    exp = Serve(root, log)
    try:
        yield exp
    finally:
        exp.stop()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_exporter_runs_the_verification_when_due_and_exports_it(tmp_path: Path, alpaca: FakeAlpaca,
                                                                 root: BotRoot) -> None:
    # the broker says the next session opens in 10 minutes: inside the 30-minute offset, so due now.
    # Its calendar agrees (that session, then one a day): the generated calendar's real opening
    # hours would put today's real open after `soon` whenever the test runs shortly before it
    soon = (datetime.now(UTC) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    alpaca.clock = {"is_open": False, "next_open": soon.isoformat()}
    first = soon.astimezone(NY)
    alpaca.calendar = [{"date": first.date().isoformat(), "open": first.strftime("%H:%M"), "close": "23:59"}] + [
        {"date": (first.date() + timedelta(days=n)).isoformat(), "open": "09:30", "close": "16:00"} for n in range(1, 8)]
    data = root.path / "data"
    with serve_process(root.path, tmp_path / "serve.log") as exp:
        def exported() -> str | None:
            text = exp.get("/metrics")
            return text if metric(text, "trading_verification_last_status") is not None else None

        text = wait_for(exported, timeout=90, what="trading_verification_last_status", every=0.3)
        record = json.loads((data / LATEST).read_text())
        assert metric(text, "trading_verification_last_status") == record["exit_code"]
        started = metric(text, "trading_verification_last_run_timestamp_seconds")
        assert started is not None and abs(started - datetime.fromisoformat(
            record["verification"]["started"].replace("Z", "+00:00")).timestamp()) < 1.0
        assert len((data / HISTORY).read_text().splitlines()) == 1
        # the run for this session happened: the next one is planned for the session after
        nxt = metric(text, "trading_verification_next_run_timestamp_seconds")
        assert nxt is not None and nxt > soon.timestamp()
        assert "pre-market verification finished with exit code" in exp.log.read_text()
