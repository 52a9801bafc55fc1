"""Fault to READY at the DEFAULT settings, phase by phase, over several drills.

The drill of ``make demo`` (SIGKILL the sandbox's UW daemon, FP-1.1) through the real chain --
exporter, Prometheus, Alertmanager, healer running ``sandbox restart-daemon`` -- with the
production intervals: 15 s checks, 15 s scrape and rule evaluation, the rules' own ``for:``
and the generated Alertmanager routes (``Timings.default()``). Only the simulated daemon
cycles fast, as in ``bench/bench_e2e.py``.

Each phase is read back from the component that owns it, in seconds since the fault:
failing point (exporter API), pending (Prometheus activeAt), firing (activeAt + ``for:``),
seen in Alertmanager, heal started and finished (the healer's audit record), READY again
(exporter API). Between drills the stack returns to a quiet state (READY, the alert resolved
in Prometheus and Alertmanager, the healer's attempt budget reset by the resolved
notification), so each drill starts like the first. Alerts other than the drilled one that
fire meanwhile are counted: they would be false alarms.

    python -m bench.bench_heal [--drills 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from sandbox.demo import drill
from sandbox.stack import Stack, Timings, matches

FP = "FP-1.1"
PHASES = (("fp", "point fails"), ("pending", "pending"), ("prometheus", "firing"),
          ("alertmanager", "in Alertmanager"), ("heal", "heal starts"), ("healed", "heal ends"),
          ("ready", "READY"))
DRILL_TIMEOUT = 240.0
QUIET_TIMEOUT = 180.0


def _rule_for(stack: Stack) -> float:
    for group in stack.rules():
        for rule in group.get("rules", []):
            if rule.get("name") == "TradingFailurePoint" and (rule.get("labels") or {}).get("fp") == FP:
                return float(rule.get("duration") or 0)
    return 0.0


def _attempts_in_window(bot: Any) -> int:
    try:
        state = requests.get(f"{bot.healer_url}/api/heals", timeout=5).json().get("state", {})
        return int((state.get(FP) or {}).get("attempts_in_window", 0))
    except (requests.RequestException, ValueError, AttributeError):
        return -1


def _quiet(stack: Stack, bot: Any) -> bool:
    return (bot.readiness() == "READY"
            and not any(a["labels"].get("fp") == FP for a in stack.prometheus_alerts())
            and not any(a["labels"].get("fp") == FP for a in stack.prometheus_alerts("pending"))
            and not any(matches(a, alertname="TradingFailurePoint", fp=FP) for a in stack.alertmanager_alerts())
            and _attempts_in_window(bot) == 0)


def run(drills: int, log: Any = print) -> tuple[list[dict[str, float]], set[str]]:
    out: list[dict[str, float]] = []
    others: set[str] = set()
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="bench-heal-") as tmp, Stack(Path(tmp), timings=Timings.default()) as st:
        bot = st.running[0]
        deadline = time.monotonic() + 180
        while not (st.live() and bot.readiness() == "READY") and time.monotonic() < deadline:
            time.sleep(0.5)
        for_seconds = _rule_for(st)
        for i in range(drills):
            end = time.monotonic() + QUIET_TIMEOUT
            while time.monotonic() < end and not _quiet(st, bot):
                time.sleep(0.5)
            times: dict[str, float] = {}
            drill(st, bot, stop, timeout=DRILL_TIMEOUT, out=lambda m: None, times=times)
            if "prometheus" in times:
                times["pending"] = times["prometheus"] - for_seconds
            for a in st.prometheus_alerts() + st.prometheus_alerts("pending"):
                fp = a["labels"].get("fp")
                if a["labels"].get("alertname") == "TradingFailurePoint" and fp and fp != FP:
                    others.add(fp)
            out.append(times)
            log(f"drill {i + 1}/{drills}: " + ", ".join(f"{k} {times[k]:.1f}" for k, _ in PHASES if k in times)
                + (f"  (not seen: {', '.join(k for k, _ in PHASES if k not in times)})"
                   if any(k not in times for k, _ in PHASES) else ""))
    return out, others


def table(runs: list[dict[str, float]], others: set[str]) -> str:
    rows = ["| phase (seconds since the fault) | p50 | max | min |", "|---|---|---|---|"]
    for key, label in PHASES:
        values = [r[key] for r in runs if key in r]
        if not values:
            rows.append(f"| {label} | not seen | | |")
            continue
        rows.append(f"| {label} | {statistics.median(values):.1f} | {max(values):.1f} | {min(values):.1f} |")
    done = sum(1 for r in runs if "ready" in r)
    rows.append("")
    rows.append(f"{done} of {len(runs)} drills ended READY; other failure points firing during the drills: "
                f"{', '.join(sorted(others)) or 'none'}.")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drills", type=int, default=10)
    args = p.parse_args([] if argv is None else argv)  # bench/run.py calls main() with its own argv
    load = os.getloadavg()
    runs, others = run(args.drills)
    return (f"Drill: SIGKILL the sandbox's UW daemon ({FP}) at the default settings; {args.drills} drills; "
            f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}.\n\n" + table(runs, others))


if __name__ == "__main__":
    import sys

    print(main(sys.argv[1:]))
