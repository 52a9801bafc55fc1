"""Shared fixtures: loopback Alpaca and UW servers, bot roots on disk, real bot processes."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.bot.context import Context
from exporter.checks import registry
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Report
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"

DAEMON_SCRIPT = textwrap.dedent("""
    import fcntl, os, sys, time, datetime
    fh = open("state/uw_flow_daemon.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        time.sleep(float(os.environ.get("DUPLICATE_LINGER", "0")))
        sys.exit("another uw_flow_daemon holds the lock")
    fh.truncate(0)
    fh.write(f"pid={os.getpid()} ts={datetime.datetime.now(datetime.timezone.utc).isoformat()}\\n")
    fh.flush()
    while True:
        time.sleep(0.5)
""")

BOT_SCRIPT = "import time\nwhile True:\n    time.sleep(0.5)\n"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under `make test` (NO_SKIPPED_TESTS=1) a skipped test fails: it installed every real server,
    so a skip would be a green run that proved nothing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("NO_SKIPPED_TESTS") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under make test, which installs everything the suite needs: {reason}"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without anything that would leak into the bot's view."""
    drop = ("ALPACA", "APCA", "UW_", "TRADING_", "MAX_", "MIN_EXEC", "ENTRY_THRESHOLD", "COOLDOWN", "AUDIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("ALPACA", "APCA", "UW_", "TRADING_", "MAX_", "MIN_EXEC", "ENTRY_THRESHOLD", "COOLDOWN", "AUDIT_")):
            monkeypatch.delenv(k, raising=False)


@pytest.fixture
def alpaca() -> Iterator[FakeAlpaca]:
    srv = FakeAlpaca().start()
    yield srv
    srv.stop()


@pytest.fixture
def uw() -> Iterator[FakeUW]:
    srv = FakeUW().start()
    yield srv
    srv.stop()


@pytest.fixture
def bot(tmp_path: Path, alpaca: FakeAlpaca, uw: FakeUW) -> BotRoot:
    root = BotRoot(tmp_path / "bot").healthy(alpaca.url, uw.url)
    return root


class Procs:
    """Real processes started in the bot root; all killed at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, cwd=cwd or self.root, env=env or clean_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def daemon(self, linger: float = 0) -> subprocess.Popen[bytes]:
        (self.root / "uw_flow_daemon.py").write_text(DAEMON_SCRIPT)
        p = self.start([sys.executable, "uw_flow_daemon.py"], env=clean_env(DUPLICATE_LINGER=str(linger)))
        if not linger:
            wait_for(lambda: _lock_written(self.root, p.pid), what="daemon lock")
        return p

    def bot(self, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        (self.root / "main.py").write_text(BOT_SCRIPT)
        p = self.start([sys.executable, "-u", str((cwd and (self.root / "main.py")) or "main.py")], cwd=cwd)
        # until its exec is done the child shows the test runner's command line, not main.py's
        wait_for(lambda: _runs_main(p.pid), what="main.py started")
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)


def _runs_main(pid: int) -> bool:
    try:
        return b"main.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _lock_written(root: Path, pid: int) -> bool:
    try:
        return f"pid={pid}" in (root / "state/uw_flow_daemon.lock").read_text()
    except OSError:
        return False


@pytest.fixture
def procs(bot: BotRoot) -> Iterator[Procs]:
    p = Procs(bot.path)
    yield p
    p.stop_all()


@pytest.fixture
def running(procs: Procs) -> Procs:
    """The daemon and the bot, both running as real processes in the bot root."""
    procs.daemon()
    procs.bot()
    return procs


#: Tests that start a whole stack (bots, exporters, healers, Prometheus, Alertmanagers): `make test`
#: runs them on one xdist worker (``--dist loadgroup``), one stack at a time, so two of them never
#: starve each other's bots on a 2-core machine; the light tests share the other worker.
STACKS = pytest.mark.xdist_group("stacks")


SLOW_CLIENTS = 3000


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def flood_slow_clients(port: int, pid: int, head: bytes, socks: list[socket.socket]) -> tuple[int, int]:
    """SLOW_CLIENTS connections to ``port`` that never finish a request: half send nothing, half
    send ``head`` a byte at a time. They are appended to ``socks`` (the caller closes them).
    Returns the server's (``pid``) thread count before and the most seen during the flood."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SLOW_CLIENTS + 200:
        pytest.skip(f"needs {SLOW_CLIENTS + 200} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, SLOW_CLIENTS + 200), hard))
    before = most = threads(pid)
    deadline = time.monotonic() + 60  # bounded in time as well as in count
    for i in range(SLOW_CLIENTS):
        if time.monotonic() > deadline:
            break
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue  # refused or timed out under the flood: the server's choice, not a hang
        s.setblocking(False)
        socks.append(s)
        if i % 2:  # every other one sends its request head a byte at a time; the rest send nothing
            with contextlib.suppress(OSError):
                s.send(head[:1])
        if i % 250 == 0:
            most = max(most, threads(pid))
    for k in range(1, 12):  # more bytes, slowly, from the talkative half
        for s in socks[1::2]:
            with contextlib.suppress(OSError):
                s.send(head[k:k + 1])
        most = max(most, threads(pid))
    assert len(socks) >= SLOW_CLIENTS // 2
    return before, most


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition", every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def evaluate(root: Path, only: list[str] | None = None, config: Path | None = None,
             clock: Callable[[], float] = time.time, environ: dict[str, str] | None = None,
             isolated: bool = True) -> Report:
    """Run the engine in-process on a real bot root (no mocks: real files, loopback servers).

    ``only`` points run ``isolated`` by default: exactly those, so a test probes a check's own
    logic; ``isolated=False`` runs their dependencies too, as `check --only` does."""
    cfg = load_config(str(config) if config else None, str(root))
    ctx = Context(cfg, environ=environ if environ is not None else {}, clock=clock)
    return Engine(ctx, registry()).report(only, with_dependencies=not isolated)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          env=env or clean_env(), timeout=timeout, cwd=REPO)


def check_json(root: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    r = run_cli("--bot-root", str(root), "check", "--json", *extra, env=env)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def market_at(alpaca: FakeAlpaca, when: Any) -> Callable[[], float]:
    """Put the fake broker's clock and calendar at ``when`` (aware datetime, NYSE rules: holidays,
    half days) and return the matching clock for ``evaluate(..., clock=...)``."""
    alpaca.clock = None
    alpaca.calendar = None
    alpaca.time_source = lambda: when
    alpaca.rate_limit = 1_000_000  # a frozen time source puts every request in one rate window
    ts = when.timestamp()
    return lambda: ts
