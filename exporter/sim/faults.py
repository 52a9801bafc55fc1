"""Every failure the sandbox can inject, with the failure point it must trip and how to undo it.

Why: a readiness tool is proven by breaking the thing it watches. Each fault here reproduces one
way BOT.md says stock-bot fails -- on the real processes, files and loopback servers of a running
:class:`~exporter.sim.sandbox.Sandbox` -- and names the failure point and status that must follow
(``expects``), so the end-to-end tests and the demo assert against the same table that the CLI and
the admin endpoint list. ``healer`` names the sandbox healer that repairs it, when one is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .alpaca import make_position
from .botroot import BotRoot, write_json

if TYPE_CHECKING:
    from .sandbox import Sandbox


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


def _signal_daemon(sb: Sandbox, sig: int) -> None:
    proc = sb.daemon_proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


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
    path = sb.root / "data/uw_flow_cache.json"
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
    BotRoot(sb.root).torn("data/uw_flow_cache.json")


def _clear_torn_cache(sb: Sandbox) -> None:
    _flag(sb, "daemon-stop-writing", False)
    _flag(sb, "bot-stop-writing-cache", False)


def _full_positions(sb: Sandbox) -> None:
    symbols = ["AAPL", "NVDA", "TSLA", "MSFT", "AMZN", "META", "GOOGL", "AMD", "SPY", "QQQ", "AVGO", "NFLX",
               "IWM", "DIA", "XLF", "XLE", "XLK", "SMH", "TLT", "GLD", "JPM", "BAC", "XOM", "CVX"]
    cap = sb.max_positions
    sb.alpaca.positions = [make_position(symbols[i % len(symbols)], 1 + i, 100.0) for i in range(cap)]


def _account(sb: Sandbox, **changes: Any) -> None:
    account = dict(sb.alpaca.account)
    account.update(changes)
    sb.alpaca.account = account


def _restore_account(sb: Sandbox) -> None:
    sb.alpaca.account = dict(sb.healthy_account)


def _clear_freeze(sb: Sandbox) -> None:
    write_json(sb.root / "state/governor_freezes.json", {"performance_freeze": False, "performance_freeze_reason": ""})


def _uw(mode: str) -> Callable[[Sandbox], None]:
    return lambda sb: sb.uw.set_mode(mode)


def _alpaca(mode: str) -> Callable[[Sandbox], None]:
    return lambda sb: sb.alpaca.set_mode(mode)


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("daemon-kill", "SIGKILL the UW daemon (a crash)", {"FP-1.1": "ERROR"},
          _kill_daemon, lambda sb: sb.restart_daemon(), healer="restart-daemon"),
    Fault("daemon-hang", "SIGSTOP the UW daemon: alive, holding its lock, doing nothing", {"FP-1.3": "ERROR"},
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
    Fault("uw-429", "UW answers 429: daily quota exhausted", {"FP-1.6": "ERROR"}, _uw("429"), _uw("ok"),
          sticky="a 429 counts until the 20:00 America/New_York quota reset, as in production"),
    Fault("uw-down", "UW answers 500 to everything", {"FP-1.9": "ERROR"}, _uw("500"), _uw("ok")),
    Fault("broker-down", "Alpaca answers 500 to everything", {"FP-4.1": "ERROR"}, _alpaca("500"), _alpaca("ok")),
    Fault("broker-hang", "Alpaca accepts connections and never answers", {"FP-4.1": "ERROR"},
          _alpaca("hang"), _alpaca("ok")),
    Fault("broker-401", "Alpaca rejects the key (401)", {"FP-4.2": "ERROR"}, _alpaca("401"), _alpaca("ok")),
    Fault("broker-429", "Alpaca rate-limits every request (429)", {"FP-4.1": "WARN"},
          _alpaca("429"), _alpaca("ok")),
    Fault("full-positions", "as many open positions as MAX_CONCURRENT_POSITIONS", {"FP-3.2": "WARN"},
          _full_positions, lambda sb: setattr(sb.alpaca, "positions", list(sb.healthy_positions))),
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
          lambda sb: (sb.root / "state/health_safe_mode.flag").unlink(missing_ok=True)),
    Fault("torn-weights", "a half-written adaptive-weights file", {"FP-2.1": "ERROR"},
          lambda sb: BotRoot(sb.root).torn("state/signal_weights.json"), lambda sb: BotRoot(sb.root).write_weights()),
    Fault("threshold-raised", "the self-healing threshold adjustment is active", {"FP-3.8": "WARN"},
          lambda sb: BotRoot(sb.root).self_healing(0.5, activated_at=time.time()),
          lambda sb: BotRoot(sb.root).self_healing(0.0, activated_at=None, losses=0)),
    Fault("bot-kill", "SIGKILL the bot (main.py)", {"FP-6.1": "ERROR"}, _kill_bot, lambda sb: sb.restart_bot(),
          healer="restart-bot"),
]}


def get(name: str) -> Fault:
    """The fault called ``name``; KeyError names the known ones."""
    try:
        return FAULTS[name]
    except KeyError:
        raise KeyError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None
