"""``trading-readiness sandbox``: run a sandbox in the foreground, or, as a client of a running
one (through its admin endpoint), inject and clear faults, restart its processes, show its state."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import requests

from . import faults as faults_mod
from .base import SandboxError
from .sandbox import Sandbox, pid_alive, read_state

EXIT_UNKNOWN = 3


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
    if not state or not state.get("admin_url") or not pid_alive(state.get("pid")):
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
