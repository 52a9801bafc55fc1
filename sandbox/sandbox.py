"""``trading-readiness sandbox``: a whole simulated stock-bot on loopback, with fault injection.

Why: readiness is only worth something when the whole chain is seen working -- a fault becomes a
failing point, an alert, a heal and READY again -- and nobody should need a trading account or a
UW subscription to see it. The sandbox runs, in one bot root:

* FakeUW and FakeAlpaca (threads of this process, 127.0.0.1);
* a real UW daemon process (``python uw_flow_daemon.py``, a launcher for
  :mod:`sandbox.daemon`) and a real bot process (``python -u main.py`` for
  :mod:`sandbox.bot`), each in its own process group so stopping kills everything;
* a supervisor thread in the role of ``deploy_supervisor.py`` that rewrites
  ``state/health.json`` (every 300 s, 1 s with ``--fast``);
* an admin endpoint on 127.0.0.1: ``GET /faults``, ``POST|DELETE /faults/<name>``,
  ``POST /restart-daemon``, ``POST /restart-bot``, ``GET /state``.

It writes ``.env`` (loopback URLs, test credentials, the simulated processes' intervals) and a
``trading-readiness.yaml`` whose healers run ``trading-readiness --bot-root DIR sandbox
restart-daemon`` / ``restart-bot``. ``.sandbox/state.json`` tells the CLI client commands where
the admin endpoint is. The market is simulated open by default (``--market open``: the clock is
open and every calendar day's session spans the whole day) so that session-judged points are
judged at any hour; ``--market real`` follows the NYSE calendar. The simulated broker fills
market orders at once, as a paper account does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import yaml

from . import admin, layout
from . import faults as faults_mod
from .alpaca import FakeAlpaca
from .base import LAUNCHER, REPO, SandboxError
from .botroot import BotRoot, write_json
from .nyse import ET
from .settings import FAST_UW_DAILY_LIMIT, python, sandbox_config
from .uw import FakeUW

EXIT_UNKNOWN = 3
TICKERS = ("NVDA", "TSLA", "AAPL", "MSFT", "AMZN", "META", "GOOGL", "AMD")
_SCRUB = ("ALPACA", "APCA", "UW_", "TRADING_", "MAX_", "MIN_EXEC", "ENTRY_THRESHOLD", "COOLDOWN", "SANDBOX_")


class Sandbox:
    """A simulated bot root with its servers and processes. ``start()``/``stop()``; faults by name."""

    def __init__(self, dir: str | Path, fast: bool = True, alpaca_port: int = 0, uw_port: int = 0,
                 admin_port: int = 0, market: str = "open", tickers: Sequence[str] = TICKERS) -> None:
        if market not in ("open", "closed", "real"):
            raise SandboxError(f"market must be open, closed or real, got {market!r}")
        self.root: Path = Path(dir).resolve()
        self.fast = fast
        self.market = market
        self.tickers = list(tickers)
        self.alpaca: FakeAlpaca = FakeAlpaca(port=alpaca_port)
        self.uw: FakeUW = FakeUW(port=uw_port)
        self.admin_port = admin_port
        self.daemon_proc: subprocess.Popen[bytes] | None = None
        self.bot_proc: subprocess.Popen[bytes] | None = None
        self.active: set[str] = set()
        self.max_positions = 16
        self.healthy_positions: list[dict[str, Any]] = []
        self.healthy_account: dict[str, Any] = {}
        #: a second daemon started by the daemon-duplicate fault
        self.duplicate_proc: subprocess.Popen[bytes] | None = None
        #: what a fault saved to restore on clear (e.g. the positions before full-positions)
        self.stash: dict[str, Any] = {}
        self._supervisor_stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.RLock()
        self._admin: ThreadingHTTPServer | None = None
        self._started = False

    # --- paths ---------------------------------------------------------------------------------
    @property
    def control(self) -> Path:
        return self.root / ".sandbox"

    @property
    def flags(self) -> Path:
        return self.control / "flags"

    @property
    def state_file(self) -> Path:
        return self.control / "state.json"

    @property
    def admin_url(self) -> str:
        assert self._admin is not None
        return f"http://127.0.0.1:{self._admin.server_address[1]}"

    @property
    def config_file(self) -> Path:
        return self.root / "trading-readiness.yaml"

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, wait: float = 30.0) -> Sandbox:
        """Write the bot root, start servers and processes, and wait for the first daemon cycle."""
        running = read_state(self.root)
        if running and pid_alive(running.get("pid")) and running.get("pid") != os.getpid():
            raise SandboxError(f"a sandbox (pid {running['pid']}) is already running in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.alpaca.start()
            self.uw.start()
        except OSError as exc:
            self.alpaca.stop()
            raise SandboxError(f"cannot listen on 127.0.0.1: {exc.strerror or exc}") from None
        try:
            self._prepare()
            self._serve_admin()
            self._write_state()
            self.daemon_proc = self._spawn("uw_flow_daemon.py", "daemon")
            self.bot_proc = self._spawn("main.py", "bot", unbuffered=True)
            self._write_state()
            self._start_supervisor()
            self._started = True
            self._wait_ready(wait)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        if self.market != "real":
            now = datetime.now(UTC)
            is_open = self.market == "open"
            # a clock that stays open (or closed) for a week: session-judged points are judged now
            self.alpaca.clock = {"is_open": is_open,
                                 "next_open": (now + timedelta(days=1 if is_open else 7)).isoformat(),
                                 "next_close": (now + timedelta(days=7 if is_open else 8)).isoformat()}
            if is_open:
                # the calendar agrees with the clock: every day's session spans the whole day, so
                # "since today's open" windows (FP-1.7, FP-3.x) hold this session's cycles
                today = now.astimezone(ET).date()
                self.alpaca.calendar = [
                    {"date": (today + timedelta(days=d)).isoformat(), "open": "00:00", "close": "23:59",
                     "session_open": "0000", "session_close": "2359",
                     "settlement_date": (today + timedelta(days=d + 1)).isoformat()} for d in range(-3, 11)]
        # a paper account fills market orders at once; unfilled ones would read as stuck (FP-4.7)
        self.alpaca.fill_market_orders = True
        self.uw.tickers = list(self.tickers)
        if self.fast:
            # fast mode runs every check each second instead of every 15 s: the broker's 200
            # requests/minute budget scales with it, or the sandbox would rate-limit itself
            self.alpaca.rate_limit = 200 * 15
            # the daemon cycles every second instead of every 300 s: UW's daily quota (and the
            # bot's UW_DAILY_LIMIT) scale with it, or a fast sandbox would spend it in an hour
            self.uw.daily_limit = FAST_UW_DAILY_LIMIT
        self.healthy_positions = list(self.alpaca.positions)
        self.healthy_account = dict(self.alpaca.account)
        for stale in (self.flags.glob("*") if self.flags.is_dir() else []):
            stale.unlink()
        self.flags.mkdir(parents=True, exist_ok=True)
        bot = BotRoot(self.root).healthy(self.alpaca.url, self.uw.url, key=self.alpaca.key,
                                        secret=self.alpaca.secret, uw_token=self.uw.token)
        bot.set_env(UW_BASE_URL=self.uw.url, ALPACA_BASE_URL=self.alpaca.url,
                    SANDBOX_DAEMON_INTERVAL="1" if self.fast else "300",
                    SANDBOX_BOT_INTERVAL="1" if self.fast else "60",
                    SANDBOX_DAEMON_TIMEOUT="2" if self.fast else "10",
                    SANDBOX_BOT_TIMEOUT="2" if self.fast else "5",
                    # the UW client's retry delays (1 s, 2.5 s), its 120 calls/min cap and the
                    # 600 s tide poll, scaled to a daemon that cycles every second
                    SANDBOX_DAEMON_RETRY_DELAYS="0.02,0.05" if self.fast else None,
                    UW_RATE_LIMIT_PER_MIN="36000" if self.fast else None,
                    UW_DAILY_LIMIT=str(FAST_UW_DAILY_LIMIT) if self.fast else "50000",
                    SANDBOX_DAEMON_TIDE_INTERVAL="5" if self.fast else None,
                    SANDBOX_TICKERS=",".join(self.tickers))
        self.max_positions = 16
        for script, module in (("uw_flow_daemon.py", "sandbox.daemon"), ("main.py", "sandbox.bot")):
            (self.root / script).write_text(LAUNCHER.format(module=module, repo=str(REPO)))
        self.config_file.write_text(
            "# Written by `trading-readiness sandbox`: healers repair the simulated bot through the\n"
            "# sandbox's restart-daemon/restart-bot commands" + (", with short intervals (--fast).\n"
                                                                 if self.fast else ".\n")
            + yaml.safe_dump(sandbox_config(self.root, self.fast, self.alpaca.url, self.uw.url), sort_keys=False))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def _spawn(self, script: str, name: str, unbuffered: bool = False,
               extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        argv = [python(), "-u", script] if unbuffered else [python(), script]
        out = open(self.control / f"{name}.out", "ab")  # noqa: SIM115 - the child owns it after Popen
        # the children run in their own sessions (so a fault can signal one group); if the sandbox
        # itself is SIGKILLed they notice the parent is gone and exit instead of running on
        env = {**self._env(), "SANDBOX_PARENT_PID": str(os.getpid()), **(extra_env or {})}
        try:
            return subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        started = time.time()
        while time.monotonic() < deadline:
            if self.daemon_proc is not None and self.daemon_proc.poll() is not None:
                raise SandboxError(f"the simulated daemon exited ({self.daemon_proc.returncode}); see "
                                   f"{self.control / 'daemon.out'}")
            if self.bot_proc is not None and self.bot_proc.poll() is not None:
                raise SandboxError(f"the simulated bot exited ({self.bot_proc.returncode}); see "
                                   f"{self.control / 'bot.out'}")
            if self._daemon_holds_lock() and _cache_updated_since(self.root, started) and \
                    _heartbeat_since(self.root, started):
                return
            time.sleep(0.1)
        raise SandboxError(f"the simulated bot did not come up within {timeout:.0f} s; see {self.control}")

    def stop(self) -> None:
        """Stop every process group and server this sandbox started; safe to call twice."""
        self._supervisor_stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        with self._lock:
            for proc in (self.duplicate_proc, self.daemon_proc, self.bot_proc):
                _stop_group(proc)
            self.duplicate_proc = None
            if self._admin is not None:
                self._admin.shutdown()
                self._admin.server_close()
                self._admin = None
            self.alpaca.set_mode("ok")  # release requests parked in "hang" so the server can stop
            self.uw.set_mode("ok")
            self.alpaca.stop()
            self.uw.stop()
            state = read_state(self.root)
            if state and state.get("pid") == os.getpid():
                self.state_file.unlink(missing_ok=True)
            self._started = False

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- processes -----------------------------------------------------------------------------
    def _daemon_holds_lock(self) -> bool:
        proc = self.daemon_proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            return f"pid={proc.pid} " in (self.root / layout.DAEMON_LOCK).read_text()
        except OSError:
            return False

    def daemon_healthy(self) -> bool:
        """Alive, not stopped, holding the lock: a restart would change nothing."""
        if not self._daemon_holds_lock():
            return False
        assert self.daemon_proc is not None
        try:
            return psutil.Process(self.daemon_proc.pid).status() not in (psutil.STATUS_STOPPED,
                                                                          psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def restart_daemon(self, wait: float = 15.0) -> str:
        """Make sure one healthy daemon runs. Idempotent: a healthy daemon is left alone, so a
        webhook delivered twice (Alertmanager delivers at least once) restarts it once."""
        with self._lock:
            if self.daemon_healthy():
                assert self.daemon_proc is not None
                return f"uw daemon already running (pid {self.daemon_proc.pid})"
            _stop_group(self.daemon_proc)
            # a restart repairs a killed or hung daemon: those faults are no longer in effect
            self.active -= {"daemon-kill", "daemon-hang"}
            self.daemon_proc = self._spawn("uw_flow_daemon.py", "daemon")
            self._write_state()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self._daemon_holds_lock():
                    return f"uw daemon restarted (pid {self.daemon_proc.pid})"
                if self.daemon_proc.poll() is not None:
                    break
                time.sleep(0.05)
            raise SandboxError(f"the restarted uw daemon did not take its lock; see {self.control / 'daemon.out'}")

    def restart_bot(self) -> str:
        """Make sure the bot runs (idempotent like restart_daemon)."""
        with self._lock:
            proc = self.bot_proc
            if proc is not None and proc.poll() is None:
                try:
                    if psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
                        return f"bot already running (pid {proc.pid})"
                except psutil.Error:
                    pass
            _stop_group(proc)
            self.active -= {"bot-kill", "bot-hang"}  # a restart repairs a killed or stopped bot
            self.bot_proc = self._spawn("main.py", "bot", unbuffered=True)
            self._write_state()
            return f"bot restarted (pid {self.bot_proc.pid})"

    def spawn_duplicate_daemon(self) -> None:
        """A second ``uw_flow_daemon.py`` that waits for the lock instead of exiting."""
        with self._lock:
            if self.duplicate_proc is not None and self.duplicate_proc.poll() is None:
                return
            self.duplicate_proc = self._spawn("uw_flow_daemon.py", "daemon-duplicate",
                                              extra_env={"SANDBOX_DAEMON_WAIT_FOR_LOCK": "1"})

    def stop_duplicate_daemon(self) -> None:
        with self._lock:
            _stop_group(self.duplicate_proc)
            self.duplicate_proc = None

    # --- the supervisor ------------------------------------------------------------------------
    def _start_supervisor(self) -> None:
        """A thread in the role of deploy_supervisor.py: rewrites state/health.json every 300 s
        (1 s with --fast) with the state of the bot and the daemon."""
        self._supervisor_stop.clear()
        self.write_health()
        every = 1.0 if self.fast else 300.0

        def run() -> None:
            while not self._supervisor_stop.wait(every):
                with contextlib.suppress(OSError):
                    self.write_health()

        self._supervisor = threading.Thread(target=run, name="sandbox-supervisor", daemon=True)
        self._supervisor.start()

    def write_health(self, timestamp: float | None = None) -> None:
        """One supervisor report; skipped while the supervisor-stop-writing flag is set (a hung
        supervisor), ``FAILED`` for a service of its own while supervisor-failed is set."""
        with self._lock:  # a fault's own report is never overwritten by one already under way
            if timestamp is None and (self.flags / "supervisor-stop-writing").exists():
                return
            self._write_health(time.time() if timestamp is None else timestamp)

    def _write_health(self, ts: float) -> None:
        def state(proc: subprocess.Popen[bytes] | None) -> str:
            return "OK" if proc is not None and proc.poll() is None else "RESTARTING"

        services = {"trading-bot": state(self.bot_proc), "uw-daemon": state(self.daemon_proc),
                    "heartbeat-keeper": "OK"}
        details: dict[str, Any] = {}
        if (self.flags / "supervisor-failed").exists():
            services["heartbeat-keeper"] = "FAILED"
            details["heartbeat-keeper"] = "gave up after 5 failures in 10 min"
        overall = ("FAILED" if "FAILED" in services.values()
                   else "OK" if set(services.values()) == {"OK"} else "DEGRADED")
        write_json(self.root / layout.SUPERVISOR_HEALTH, {
            "overall_status": overall, "services": services,
            "timestamp": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"), "details": details})

    # --- faults --------------------------------------------------------------------------------
    def fault(self, name: str) -> faults_mod.Fault:
        f = faults_mod.get(name)
        with self._lock:
            f.apply(self)
            self.active.add(name)
            self._write_state()
        return f

    def clear(self, name: str) -> faults_mod.Fault:
        f = faults_mod.get(name)
        with self._lock:
            f.clear(self)
            self.active.discard(name)
            self._write_state()
        return f

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "root": str(self.root), "fast": self.fast, "market": self.market,
            "admin_url": self.admin_url if self._admin else None, "alpaca_url": self.alpaca.url,
            "uw_url": self.uw.url, "config": str(self.config_file),
            "daemon_pid": self.daemon_proc.pid if self.daemon_proc else None,
            "bot_pid": self.bot_proc.pid if self.bot_proc else None,
            "active_faults": sorted(self.active),
        }

    def _write_state(self) -> None:
        self.control.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        os.replace(tmp, self.state_file)

    # --- admin endpoint ------------------------------------------------------------------------
    def _serve_admin(self) -> None:
        self._admin = admin.serve(self, self.admin_port)

# --- helpers -----------------------------------------------------------------------------------
def pid_alive(pid: Any) -> bool:
    return isinstance(pid, int) and psutil.pid_exists(pid)


def _stop_group(proc: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    """SIGCONT + SIGTERM the process group, then SIGKILL what is left after ``grace``."""
    if proc is None:
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # also whatever the child started in its group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _cache_updated_since(root: Path, since: float) -> bool:
    try:
        meta = json.loads((root / layout.UW_CACHE).read_text()).get("_metadata", {})
        return float(meta.get("last_update", 0)) >= since
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _heartbeat_since(root: Path, since: float) -> bool:
    try:
        return float(json.loads((root / layout.HEARTBEAT).read_text())["last_heartbeat_ts"]) >= since
    except (OSError, ValueError, TypeError, KeyError):
        return False


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / ".sandbox/state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
