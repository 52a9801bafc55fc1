"""``make demo``: the whole loop on this machine, then one drill with its timeline.

Why: a newcomer should *see* the chain work before trusting it -- a simulated stock-bot (the
sandbox), the exporter, the healer, Prometheus and Alertmanager, all real processes on
127.0.0.1 with short intervals; then the UW daemon is killed and the demo prints, in seconds
since the fault, when the failing point appeared (exporter API), when the alert fired
(Prometheus, then Alertmanager), when the healer ran ``restart-daemon`` and when readiness was
READY again. Nothing is faked: every step is read back from the component that did it.

``--once`` (or ``DEMO_EXIT_AFTER_DRILL=1``) exits after the drill; otherwise the stack keeps
running until Ctrl-C. Either way every process the demo started is stopped. Exit 0 when the
drill ended in READY, 1 when a step did not happen in time, 3 when the stack could not start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import faults
from .sandbox import SandboxError, read_state
from .stack import Bot, Stack, StackError, Timings, matches

DRILL_TIMEOUT = 90.0


@dataclass
class Step:
    """One line of the timeline: seconds since the fault, what happened, where it was read."""

    at: float
    what: str
    source: str


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


def wait_until(cond: Callable[[], Any], timeout: float, stop: threading.Event, every: float = 0.2) -> Any:
    """Poll ``cond`` until it is truthy; None after ``timeout`` or when ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        value = cond()
        if value:
            return value
        stop.wait(every)
    return None


def drill(stack: Stack, bot: Bot, stop: threading.Event, fault: str = "daemon-kill", fp: str = "FP-1.1",
          timeout: float = DRILL_TIMEOUT, out: Callable[[str], None] = print,
          times: dict[str, float] | None = None) -> tuple[bool, list[Step]]:
    """Inject ``fault`` in ``bot`` and follow it to READY. Returns (ended READY, timeline); ``times``
    (when given) receives seconds since the fault for fp, prometheus, alertmanager, heal, healed
    and ready."""
    steps: list[Step] = []
    t0 = time.time()
    bot.sandbox.fault(fault)
    steps.append(Step(0.0, f"fault injected: {fault} -- {faults.get(fault).summary}", "sandbox"))
    out(f"drill: {fault} in {bot.name} at {_clock(t0)}; following it ...")
    done: dict[str, float] = {}
    heal_rec: dict[str, Any] = {}
    message = ""

    def observe() -> bool:
        nonlocal message
        now = time.time()
        if "fp" not in done:
            point = bot.failure_points().get("failure_points", {}).get(fp) or {}
            if point.get("status") == "ERROR":
                done["fp"] = now - t0
                message = str(point.get("last_error") or point.get("message") or "")
        if "prometheus" not in done:
            for a in stack.prometheus_alerts():
                if matches(a, alertname="TradingFailurePoint", fp=fp, instance=bot.instance):
                    # Prometheus says when: activeAt plus the rule's `for:` (polling would add its lag)
                    fired = fired_at(stack, a, fp)
                    done["prometheus"] = (fired if fired is not None else now) - t0
                    break
        if "alertmanager" not in done and any(
                matches(a, alertname="TradingFailurePoint", fp=fp, instance=bot.instance)
                and (a.get("status") or {}).get("state") == "active" for a in stack.alertmanager_alerts()):
            done["alertmanager"] = now - t0
        if "heal" not in done:
            for rec in bot.heals():
                if rec.get("fp") == fp and float(rec.get("epoch", 0)) >= t0:
                    heal_rec.update(rec)
                    done["heal"] = now - t0
                    break
        if "fp" in done and "ready" not in done and bot.readiness() == "READY":
            done["ready"] = now - t0
        return {"fp", "prometheus", "alertmanager", "heal", "ready"} <= done.keys()

    wait_until(observe, timeout, stop, every=0.1)
    if "fp" in done:
        steps.append(Step(done["fp"], f"failing point: {fp} ERROR -- {message}", "exporter /api/failure_points"))
    if "prometheus" in done:
        steps.append(Step(done["prometheus"], f"alert firing: TradingFailurePoint{{fp=\"{fp}\"}}",
                          "Prometheus /api/v1/alerts"))
    if "alertmanager" in done:
        steps.append(Step(done["alertmanager"], "alert seen active in Alertmanager (routed to the healer and the "
                                                "pager)", "Alertmanager /api/v2/alerts"))
    if heal_rec:
        started = float(heal_rec["epoch"]) - t0
        steps.append(Step(started, f"heal started: {heal_rec.get('healer')} runs "
                                   f"`{' '.join(heal_rec.get('argv', [])[-2:])}`", "healer /api/heals"))
        steps.append(Step(started + float(heal_rec.get("duration_seconds") or 0),
                          f"heal {heal_rec.get('outcome')}: {heal_rec.get('detail') or ''}".strip(),
                          "healer /api/heals"))
    if "ready" in done:
        steps.append(Step(done["ready"], "READY again", "exporter /api/failure_points"))
    if times is not None:
        times.update(done)
        if heal_rec:
            times["heal"] = float(heal_rec["epoch"]) - t0
            times["healed"] = times["heal"] + float(heal_rec.get("duration_seconds") or 0)
    steps.sort(key=lambda s: s.at)
    ok = "ready" in done and heal_rec.get("outcome") == "success"
    for step in steps:
        out(f"  +{step.at:5.1f} s  {step.what}  [{step.source}]")
    missing = [k for k in ("fp", "prometheus", "alertmanager", "heal", "ready") if k not in done]
    if missing and not stop.is_set():
        out(f"  not seen within {timeout:.0f} s: {', '.join(missing)} (logs in {stack.workdir / 'logs'})")
    return ok, steps


def parse_time(text: Any) -> float | None:
    """RFC 3339 with nanoseconds (Prometheus, Alertmanager) -> epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        base = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    digits = "".join(c for c in frac if c.isdigit())
    return base + (float(f"0.{digits}") if digits else 0.0)


def fired_at(stack: Stack, alert: dict[str, Any], fp: str) -> float | None:
    """When a firing Prometheus alert fired: its activeAt plus its rule's ``for:`` duration."""
    active = parse_time(alert.get("activeAt"))
    if active is None:
        return None
    for group in stack.rules():
        for rule in group.get("rules", []):
            if rule.get("name") == "TradingFailurePoint" and (rule.get("labels") or {}).get("fp") == fp:
                return active + float(rule.get("duration") or 0)
    return active


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--once", action="store_true", help="exit after the drill (also DEMO_EXIT_AFTER_DRILL=1)")
    p.add_argument("--dir", default=".demo",
                   help="work directory, recreated each run (default .demo in the current directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    once = opts.once or os.environ.get("DEMO_EXIT_AFTER_DRILL", "") not in ("", "0")
    workdir = Path(opts.dir).resolve()
    state = read_state(workdir / "bot")
    if state and isinstance(state.get("pid"), int) and _alive(state["pid"]):
        print(f"error: a demo (pid {state['pid']}) is already running in {workdir}", file=sys.stderr)
        return 3
    shutil.rmtree(workdir, ignore_errors=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(workdir, bots=("bot",), timings=Timings.fast(), log=lambda m: print(m, flush=True))
    started = time.monotonic()
    try:
        print("starting the sandbox, exporter, healer, Alertmanager and Prometheus on 127.0.0.1 ...", flush=True)
        try:
            stack.start()
        except (StackError, SandboxError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
        for name, url in stack.urls():
            print(f"  {name:<14} {url}")
        bot = stack.running[0]
        print(f"  {'sandbox CLI':<14} trading-readiness sandbox faults --dir {bot.root}")
        if not wait_until(lambda: stack.live() and bot.readiness() == "READY", 60, stop):
            if stop.is_set():
                return 0
            print(f"error: the stack did not reach READY within 60 s (logs in {workdir / 'logs'})", file=sys.stderr)
            return 1
        print(f"READY after {time.monotonic() - started:.1f} s; Prometheus scrapes the exporter every "
              f"{stack.timings.scrape}, checks run every second.", flush=True)
        ok, _ = drill(stack, bot, stop, out=lambda m: print(m, flush=True))
        if stop.is_set():
            return 0
        print("drill passed: the daemon was restarted by the healer and trading is READY again" if ok
              else "drill FAILED: see above", flush=True)
        if not once:
            print("the stack keeps running; inject more faults with the sandbox CLI above. Ctrl-C stops everything.",
                  flush=True)
            while not stop.wait(0.5):
                pass
        return 0 if ok else 1
    finally:
        stack.stop()
        print("stopped: every process the demo started has exited.", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    raise SystemExit(main())
