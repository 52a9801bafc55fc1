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

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import psutil
import requests
import yaml

from . import faults as faults_mod
from .alpaca import ET, FakeAlpaca
from .botroot import BotRoot, write_json
from .uw import FakeUW

REPO = Path(__file__).resolve().parents[1]
EXIT_UNKNOWN = 3
TICKERS = ("NVDA", "TSLA", "AAPL", "MSFT", "AMZN", "META", "GOOGL", "AMD")
#: Environment prefixes never passed to the simulated processes: the sandbox's .env is their truth,
#: and a real key in the operator's shell must never be sent to a loopback fake (or anywhere).
#: UW's daily quota in fast mode: production's 50 000 scaled by 100 (a daemon cycling every second
#: spends it in days, not in an hour; FP-5.2 accepts up to 10 000 000)
FAST_UW_DAILY_LIMIT = 50000 * 100
_SCRUB = ("ALPACA", "APCA", "UW_", "TRADING_", "MAX_", "MIN_EXEC", "ENTRY_THRESHOLD", "COOLDOWN", "SANDBOX_")
LAUNCHER = '''"""stock-bot stand-in written by `trading-readiness sandbox`: runs {module}."""
import sys

sys.path.insert(0, {repo!r})
from {module} import main  # noqa: E402

raise SystemExit(main())
'''


class SandboxError(Exception):
    """Something the operator must fix (port in use, sandbox already running, ...): one line."""


def _python() -> str:
    return sys.executable


def healer_argv(root: Path, action: str) -> list[str]:
    """The argv a healer runs to repair the sandbox: no shell, absolute interpreter path."""
    return [_python(), "-m", "exporter", "--bot-root", str(root), "sandbox", action]


def sandbox_config(root: Path, fast: bool, alpaca_url: str | None = None,
                   uw_url: str | None = None) -> dict[str, Any]:
    """``trading-readiness.yaml`` for a sandbox: its healers, the loopback servers its probes use,
    and short intervals in fast mode.

    The probes are pinned to the loopback servers (``alpaca.base_url``, ``uw.base_url``) so that
    a fault that writes a remote-looking URL into ``.env`` (``paper-live-url``) is judged from the
    text by FP-3.9 while nothing in the sandbox connects to that host."""
    healer = {"timeout_seconds": 30, "cooldown_seconds": 5 if fast else 300, "max_attempts": 3,
              "window_seconds": 300 if fast else 3600}
    cfg: dict[str, Any] = {
        "healers": {
            "FP-1.1": {"run": healer_argv(root, "restart-daemon"), **healer},
            "FP-1.3": {"run": healer_argv(root, "restart-daemon"), **healer},
            "FP-6.1": {"run": healer_argv(root, "restart-bot"), **healer},
        },
        "healer": {"audit_file": "logs/trading_readiness_heals.jsonl"},
    }
    if alpaca_url:
        cfg["alpaca"] = {"base_url": alpaca_url}
    if uw_url:
        cfg["uw"] = {"base_url": uw_url}
    if fast:
        cfg["exporter"] = {"default_interval_seconds": 1}
        # broker answers are shared between checks for cache_seconds: scaled down with the checks
        cfg.setdefault("alpaca", {}).update(cache_seconds=0.5, timeout_seconds=2)
        cfg["healer"].update(verify_timeout_seconds=30, verify_interval_seconds=1)
        # run-log windows scaled to a bot that cycles every second instead of every 60 s
        gate = {"params": {"cycles": 3, "min_candidates": 6}}
        cfg["checks"] = {
            # freshness limits scaled to a daemon that cycles every second instead of every 300 s
            "FP-1.3": {"params": {"open_warn_seconds": 5, "open_error_seconds": 8, "closed_warn_seconds": 30}},
            "FP-1.10": {"params": {"open_warn_seconds": 5, "closed_warn_seconds": 30}},
            "FP-1.5": {"interval_seconds": 2},
            "FP-1.7": {"params": {"cycles": 3}},
            "FP-1.8": {"params": {"cycles": 3, "same_cycle_seconds": 0.5}},
            "FP-1.11": {"interval_seconds": 1, "params": {"grace_seconds": 3}},
            "FP-3.3": gate, "FP-3.4": gate, "FP-3.5": gate, "FP-3.6": gate, "FP-3.7": gate,
            # points whose catalog interval is 60 s, checked as often as the rest
            "FP-4.4": {"interval_seconds": 1},
            "FP-4.9": {"interval_seconds": 1},
            "FP-6.6": {"interval_seconds": 1},
            "FP-6.7": {"interval_seconds": 1},
            # liveness scaled to a bot that cycles every second instead of every 60 s
            "FP-6.3": {"params": {"warn_seconds": 5, "error_seconds": 8}},
        }
    return cfg


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
        if running and _alive(running.get("pid")) and running.get("pid") != os.getpid():
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
        argv = [_python(), "-u", script] if unbuffered else [_python(), script]
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
            return f"pid={proc.pid} " in (self.root / "state/uw_flow_daemon.lock").read_text()
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
        write_json(self.root / "state/health.json", {
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
        sandbox = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body, indent=2).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                try:
                    if method == "GET" and path == "/faults":
                        self._send(200, {"active": sorted(sandbox.active),
                                         "faults": [f.to_json() for f in faults_mod.FAULTS.values()]})
                    elif method == "GET" and path in ("", "/state"):
                        self._send(200, sandbox.state())
                    elif path.startswith("/faults/") and method in ("POST", "DELETE"):
                        name = path.removeprefix("/faults/")
                        if name not in faults_mod.FAULTS:
                            self._send(404, {"error": f"unknown fault {name!r}"})
                            return
                        f = sandbox.fault(name) if method == "POST" else sandbox.clear(name)
                        self._send(200, {"fault": f.to_json(), "active": sorted(sandbox.active)})
                    elif method == "POST" and path == "/restart-daemon":
                        self._send(200, {"message": sandbox.restart_daemon()})
                    elif method == "POST" and path == "/restart-bot":
                        self._send(200, {"message": sandbox.restart_bot()})
                    else:
                        self._send(404, {"error": f"no route {method} {path or '/'}"})
                except SandboxError as exc:
                    self._send(500, {"error": str(exc)})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        try:
            self._admin = ThreadingHTTPServer(("127.0.0.1", self.admin_port), Handler)
        except OSError as exc:
            raise SandboxError(f"cannot listen on 127.0.0.1:{self.admin_port}: {exc.strerror or exc}") from None
        self._admin.daemon_threads = True
        threading.Thread(target=self._admin.serve_forever, name="sandbox-admin", daemon=True).start()


# --- helpers -----------------------------------------------------------------------------------
def _alive(pid: Any) -> bool:
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
        meta = json.loads((root / "data/uw_flow_cache.json").read_text()).get("_metadata", {})
        return float(meta.get("last_update", 0)) >= since
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _heartbeat_since(root: Path, since: float) -> bool:
    try:
        return float(json.loads((root / "state/bot_heartbeat.json").read_text())["last_heartbeat_ts"]) >= since
    except (OSError, ValueError, TypeError, KeyError):
        return False


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / ".sandbox/state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- CLI ---------------------------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


CLIENT_COMMANDS = ("fault", "clear", "faults", "restart-daemon", "restart-bot", "status")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trading-readiness sandbox", description="a simulated stock-bot on loopback",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="while it runs (from another shell, same --dir):\n"
                       "  sandbox faults                  list the faults (* = active)\n"
                       "  sandbox fault NAME | clear NAME inject or clear one\n"
                       "  sandbox restart-daemon          the healer action for FP-1.1/FP-1.3 (idempotent)\n"
                       "  sandbox restart-bot             the healer action for FP-6.1 (idempotent)\n"
                       "  sandbox status                  ports, pids and active faults as JSON")
    p.add_argument("--dir", help="the sandbox bot root (default: --bot-root, else ./sandbox-bot)")
    p.add_argument("--alpaca-port", type=int, default=0, help="FakeAlpaca port (default: a free one)")
    p.add_argument("--uw-port", type=int, default=0, help="FakeUW port (default: a free one)")
    p.add_argument("--admin-port", type=int, default=0, help="admin endpoint port (default: a free one)")
    p.add_argument("--fast", action="store_true", help="1 s daemon and bot cycles, 1 s checks, short limits")
    p.add_argument("--market", choices=("open", "closed", "real"), default="open",
                   help="simulated market session (default: open, so session checks are judged now)")
    return p


def _client_parser(command: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"trading-readiness sandbox {command}")
    if command in ("fault", "clear"):
        p.add_argument("name", help="a fault name (see `sandbox faults`)")
    p.add_argument("--dir", help="the sandbox bot root (default: --bot-root, else ./sandbox-bot)")
    return p


def _root(opt: str | None, args: argparse.Namespace) -> Path:
    return Path(opt or getattr(args, "bot_root", None) or "sandbox-bot").resolve()


def _client(command: str, rest: list[str], args: argparse.Namespace) -> int:
    opts = _client_parser(command).parse_args(rest)
    root = _root(opts.dir, args)
    if command == "faults" and read_state(root) is None:
        for f in faults_mod.FAULTS.values():  # listing needs no running sandbox
            print(f"{f.name:<20} {f.summary}")
        return 0
    state = read_state(root)
    if not state or not state.get("admin_url") or not _alive(state.get("pid")):
        raise _UsageError(f"no sandbox is running in {root} (start one with `trading-readiness sandbox "
                          f"--dir {root}`)")
    url = state["admin_url"]
    method, path = {
        "fault": ("POST", f"/faults/{getattr(opts, 'name', '')}"),
        "clear": ("DELETE", f"/faults/{getattr(opts, 'name', '')}"),
        "faults": ("GET", "/faults"), "status": ("GET", "/state"),
        "restart-daemon": ("POST", "/restart-daemon"), "restart-bot": ("POST", "/restart-bot"),
    }[command]
    try:
        r = requests.request(method, url + path, timeout=30)
        body = r.json()
    except (requests.RequestException, ValueError) as exc:
        raise _UsageError(f"the sandbox admin endpoint {url} did not answer: {type(exc).__name__}") from None
    if r.status_code != 200:
        print(f"error: {body.get('error', r.status_code)}", file=sys.stderr)
        return 1 if command.startswith("restart") else EXIT_UNKNOWN
    if command == "faults":
        active = set(body["active"])
        for f in body["faults"]:
            print(f"{'*' if f['name'] in active else ' '} {f['name']:<20} {f['summary']}")
    elif command == "status":
        print(json.dumps(body, indent=2))
    elif command in ("fault", "clear"):
        f = body["fault"]
        verb = "injected" if command == "fault" else "cleared"
        expects = ", ".join(f"{fp} {st}" for fp, st in f["expects"].items())
        print(f"{verb} {f['name']}: {f['summary']}" + (f" (expect {expects})" if command == "fault" else ""))
        if command == "clear" and f.get("sticky"):
            print(f"note: {f['sticky']}")
    else:
        print(body["message"])
    return 0


def _run(rest: list[str], args: argparse.Namespace) -> int:
    opts = _parser().parse_args(rest)
    for name in ("alpaca_port", "uw_port", "admin_port"):
        if not 0 <= getattr(opts, name) < 65536:
            raise _UsageError(f"--{name.replace('_', '-')} must be a port number (0-65535)")
    sb = Sandbox(_root(opts.dir, args), fast=opts.fast, alpaca_port=opts.alpaca_port, uw_port=opts.uw_port,
                 admin_port=opts.admin_port, market=opts.market)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sb.start()
    try:
        s = sb.state()
        print(f"sandbox bot root: {sb.root}\n"
              f"  FakeAlpaca      {s['alpaca_url']}\n"
              f"  FakeUW          {s['uw_url']}\n"
              f"  admin           {s['admin_url']}  (GET /faults, POST|DELETE /faults/<name>)\n"
              f"  uw daemon pid   {s['daemon_pid']}   bot pid {s['bot_pid']}\n"
              f"  config          {sb.config_file}\n"
              f"watch it:  trading-readiness --bot-root {sb.root} check\n"
              f"break it:  trading-readiness sandbox fault daemon-kill --dir {sb.root}\n"
              f"Ctrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sb.stop()
    print("sandbox stopped", flush=True)
    return 0


def cli_sandbox(args: argparse.Namespace) -> int:
    """Entry point for ``trading-readiness sandbox``; exit 3 with one line on bad usage."""
    rest = list(getattr(args, "rest", None) or [])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        if rest and rest[0] in CLIENT_COMMANDS:
            return _client(rest[0], rest[1:], args)
        return _run(rest, args)
    except (_UsageError, SandboxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
