"""Every failure the sandbox can inject, with the failure point it must trip and how to undo it.

Why: a readiness tool is proven by breaking the thing it watches. Each fault here reproduces one
way BOT.md says stock-bot fails -- on the real processes, files and loopback servers of a running
:class:`~sandbox.sandbox.Sandbox` -- and names the failure point and status that must follow
(``expects``), so the end-to-end tests and the demo assert against the same table that the CLI and
the admin endpoint list. ``healer`` names the sandbox healer that repairs it, when one is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from . import layout
from .alpaca import FakeAlpaca
from .base import LAUNCHER, REPO, SandboxError
from .botroot import BotRoot, write_json
from .factories import make_position
from .uw import FakeUW


class Sandbox(Protocol):
    """What a fault acts on: the running sandbox (:class:`sandbox.sandbox.Sandbox`), seen through
    the parts faults use, so this module does not import the orchestration that imports it."""

    root: Path
    fast: bool
    alpaca: FakeAlpaca
    uw: FakeUW
    daemon_proc: subprocess.Popen[bytes] | None
    bot_proc: subprocess.Popen[bytes] | None
    max_positions: int
    healthy_positions: list[dict[str, Any]]
    healthy_account: dict[str, Any]
    stash: dict[str, Any]

    @property
    def flags(self) -> Path: ...

    def restart_daemon(self, wait: float = 15.0) -> str: ...

    def restart_bot(self) -> str: ...

    def spawn_duplicate_daemon(self) -> None: ...

    def stop_duplicate_daemon(self) -> None: ...

    def write_health(self, timestamp: float | None = None) -> None: ...


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    #: failure point -> the status it must reach while the fault is active
    expects: dict[str, str]
    apply: Callable[[Sandbox], object]
    clear: Callable[[Sandbox], object]
    #: the sandbox healer that repairs it by itself, or None (a human decision or outside our reach)
    healer: str | None = None
    #: what stays after clear() and why (e.g. a 429 counts until the 20:00 ET quota reset)
    sticky: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "expects": self.expects, "healer": self.healer,
                "sticky": self.sticky}


def _flag(sb: Sandbox, name: str, on: bool) -> None:
    path = sb.flags / name
    if on:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"set {time.time()}\n")
    else:
        path.unlink(missing_ok=True)


def _signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal a sandbox process's whole group, if it still runs."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _signal_daemon(sb: Sandbox, sig: int) -> None:
    _signal(sb.daemon_proc, sig)


def _kill_daemon(sb: Sandbox) -> None:
    _signal_daemon(sb, signal.SIGKILL)
    if sb.daemon_proc is not None:
        sb.daemon_proc.wait(timeout=10)


def _kill_bot(sb: Sandbox) -> None:
    proc = sb.bot_proc
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _stale_cache(sb: Sandbox) -> None:
    _flag(sb, "daemon-stop-writing", True)
    path = sb.root / layout.UW_CACHE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    meta = data.get("_metadata") if isinstance(data.get("_metadata"), dict) else {}
    meta["last_update"] = time.time() - 3 * 3600  # the bot keeps re-stamping the mtime: the trap
    data["_metadata"] = meta
    write_json(path, data)


def _torn_cache(sb: Sandbox) -> None:
    _flag(sb, "daemon-stop-writing", True)
    _flag(sb, "bot-stop-writing-cache", True)
    time.sleep(0.3)  # let a write already in flight land before tearing the file
    BotRoot(sb.root).torn(layout.UW_CACHE)


def _clear_torn_cache(sb: Sandbox) -> None:
    _flag(sb, "daemon-stop-writing", False)
    _flag(sb, "bot-stop-writing-cache", False)


def _full_positions(sb: Sandbox) -> None:
    symbols = ["AAPL", "NVDA", "TSLA", "MSFT", "AMZN", "META", "GOOGL", "AMD", "SPY", "QQQ", "AVGO", "NFLX",
               "IWM", "DIA", "XLF", "XLE", "XLK", "SMH", "TLT", "GLD", "JPM", "BAC", "XOM", "CVX"]
    cap = sb.max_positions
    sb.stash.setdefault("positions", list(sb.alpaca.positions))  # what the bot holds now, fills included
    sb.alpaca.positions = [make_position(symbols[i % len(symbols)], 1 + i, 100.0) for i in range(cap)]


def _restore_positions(sb: Sandbox) -> None:
    sb.alpaca.positions = list(sb.stash.pop("positions", sb.healthy_positions))


def _signal_bot(sb: Sandbox, sig: int) -> None:
    _signal(sb.bot_proc, sig)


def _supervisor(name: str, on: bool) -> Callable[[Sandbox], None]:
    """Set or clear a supervisor flag, and let the supervisor report at once."""
    def apply(sb: Sandbox) -> None:
        _flag(sb, name, on)
        sb.write_health()

    return apply


def _stale_health(sb: Sandbox) -> None:
    _flag(sb, "supervisor-stop-writing", True)
    sb.write_health(timestamp=time.time() - 20 * 60)  # its last report, before it hung


#: what the broker answers to each submission while ``orders-rejected`` is active (the recorded
#: root's broker refused every order with this status and body)
REFUSAL = (403, "orders refused by the broker (sandbox)")
#: the bot's two logs of refused submissions, and the field that dates each line
_FAILURE_LOGS = ((layout.ORDERS_LOG, "ts"), (layout.EXECUTION_FAILURES, "timestamp"))


def _bot_iterations(sb: Sandbox) -> int:
    try:
        beat = json.loads((sb.root / layout.HEARTBEAT).read_text(encoding="utf-8"))
        return int(beat.get("iter_count", 0)) if isinstance(beat, dict) else 0
    except (OSError, ValueError, TypeError):
        return 0


def _wait_for_next_cycle(sb: Sandbox, timeout: float) -> None:
    """Until the bot has started two cycles from now: the one in flight is over, a new one began."""
    first = _bot_iterations(sb)
    deadline = time.monotonic() + timeout
    while _bot_iterations(sb) < first + 2 and time.monotonic() < deadline:
        time.sleep(0.1)


def _orders_rejected(sb: Sandbox) -> None:
    """The broker refuses every submission (403 ``{"code":40310000,"message":...}``); the bot keeps
    trying to scale out of its positions, as main.py did, and logs each refusal in
    ``logs/orders.jsonl`` (``scale_out_failed``, ``market_fail`` for entries) and
    ``state/execution_failures.jsonl``."""
    sb.alpaca.refuse_orders = REFUSAL
    _flag(sb, "bot-scale-out", True)


def _orders_accepted_again(sb: Sandbox) -> None:
    """The broker accepts orders again; the bot's logged refusals are moved 25 hours back, past
    FP-4.4's window, as a day's wait would (the logs are replaced, as a rotation would)."""
    sb.alpaca.refuse_orders = None
    _flag(sb, "bot-scale-out", False)
    # a cycle in flight may still log refusals it met before the broker turned: age the logs only
    # once a cycle has started after the change (the bot stamps its heartbeat as a cycle starts)
    _wait_for_next_cycle(sb, timeout=2 * (1.0 if sb.fast else 60.0) + 5.0)
    then = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    for rel, key in _FAILURE_LOGS:
        path = sb.root / rel
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                out.append(line)
                continue
            failed = isinstance(rec, dict) and (str(rec.get("action", "")).endswith(("_failed", "_fail"))
                                                or "failure_type" in rec)
            out.append(json.dumps({**rec, key: then}) if failed else line)
        tmp = path.with_name(f".{path.name}.aged")
        tmp.write_text("".join(f"{x}\n" for x in out), encoding="utf-8")
        os.replace(tmp, path)


def _env_edit(name: str, value: str | None) -> Callable[[Sandbox], None]:
    """Set (or with None remove) ``name`` in the bot's ``.env``, keeping the value it had."""
    def apply(sb: Sandbox) -> None:
        sb.stash.setdefault(f"env:{name}", _env_value(sb, name))
        BotRoot(sb.root).set_env(**{name: value})

    return apply


def _env_restore(name: str) -> Callable[[Sandbox], None]:
    def clear(sb: Sandbox) -> None:
        key = f"env:{name}"
        if key in sb.stash:
            BotRoot(sb.root).set_env(**{name: sb.stash.pop(key)})

    return clear


def _env_value(sb: Sandbox, name: str) -> str | None:
    from exporter.bot.botenv import parse_dotenv  # the exporter's own reading of .env

    try:
        return parse_dotenv((sb.root / ".env").read_text(encoding="utf-8")).get(name)
    except OSError:
        return None


#: a live broker URL in .env: FP-3.9 judges its text; the sandbox's probes are pinned to the
#: loopback broker (trading-readiness.yaml ``alpaca.base_url``) and the simulated bot refuses to
#: start with it, so nothing connects to it
LIVE_URL = "https://api.alpaca.markets"


def _remove_main(sb: Sandbox) -> None:
    (sb.root / "main.py").unlink(missing_ok=True)


def _restore_main(sb: Sandbox) -> None:

    (sb.root / "main.py").write_text(LAUNCHER.format(module="sandbox.bot", repo=str(REPO)))


def _healthy_thresholds(sb: Sandbox) -> None:
    BotRoot(sb.root).thresholds({"default": 2.7, "symbols": {"NVDA": 2.9}})


def _uw_unreachable(sb: Sandbox) -> None:
    sb.uw.stop()  # nothing listens on its port: connections are refused


def _uw_reachable(sb: Sandbox) -> None:
    try:
        sb.uw.start()  # the same port again
    except (OSError, RuntimeError) as exc:

        if "already started" not in str(exc):
            raise SandboxError(f"cannot listen on {sb.uw.host}:{sb.uw.port} again: {exc}") from None


def _gate(reason: str) -> Callable[[Sandbox], None]:
    def apply(sb: Sandbox) -> None:
        sb.flags.mkdir(parents=True, exist_ok=True)
        (sb.flags / "bot-gate").write_text(reason + "\n")

    return apply


def _account(sb: Sandbox, **changes: Any) -> None:
    account = dict(sb.alpaca.account)
    account.update(changes)
    sb.alpaca.account = account


def _restore_account(sb: Sandbox) -> None:
    sb.alpaca.account = dict(sb.healthy_account)


def _clear_freeze(sb: Sandbox) -> None:
    write_json(sb.root / layout.GOVERNOR_FREEZES, {"performance_freeze": False, "performance_freeze_reason": ""})


def _uw(mode: str) -> Callable[[Sandbox], None]:
    return lambda sb: sb.uw.set_mode(mode)


def _alpaca(mode: str) -> Callable[[Sandbox], None]:
    return lambda sb: sb.alpaca.set_mode(mode)


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("daemon-kill", "SIGKILL the UW daemon (a crash)", {"FP-1.1": "ERROR"},
          _kill_daemon, lambda sb: sb.restart_daemon(), healer="restart-daemon"),
    Fault("daemon-hang", "SIGSTOP the UW daemon: alive, holding its lock, doing nothing (state T: FP-1.1 "
          "calls it not running at once, before the cache goes stale)", {"FP-1.1": "ERROR"},
          lambda sb: _signal_daemon(sb, signal.SIGSTOP), lambda sb: _signal_daemon(sb, signal.SIGCONT),
          healer="restart-daemon"),
    Fault("daemon-stop-writing", "the daemon keeps cycling but stops writing the cache (the bot keeps "
          "re-stamping it, so the file mtime stays fresh)", {"FP-1.3": "ERROR"},
          lambda sb: _flag(sb, "daemon-stop-writing", True), lambda sb: _flag(sb, "daemon-stop-writing", False)),
    Fault("stale-cache", "_metadata.last_update three hours old and no daemon writes, while the bot "
          "re-stamps the file", {"FP-1.3": "ERROR"},
          _stale_cache, lambda sb: _flag(sb, "daemon-stop-writing", False)),
    Fault("torn-cache", "a half-written cache file that nobody rewrites", {"FP-1.2": "ERROR"},
          _torn_cache, _clear_torn_cache),
    Fault("uw-empty", "UW answers 200 with empty data (what a daemon swallowing errors writes)",
          {"FP-1.9": "ERROR"}, _uw("empty"), _uw("ok")),
    Fault("uw-401", "UW rejects the token (401)", {"FP-1.5": "ERROR"}, _uw("401"), _uw("ok")),
    Fault("uw-429", "UW answers 429 to every request (quota exhausted): the daemon does not pause, it keeps "
          "cycling and re-stamping the cache; reports/uw_health/uw_api_errors.jsonl gets rate_limit lines and "
          "state/uw_usage_state.json counts each call once though the client retries it twice",
          {"FP-1.6": "ERROR"}, _uw("429"), _uw("ok"),
          sticky="a 429 counts until the 20:00 America/New_York quota reset, as in production"),
    Fault("uw-down", "UW answers 500 to everything", {"FP-1.9": "ERROR"}, _uw("500"), _uw("ok")),
    Fault("broker-down", "Alpaca answers 500 to everything", {"FP-4.1": "ERROR"}, _alpaca("500"), _alpaca("ok")),
    Fault("broker-hang", "Alpaca accepts connections and never answers", {"FP-4.1": "ERROR"},
          _alpaca("hang"), _alpaca("ok")),
    Fault("broker-401", "Alpaca rejects the key (401)", {"FP-4.2": "ERROR"}, _alpaca("401"), _alpaca("ok")),
    Fault("broker-429", "Alpaca rate-limits every request (429)", {"FP-4.1": "WARN"},
          _alpaca("429"), _alpaca("ok")),
    Fault("full-positions", "as many open positions as MAX_CONCURRENT_POSITIONS", {"FP-3.2": "WARN"},
          _full_positions, _restore_positions),
    Fault("low-buying-power", "buying power below the minimum", {"FP-4.3": "WARN"},
          lambda sb: _account(sb, buying_power="250.00", regt_buying_power="250.00"), _restore_account),
    Fault("account-blocked", "the broker blocks trading on the account", {"FP-4.6": "ERROR"},
          lambda sb: _account(sb, trading_blocked=True), _restore_account),
    Fault("freeze", "a governor freeze (max drawdown exceeded)", {"FP-3.1": "ERROR"},
          lambda sb: BotRoot(sb.root).freeze(), _clear_freeze),
    Fault("kill-switch", "the kill switch is on", {"FP-3.10": "ERROR"},
          lambda sb: BotRoot(sb.root).kill_switch(True), lambda sb: BotRoot(sb.root).kill_switch(False)),
    Fault("safe-mode", "the health monitor's safe-mode flag exists", {"FP-3.11": "ERROR"},
          lambda sb: BotRoot(sb.root).safe_mode(),
          lambda sb: (sb.root / layout.SAFE_MODE_FLAG).unlink(missing_ok=True)),
    Fault("torn-weights", "a half-written adaptive-weights file", {"FP-2.1": "ERROR"},
          lambda sb: BotRoot(sb.root).torn(layout.WEIGHTS), lambda sb: BotRoot(sb.root).write_weights()),
    Fault("threshold-raised", "the self-healing threshold adjustment is active", {"FP-3.8": "WARN"},
          lambda sb: BotRoot(sb.root).self_healing(0.5, activated_at=time.time()),
          lambda sb: BotRoot(sb.root).self_healing(0.0, activated_at=None, losses=0)),
    Fault("bot-kill", "SIGKILL the bot (main.py)", {"FP-6.1": "ERROR"}, _kill_bot, lambda sb: sb.restart_bot(),
          healer="restart-bot"),
    # --- the bot's loop and what it logs ---
    Fault("bot-hang", "SIGSTOP the bot: main.py runs but its loop logs no cycle and stamps no heartbeat",
          {"FP-6.3": "ERROR"}, lambda sb: _signal_bot(sb, signal.SIGSTOP), lambda sb: _signal_bot(sb, signal.SIGCONT)),
    Fault("no-clusters", "the bot's flow filter keeps no trade: every cycle completes with 0 clusters while "
          "the cache is full", {"FP-1.7": "WARN"},
          lambda sb: _flag(sb, "bot-no-clusters", True), lambda sb: _flag(sb, "bot-no-clusters", False)),
    Fault("cluster-errors", "cluster generation raises in every cycle (a cycle_error line, no complete line)",
          {"FP-1.8": "ERROR"},
          lambda sb: _flag(sb, "bot-cluster-errors", True), lambda sb: _flag(sb, "bot-cluster-errors", False)),
    Fault("expectancy-gate", "the expectancy gate refuses every candidate (expectancy_blocked:negative_ev)",
          {"FP-3.4": "WARN"}, _gate("expectancy_blocked:negative_ev"), lambda sb: _flag(sb, "bot-gate", False)),
    Fault("regime-gate", "the regime gate refuses every candidate", {"FP-3.5": "WARN"},
          _gate("regime_gate"), lambda sb: _flag(sb, "bot-gate", False)),
    Fault("theme-gate", "the theme risk limit refuses every candidate", {"FP-3.6": "WARN"},
          _gate("theme_gate"), lambda sb: _flag(sb, "bot-gate", False)),
    Fault("cooldown-gate", "per-ticker cooldowns refuse every candidate", {"FP-3.7": "WARN"},
          _gate("symbol_on_cooldown"), lambda sb: _flag(sb, "bot-gate", False)),
    # --- the daemon ---
    Fault("daemon-stall", "the daemon's loop is stuck (a request that never returns): alive, holding its "
          "lock, no cycle and no cache write", {"FP-1.10": "WARN"},
          lambda sb: _flag(sb, "daemon-stall", True), lambda sb: _flag(sb, "daemon-stall", False)),
    Fault("daemon-duplicate", "a second uw_flow_daemon.py waits for the lock instead of exiting",
          {"FP-1.11": "WARN"}, lambda sb: sb.spawn_duplicate_daemon(), lambda sb: sb.stop_duplicate_daemon()),
    Fault("daemon-no-tickers", "the daemon's watchlist is empty: it writes a cache with the global keys only",
          {"FP-1.4": "ERROR"},
          lambda sb: _flag(sb, "daemon-no-tickers", True), lambda sb: _flag(sb, "daemon-no-tickers", False)),
    # --- UW endpoints and the network ---
    Fault("uw-darkpool-down", "UW's dark-pool endpoint answers 500: the daemon writes tickers without intel",
          {"FP-2.4": "WARN"}, lambda sb: sb.uw.set_mode("500", ["/api/darkpool/"]), _uw("ok")),
    Fault("uw-tide-down", "UW's market-tide endpoint answers 500: the cache's _market_tide holds no point",
          {"FP-2.5": "WARN"}, lambda sb: sb.uw.set_mode("500", ["/api/market/market-tide"]), _uw("ok")),
    Fault("uw-unreachable", "nothing listens on UW's address any more: connections are refused",
          {"FP-6.6": "ERROR"}, _uw_unreachable, _uw_reachable),
    # --- the broker ---
    Fault("orders-rejected", "the broker refuses every submission (403 {\"code\":40310000}): the bot's "
          "scale-outs and entries fail, logged in logs/orders.jsonl and state/execution_failures.jsonl",
          {"FP-4.4": "ERROR"}, _orders_rejected, _orders_accepted_again),
    Fault("equity-floor", "account equity below the $2,000 floor", {"FP-4.10": "ERROR"},
          lambda sb: _account(sb, equity="1500.00", last_equity="1650.00", portfolio_value="1500.00"),
          _restore_account),
    Fault("clock-skew", "this host's clock is 60 s behind the broker's", {"FP-4.9": "ERROR"},
          lambda sb: setattr(sb.alpaca, "clock_skew_seconds", 60.0),
          lambda sb: setattr(sb.alpaca, "clock_skew_seconds", 0.0)),
    # --- the supervisor ---
    Fault("supervisor-failed", "the supervisor reports FAILED: it gave up on a service of its own",
          {"FP-6.7": "ERROR"}, _supervisor("supervisor-failed", True), _supervisor("supervisor-failed", False)),
    Fault("supervisor-hung", "the supervisor stops rewriting state/health.json (its last report is 20 min old)",
          {"FP-6.7": "ERROR"}, _stale_health, _supervisor("supervisor-stop-writing", False)),
    # --- state and files ---
    Fault("torn-state", "a half-written state/self_healing_threshold.json", {"FP-5.3": "ERROR"},
          lambda sb: BotRoot(sb.root).torn(layout.SELF_HEALING_THRESHOLD),
          lambda sb: BotRoot(sb.root).self_healing(0.0, activated_at=None, losses=0)),
    Fault("bad-thresholds", "the per-symbol entry thresholds hold a NaN", {"FP-2.7": "ERROR"},
          lambda sb: BotRoot(sb.root).thresholds({"default": 2.7, "symbols": {"NVDA": float("nan")}}),
          _healthy_thresholds),
    Fault("weights-stale", "the learner last saved the adaptive weights five days ago", {"FP-2.6": "WARN"},
          lambda sb: BotRoot(sb.root, now=time.time() - 5 * 86400).write_weights(),
          lambda sb: BotRoot(sb.root).write_weights()),
    # --- the bot's configuration (.env; the exporter re-reads an edited .env) ---
    Fault("env-missing-var", "UW_API_KEY is removed from .env (a bad deploy or an edit)", {"FP-5.1": "ERROR"},
          _env_edit("UW_API_KEY", None), _env_restore("UW_API_KEY")),
    Fault("env-invalid-limit", "MAX_CONCURRENT_POSITIONS=-3 in .env", {"FP-5.2": "ERROR"},
          _env_edit("MAX_CONCURRENT_POSITIONS", "-3"), _env_restore("MAX_CONCURRENT_POSITIONS")),
    Fault("paper-live-url", f"TRADING_MODE=PAPER with the live broker URL {LIVE_URL} in .env (nothing connects "
          "to it: the sandbox's probes stay on the loopback broker and its bot refuses to start with it)",
          {"FP-3.9": "ERROR"}, _env_edit("ALPACA_BASE_URL", LIVE_URL), _env_restore("ALPACA_BASE_URL")),
    Fault("main-missing", "main.py is gone from the bot root (a bad deploy); the running bot lives on until "
          "its next restart", {"FP-5.4": "ERROR"}, _remove_main, _restore_main),
]}


def get(name: str) -> Fault:
    """The fault called ``name``; KeyError names the known ones."""
    try:
        return FAULTS[name]
    except KeyError:
        raise KeyError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None
