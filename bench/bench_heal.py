"""Fault to READY, phase by phase, over several drills: at the DEFAULT settings and at the fast
settings of the demo and the end-to-end tests.

The drill of ``make demo`` (SIGKILL the sandbox's UW daemon, FP-1.1) through the real chain --
exporter, Prometheus, Alertmanager, healer running ``sandbox restart-daemon``. Default: the
production intervals, 15 s checks, 15 s scrape, 5 s rule evaluation, the rules' own ``for:`` and
the generated Alertmanager routes (``Timings.default()``). Fast: 1 s everything, ``for: 0s``.
Only the simulated daemon cycles fast in both, so a restarted daemon is seen fresh at once.

Each drill starts from a quiet state (READY, the alert resolved in Prometheus and Alertmanager,
the healer's attempt budget reset), then waits a random time of up to one scrape interval, so
the fault lands at a random phase of the check, scrape and evaluation cycles (right after a
quiet state is reached the phases are always alike). Every time is the one the component that
did the step recorded, in seconds since the bench injected the fault:

- point fails: the exporter's ``trading_failure_point_last_check_timestamp_seconds`` plus
  ``..._check_duration_seconds`` of the check that first exported FP-1.1 as ERROR;
- pending: the alert's ``activeAt`` (Prometheus ``/api/v1/alerts``);
- firing: once the state is seen ``firing``, the timestamp of the first ``ALERTS{alertstate=
  "firing"}`` sample Prometheus wrote for it (the evaluation that fired it);
- in Alertmanager: the alert's ``updatedAt`` when first seen active (Alertmanager's receipt);
- heal starts / ends: the healer's audit record (``epoch``, ``duration_seconds``);
- READY: the newest completed check (last check + duration) in the exporter's ``/metrics`` when
  it first exports ``trading_readiness_status`` 0 after the heal.

Alerts other than the drilled one that fire meanwhile are counted: they would be false alarms.

    python -m bench.bench_heal [--drills 10] [--fast-drills 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from sandbox.demo import parse_time
from sandbox.stack import Stack, Timings, matches

FP = "FP-1.1"
PHASES = (("fp", "point fails"), ("pending", "pending"), ("prometheus", "firing"),
          ("alertmanager", "in Alertmanager"), ("heal", "heal starts"), ("healed", "heal ends"),
          ("ready", "READY"))
DRILL_TIMEOUT = 240.0
QUIET_TIMEOUT = 180.0
POLL = 0.1


def _metrics(bot: Any) -> dict[tuple[str, str], float]:
    """The exporter's gauges by (name, fp): status, last check, duration, and readiness ("" fp)."""
    try:
        text = requests.get(f"{bot.exporter_url}/metrics", timeout=5).text
    except requests.RequestException:
        return {}
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith(("trading_failure_point_status", "trading_failure_point_last_check",
                                "trading_failure_point_check_duration", "trading_readiness_status")):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        fp = labels.split('fp="', 1)[1].split('"', 1)[0] if 'fp="' in labels else ""
        try:
            out[(name, fp)] = float(value)
        except ValueError:
            continue
    return out


def _check_done(m: dict[tuple[str, str], float], fp: str) -> float | None:
    at = m.get(("trading_failure_point_last_check_timestamp_seconds", fp))
    return None if at is None else at + m.get(("trading_failure_point_check_duration_seconds", fp), 0.0)


def _first_firing_sample(stack: Stack, bot: Any, since: float) -> float | None:
    """The evaluation timestamp at which Prometheus first wrote the alert as firing after ``since``."""
    expr = (f'ALERTS{{alertname="TradingFailurePoint",alertstate="firing",fp="{FP}",'
            f'instance="{bot.instance}"}}[10m]')
    stamps = [float(ts) for r in stack.query(expr) for ts, _ in r.get("values", [])]
    after = [t for t in stamps if t >= since - 1]
    return min(after) if after else None


def follow(stack: Stack, bot: Any, t0: float, timeout: float) -> dict[str, float]:
    """Poll every component until READY again; each phase at the time its component recorded."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _metrics(bot)
        if "fp" not in done and m.get(("trading_failure_point_status", FP)) == 2:
            at = _check_done(m, FP)
            if at is not None:
                done["fp"] = at - t0
        if "prometheus" not in done:
            for a in stack.prometheus_alerts("pending") + stack.prometheus_alerts():
                if matches(a, alertname="TradingFailurePoint", fp=FP, instance=bot.instance):
                    active = parse_time(a.get("activeAt"))
                    if active is not None:
                        done.setdefault("pending", active - t0)
                    if a.get("state") == "firing":
                        fired = _first_firing_sample(stack, bot, t0)
                        if fired is not None:
                            done["prometheus"] = fired - t0
        if "alertmanager" not in done:
            for a in stack.alertmanager_alerts():
                if matches(a, alertname="TradingFailurePoint", fp=FP, instance=bot.instance) and \
                        (a.get("status") or {}).get("state") == "active":
                    got = parse_time(a.get("updatedAt"))
                    if got is not None:
                        done["alertmanager"] = got - t0
        if "heal" not in done:
            for rec in bot.heals():
                if rec.get("fp") == FP and float(rec.get("epoch", 0)) >= t0 and rec.get("outcome"):
                    done["heal"] = float(rec["epoch"]) - t0
                    done["healed"] = done["heal"] + float(rec.get("duration_seconds") or 0)
                    break
        if "heal" in done and "ready" not in done and m.get(("trading_readiness_status", "")) == 0:
            finished = [at + m.get(("trading_failure_point_check_duration_seconds", fp), 0.0)
                        for (name, fp), at in m.items() if name == "trading_failure_point_last_check_timestamp_seconds"]
            done["ready"] = max(finished) - t0
        if {k for k, _ in PHASES} <= done.keys():
            break
        time.sleep(POLL)
    return done


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


def run(timings: Timings, drills: int, seed: int, log: Any = print) -> tuple[list[dict[str, float]], set[str]]:
    out: list[dict[str, float]] = []
    others: set[str] = set()
    rng = random.Random(seed)
    phase_span = float(timings.scrape.rstrip("s"))
    with tempfile.TemporaryDirectory(prefix="bench-heal-") as tmp, Stack(Path(tmp), timings=timings) as st:
        bot = st.running[0]
        deadline = time.monotonic() + 180
        while not (st.live() and bot.readiness() == "READY") and time.monotonic() < deadline:
            time.sleep(0.5)
        for i in range(drills):
            end = time.monotonic() + QUIET_TIMEOUT
            while time.monotonic() < end and not _quiet(st, bot):
                time.sleep(0.5)
            time.sleep(rng.uniform(0, phase_span))  # a random phase of the scrape and check cycles
            t0 = time.time()
            bot.sandbox.fault("daemon-kill")
            times = follow(st, bot, t0, DRILL_TIMEOUT)
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
        bold = "**" if key == "ready" else ""
        rows.append(f"| {bold}{label}{bold} | {bold}{statistics.median(values):.1f}{bold} | {max(values):.1f} | "
                    f"{min(values):.1f} |")
    done = sum(1 for r in runs if "ready" in r)
    rows.append("")
    rows.append(f"{done} of {len(runs)} drills ended READY; other failure points firing during the drills: "
                f"{', '.join(sorted(others)) or 'none'}.")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drills", type=int, default=10, help="drills at the default settings")
    p.add_argument("--fast-drills", type=int, default=3, help="drills at the fast settings (0: none)")
    p.add_argument("--seed", type=int, default=int(time.time()), help="of the random phases")
    args = p.parse_args([] if argv is None else argv)  # bench/run.py calls main() with its own argv
    parts = []
    for name, timings, n in (("default", Timings.default(), args.drills), ("fast", Timings.fast(), args.fast_drills)):
        if n <= 0:
            continue
        load = os.getloadavg()
        lines: list[str] = []

        def log(line: str, into: list[str] = lines) -> None:
            print(line, flush=True)
            into.append(line)

        runs, others = run(timings, n, args.seed, log)
        ready = sorted(r["ready"] for r in runs if "ready" in r)
        parts.append(
            f"### {name} settings: {timings.check_interval or 1:g} s checks, {timings.scrape} scrape, "
            f"{timings.evaluation} evaluation, `for:` {timings.alert_for or 'as in the rules'}\n\n"
            f"{n} drills, random phase up to {timings.scrape} (seed {args.seed}); load average at start "
            f"{load[0]:.2f}, at end {os.getloadavg()[0]:.2f}.\n\n"
            "Per drill (seconds since the fault):\n\n```\n" + "\n".join(lines) + "\n```\n\n" + table(runs, others)
            + (f"\nFault to READY: p50 {statistics.median(ready):.1f} s, max {ready[-1]:.1f} s.\n" if ready else ""))
    return "\n".join(parts)


if __name__ == "__main__":
    import sys

    print(main(sys.argv[1:]))
