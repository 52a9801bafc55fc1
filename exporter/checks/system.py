"""System & Infrastructure (FP-6.x): the bot process, crashes, liveness, host resources."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

from ..bot import funnel, market, procs
from ..bot.alpaca import broker_offset, clock_failure_owner, require_credentials
from ..bot.broker import BrokerError
from ..bot.context import Context
from ..bot.hostclock import kernel_sync, timedatectl_sync
from ..bot.network import endpoint, tcp_probe
from ..bot.readers import FileProblem, read_json
from ..bot.values import age_text, number
from ..core.engine import check
from ..core.model import Outcome, iso_utc

T = TypeVar("T")


#: one scan of the process table (or one systemctl call) serves FP-6.1, FP-6.2 and FP-6.5 of a cycle
SCAN_TTL_SECONDS = 0.2


def _memo(ctx: Context, key: str, fn: Callable[[], T]) -> T:
    """``fn()`` shared for SCAN_TTL_SECONDS of real time by the checks of one cycle.

    Real (monotonic) time on purpose: process start times are real, and a test's frozen check
    clock must not freeze the process table.
    """
    slot = ctx.state_for("memo:" + key)
    lock = slot.setdefault("lock", threading.Lock())
    with lock:
        if time.monotonic() - slot.get("at", float("-inf")) >= SCAN_TTL_SECONDS:
            slot["value"], slot["at"] = fn(), time.monotonic()
        return slot["value"]  # type: ignore[no-any-return]


def bot_processes(ctx: Context) -> list[procs.Match]:
    """main.py processes of this bot root (cwd and argv, never a look-alike)."""
    script = ctx.config["processes"]["bot"]["script"]
    return _memo(ctx, "bot-processes", lambda: procs.find_script_processes(ctx.root, script, ctx.process_table()))


def bot_unit(ctx: Context) -> procs.UnitState | None:
    unit = ctx.config["processes"]["bot"].get("systemd_unit")
    return _memo(ctx, "bot-unit", lambda: procs.unit_state(unit)) if unit else None


@check("FP-6.1")
def bot_running(ctx: Context, p: dict[str, Any]) -> Outcome:
    spec = ctx.config["processes"]["bot"]
    matches, unit = bot_processes(ctx), bot_unit(ctx)
    details: dict[str, Any] = {"pids": []}
    unit_note = ""
    if unit is not None and unit.exists:
        details["systemd"] = {"unit": unit.name, "active_state": unit.active_state, "main_pid": unit.main_pid}
        unit_note = f"; {unit.name} is {unit.active_state}"
    # the unit's MainPID is the supervisor, not main.py: only a main.py process counts
    if matches:
        pids = [m.pid for m in matches]
        details["pids"] = pids
        return Outcome.ok(f"{spec['script']} running (pid {pids[0]}){unit_note}", **details).observe(
            "trading_bot_up", 1)
    return Outcome.error(f"no {spec['script']} process runs in {ctx.root}{unit_note}", **details).observe(
        "trading_bot_up", 0)


# --- supervisor health (shared by FP-6.2 and FP-6.7) ---------------------------------------------
def _health(ctx: Context) -> dict[str, Any]:
    """state/health.json as the supervisor wrote it; FileProblem when missing or unreadable."""
    path = ctx.path("supervisor_health")
    data = ctx.files.get(path, lambda f: read_json(f, 3, 0.2), kind="health")
    if not isinstance(data, dict):
        raise FileProblem("shape", path, f"{path.name} is not a JSON object")
    return data


def _health_age(ctx: Context, data: dict[str, Any]) -> float | None:
    ts = data.get("timestamp")
    dt = market.parse_ts(ts) if isinstance(ts, str) else None
    if dt is not None:
        return ctx.now() - dt.timestamp()
    n = number(ts)
    return None if n is None else ctx.now() - n


BAD_SERVICE = {"FAILED", "FAIL", "DEAD", "STOPPED", "GAVE_UP", "ERROR", "CRASHED"}


@check("FP-6.2")
def crash_loop(ctx: Context, p: dict[str, Any]) -> Outcome:
    """A bot that keeps dying trades in fragments (and the supervisor gives up after 5 failures in
    10 min); FP-6.1 only sees the moment, this point sees the pattern."""
    spec = ctx.config["processes"]["bot"]
    state = ctx.state_for("FP-6.2")
    now = ctx.now()
    window = float(p["window_seconds"])
    problems: list[tuple[int, str]] = []  # (2 error | 1 warn, text)
    details: dict[str, Any] = {"window_seconds": window}

    # 1. main.py processes seen across cycles: a new process replacing one that vanished is a
    #    restart; a second one beside a live one is a duplicate (FP-6.1 lists it), not a restart
    matches = bot_processes(ctx)
    current = {(m.pid, round(m.create_time, 2)) for m in matches}
    previous: set[tuple[int, float]] = state.get("live", set())
    restart_times: list[float] = state.setdefault("restart_times", [])
    if "live" in state:
        state["vanished"] = state.get("vanished", 0) + len(previous - current)
        for _pid, started in sorted(current - previous, key=lambda x: x[1]):
            if state["vanished"] > 0:
                state["vanished"] -= 1
                restart_times.append(started)
    elif matches and now - matches[-1].create_time < window:
        details["note"] = (f"{spec['script']} started {age_text(max(0.0, now - matches[-1].create_time))} ago; "
                           "a first observation cannot tell a start from a restart")
    state["live"] = current
    restart_times[:] = [t for t in restart_times if t >= now - window]
    restarts = len(restart_times)
    details["process_restarts"] = restarts
    details["restarts_at"] = [iso_utc(t) for t in restart_times]

    # 2. systemd: restart counter and crash-loop states, where systemd runs
    unit = bot_unit(ctx)
    unit_restarts = 0
    if unit is None or not unit.exists:
        details["systemd"] = "not available here" if unit is None else f"{spec['systemd_unit']} not loaded"
    else:
        history: list[tuple[float, int]] = state.setdefault("n_restarts", [])
        if unit.n_restarts is not None:
            history.append((now, unit.n_restarts))
            history[:] = [h for h in history if h[0] >= now - window] or history[-1:]
            unit_restarts = max(0, unit.n_restarts - history[0][1])
        details["systemd"] = {"unit": unit.name, "active_state": unit.active_state, "sub_state": unit.sub_state,
                              "n_restarts": unit.n_restarts, "restarts_in_window": unit_restarts}
        if unit.sub_state == "auto-restart":
            problems.append((2, f"{unit.name} is waiting to be restarted after a failure (auto-restart)"))
        elif unit.active_state == "failed":
            problems.append((2, f"{unit.name} failed ({unit.sub_state}); systemd stopped restarting it"))

    count = max(restarts, unit_restarts)
    if count >= int(p["error_restarts"]):
        problems.append((2, f"crash loop: {count} restarts in the last {age_text(window)}"))
    elif count >= int(p["warn_restarts"]):
        problems.append((1, f"{spec['script']} restarted {count} time(s) in the last {age_text(window)}"))

    # 3. the supervisor's own view of the bot's service, while its file is fresh
    try:
        health = _health(ctx)
        age = _health_age(ctx, health)
        raw = health.get("services")
        services: dict[str, Any] = raw if isinstance(raw, dict) else {}
        svc = services.get(p["bot_service"])
        details["supervisor"] = {"service": p["bot_service"], "state": svc,
                                 "age_seconds": None if age is None else round(age)}
        if svc is not None and age is not None and age <= float(p["health_max_age_seconds"]):
            text = str(svc).upper()
            if text in BAD_SERVICE:
                problems.append((2, f"supervisor reports {p['bot_service']} {svc} (it gives up after repeated "
                                    "failures)"))
            elif text != "OK":
                problems.append((1, f"supervisor reports {p['bot_service']} {svc}"))
    except FileProblem as exc:
        details["supervisor"] = f"not used: {exc} (see FP-6.7)"

    out: Outcome
    if any(level == 2 for level, _ in problems):
        out = Outcome.error("; ".join(t for _, t in sorted(problems, reverse=True)), **details)
    elif problems:
        out = Outcome.warn("; ".join(t for _, t in problems), **details)
    else:
        out = Outcome.ok(f"no restart of {spec['script']} in the last {age_text(window)}", **details)
    return out.observe("trading_bot_restarts", count)


# --- FP-6.3: stuck ------------------------------------------------------------------------------
def _record_ts(rec: dict[str, Any]) -> float | None:
    ts = number(rec.get("_ts"))
    if ts is not None:
        return ts
    dt = market.parse_ts(rec.get("ts") or rec.get("timestamp"))
    return None if dt is None else dt.timestamp()


@check("FP-6.3")
def bot_responsive(ctx: Context, p: dict[str, Any]) -> Outcome:
    """A process that runs but no longer cycles looks alive to FP-6.1 and trades nothing. The
    heartbeat alone cannot tell: a helper re-stamps it when it is over 180 s old, so the run log,
    which only the loop writes, is the truth."""
    session = ctx.session()
    now = ctx.now()
    details: dict[str, Any] = {"market": session.phase}
    tail = ctx.tails.get(ctx.path("run_log"), keep=funnel.RUN_KEEP)
    run_age: float | None = None
    ts: float | None = None
    try:
        appended, _generation = tail.version()
        last, _complete = tail.since(appended - 1) if appended else ([], True)
        if not last:
            last = tail.kept()[-1:]
        ts = _record_ts(last[-1]) if last else None
        run_age = None if ts is None else now - ts
        details["run_log"] = "readable"
    except FileProblem as exc:
        details["run_log"] = str(exc)
    hb_age: float | None = None
    hb_ts: float | None = None
    hb_problem: str | None = None
    try:
        hb = ctx.files.get(ctx.path("heartbeat"), lambda f: read_json(f, 3, 0.2), kind="heartbeat")
        hb_ts = number(hb.get("last_heartbeat_ts")) if isinstance(hb, dict) else None
        hb_age = None if hb_ts is None else now - hb_ts
        details["heartbeat_running"] = hb.get("running") if isinstance(hb, dict) else None
        if hb_ts is None:
            hb_problem = (f"{ctx.path('heartbeat').name} has no numeric last_heartbeat_ts"
                          if isinstance(hb, dict) else f"{ctx.path('heartbeat').name} is not a JSON object")
    except FileProblem as exc:
        details["heartbeat"] = str(exc)
        hb_problem = None if exc.kind == "missing" else str(exc)
    details.update(last_cycle_age_seconds=None if run_age is None else round(run_age),
                   heartbeat_age_seconds=None if hb_age is None else round(hb_age))

    def observed(out: Outcome) -> Outcome:
        # times, not ages: rules compute time() - x, and a scrape does not age a stored value
        return (out.observe("trading_bot_last_cycle_timestamp_seconds", ts)
                .observe("trading_bot_heartbeat_timestamp_seconds", hb_ts))

    if not session.is_open:
        # the bot may idle or sleep long while closed; nothing here may page all night
        return observed(Outcome.skipped(
            f"{session.describe()}: liveness is judged in session "
            f"(last cycle {age_text(run_age) + ' ago' if run_age is not None else 'unknown'})", **details))
    warn_s, err_s = float(p["warn_seconds"]), float(p["error_seconds"])
    # a heartbeat that cannot be read is named as such, never passed off as merely absent
    hb_text = (f"heartbeat unusable: {hb_problem}" if hb_problem
               else "no heartbeat" if hb_age is None else f"heartbeat {age_text(max(hb_age, 0))} old")
    out: Outcome
    if run_age is None:
        # without a cycle record only the heartbeat is left, and a helper re-stamps it
        if hb_age is None or hb_age > err_s:
            out = Outcome.error(f"no cycle in the run log and {hb_text}", **details)
        else:
            out = Outcome.warn(f"no cycle in the run log to confirm liveness ({hb_text}, which a helper "
                               "re-stamps; see FP-1.8)", **details)
    elif run_age > err_s or run_age > warn_s:
        text = f"no cycle logged for {age_text(run_age)} in session"
        if hb_age is not None and hb_age < run_age - warn_s:
            text += (f" although the heartbeat is only {age_text(max(hb_age, 0))} old (re-stamped by a helper, "
                     "not the loop)")
        else:
            text += f" ({hb_text})"
        out = Outcome.error(text, **details) if run_age > err_s else Outcome.warn(text, **details)
    elif hb_problem:
        # the loop cycles, but whatever watches the heartbeat (the bot's own watchdog) cannot read it
        out = Outcome.warn(f"cycling (last {age_text(max(run_age, 0))} ago) but the {hb_text}", **details)
    elif details.get("heartbeat_running") is False:
        out = Outcome.warn(f"cycling (last {age_text(max(run_age, 0))} ago) but the heartbeat says running=false",
                           **details)
    else:
        out = Outcome.ok(f"last cycle {age_text(max(run_age, 0))} ago ({hb_text})", **details)
    return observed(out)


# --- FP-6.4 / FP-6.5: resources -----------------------------------------------------------------
GIB = 1 << 30


def _level(value: float, warn: float, error: float) -> int:
    """2 below ``error``, 1 below ``warn``, else 0 (smaller is worse)."""
    return 2 if value < error else 1 if value < warn else 0


@check("FP-6.4")
def disk_space(ctx: Context, p: dict[str, Any]) -> Outcome:
    """A full disk makes the bot's state writes fail (torn weights, lost freezes) and stops logs."""
    try:
        usage = shutil.disk_usage(ctx.root)
    except OSError as exc:
        return Outcome.error(f"cannot stat the filesystem of {ctx.root}: {exc.strerror or exc}")
    pct = 100.0 * usage.free / usage.total if usage.total else 0.0
    details = {"path": str(ctx.root), "free_bytes": usage.free, "total_bytes": usage.total,
               "free_percent": round(pct, 2)}
    level = max(_level(pct, float(p["warn_free_percent"]), float(p["error_free_percent"])),
                _level(usage.free, float(p["warn_free_bytes"]), float(p["error_free_bytes"])))
    text = f"{usage.free / GIB:.1f} GiB free ({pct:.1f}%) on the filesystem of {ctx.root}"
    out = (Outcome.error(text + " (below the error threshold)", **details) if level == 2 else
           Outcome.warn(text + " (below the warning threshold)", **details) if level == 1 else
           Outcome.ok(text, **details))
    return out.observe("trading_disk_free_bytes", usage.free).observe("trading_disk_total_bytes", usage.total)


@check("FP-6.5")
def memory(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Out of memory the kernel kills the bot (or the daemon) mid-cycle; a growing bot is the
    usual cause, so its RSS is reported too."""
    vm = psutil.virtual_memory()
    pct = 100.0 * vm.available / vm.total if vm.total else 0.0
    details: dict[str, Any] = {"available_bytes": vm.available, "total_bytes": vm.total,
                               "available_percent": round(pct, 2)}
    level = max(_level(pct, float(p["warn_available_percent"]), float(p["error_available_percent"])),
                _level(vm.available, float(p["warn_available_bytes"]), float(p["error_available_bytes"])))
    texts = [f"{vm.available / GIB:.1f} GiB available ({pct:.1f}%)"]
    rss: int | None = None
    spec = ctx.config["processes"]["bot"]
    for m in bot_processes(ctx):
        try:
            rss = (rss or 0) + psutil.Process(m.pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    details["bot_rss_bytes"] = rss
    if rss is not None:
        texts.append(f"{spec['script']} RSS {rss / (1 << 20):.0f} MiB")
        if rss > float(p["max_bot_rss_bytes"]):
            level = max(level, 1)
            texts.append(f"above max_bot_rss_bytes {float(p['max_bot_rss_bytes']) / (1 << 20):.0f} MiB")
    text = "; ".join(texts)
    out = (Outcome.error(text + " (below the error threshold)", **details) if level == 2 else
           Outcome.warn(text, **details) if level == 1 else Outcome.ok(text, **details))
    return out.observe("trading_memory_available_bytes", vm.available).observe("trading_bot_rss_bytes", rss)


# --- FP-6.6: network ----------------------------------------------------------------------------
@check("FP-6.6")
def network(ctx: Context, p: dict[str, Any]) -> Outcome:
    """Without a route to the broker and UW nothing is fetched and no order leaves; DNS, refusal
    and timeout are told apart because their fixes differ."""
    targets = {"alpaca": ctx.broker.base_url, "uw": ctx.uw.base_url}
    for extra in p["extra_urls"]:
        targets[str(extra)] = str(extra)
    timeout = float(p["connect_timeout_seconds"])
    results: dict[str, tuple[str, str]] = {}

    def run(name: str, url: str) -> None:
        ep = endpoint(url)
        results[name] = (("bad_url", f"cannot parse a host from the {name} base URL") if ep is None
                         else tcp_probe(*ep, timeout))

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in targets.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 2 + 1)
    # host and port only: a base URL may carry user:password, which must not reach the API
    details = {name: {"endpoint": "{}:{}".format(*ep) if (ep := endpoint(targets[name])) else None,
                      "result": results.get(name, ("timeout", ""))[0]} for name in targets}
    failed = [f"{name}: {results[name][1]}" if name in results else f"{name}: no answer within {timeout * 2 + 1:g} s"
              for name in targets if results.get(name, ("x",))[0] != "ok"]
    out = (Outcome.error("; ".join(failed), **details) if failed
           else Outcome.ok("reachable: " + ", ".join(f"{n} ({results[n][1].split(' ')[0]})" for n in targets),
                           **details))
    for name in targets:
        if name in ("alpaca", "uw"):
            out.observe("trading_network_reachable", results.get(name, ("x",))[0] == "ok", target=name)
    return out


# --- FP-6.7: supervisor health ------------------------------------------------------------------
@check("FP-6.7")
def supervisor_health(ctx: Context, p: dict[str, Any]) -> Outcome:
    """The supervisor restarts a dead bot; if it is dead, hung or reports a failed service, the
    next crash is permanent."""
    try:
        data = _health(ctx)
    except FileProblem as exc:
        if exc.kind == "missing":
            return Outcome.warn(f"no supervisor health file: {exc} (is deploy_supervisor.py running?)")
        return Outcome.warn(f"supervisor health unreadable: {exc} (see FP-5.3)")
    age = _health_age(ctx, data)
    overall = str(data.get("overall_status", "")).upper()
    raw = data.get("services")
    services: dict[str, Any] = raw if isinstance(raw, dict) else {}
    not_ok = {str(k): str(v) for k, v in services.items() if str(v).upper() != "OK"}
    elsewhere = {str(k): str(v) for k, v in p["services_reported_elsewhere"].items()}
    own = {k: v for k, v in not_ok.items() if k not in elsewhere}
    details: dict[str, Any] = {"overall_status": overall or None, "services": services,
                               "age_seconds": None if age is None else round(age)}
    if age is None:
        return Outcome.error("state/health.json has no readable timestamp", **details)
    if age > float(p["error_age_seconds"]) or age > float(p["warn_age_seconds"]):
        text = (f"supervisor health is {age_text(age)} old (rewritten every 300 s): the supervisor is dead or "
                "hung")
        stale = (Outcome.error(text, **details) if age > float(p["error_age_seconds"])
                 else Outcome.warn(text, **details))
        return stale.observe("trading_supervisor_health_timestamp_seconds", ctx.now() - age)
    named = ", ".join(f"{k} {v}" for k, v in own.items())
    noted = ", ".join(f"{k} {v} (see {elsewhere[k]})" for k, v in not_ok.items() if k in elsewhere)
    out: Outcome
    if overall == "OK" or (overall in ("DEGRADED", "FAILED") and not_ok and not own):
        out = Outcome.ok(f"supervisor reports {overall or 'OK'}" + (f"; {noted}" if noted else ""), **details)
    elif overall == "FAILED":
        out = Outcome.error("supervisor reports FAILED" + (f": {named}" if named else ""), **details)
    elif overall == "DEGRADED":
        out = Outcome.warn("supervisor reports DEGRADED" + (f": {named}" if named else ""), **details)
    else:
        out = Outcome.warn(f"supervisor reports an unknown overall_status {overall or 'missing'!r}", **details)
    return out.observe("trading_supervisor_health_timestamp_seconds", ctx.now() - age)


# --- FP-6.8: clock synchronisation --------------------------------------------------------------
@check("FP-6.8")
def clock_sync(ctx: Context, p: dict[str, Any]) -> Outcome:
    """An unsynchronised host clock drifts until freshness, cooldown and market-hours logic are
    wrong; FP-4.9 measures the skew, this point says whether anything keeps the clock right."""
    method = str(p["method"])
    details: dict[str, Any] = {}
    if method in ("auto", "timedatectl"):
        synced = timedatectl_sync()
        if synced is not None:
            details["method"] = "timedatectl NTPSynchronized"
            out = (Outcome.ok("host clock synchronised (timedatectl NTPSynchronized=yes)", **details) if synced
                   else Outcome.warn("host clock not synchronised (timedatectl NTPSynchronized=no)", **details))
            return out.observe("trading_clock_synchronised", synced)
        if method == "timedatectl":
            return Outcome.warn("timedatectl is not usable here (systemd is not the init system)", method=method)
    kernel: tuple[bool, float] | None = None
    if method in ("auto", "adjtimex"):
        kernel = kernel_sync()
        if kernel is not None:
            details.update(kernel_synchronised=kernel[0], kernel_max_error_seconds=kernel[1])
            if kernel[0]:
                details["method"] = "adjtimex"
                return Outcome.ok(f"host clock synchronised (kernel adjtimex, max error {kernel[1]:.3f} s)",
                                  **details).observe("trading_clock_synchronised", 1)
        elif method == "adjtimex":
            return Outcome.warn("adjtimex(2) is not usable here", method=method)
    # nothing on the host keeps time (or says so): the broker's clock is the independent reference
    details["method"] = "broker clock"
    prefix = ("the kernel reports no synchronisation (adjtimex STA_UNSYNC)" if kernel is not None
              else "no host synchronisation status available")
    # without the reference this point cannot judge; the broker's outage is another point's alert
    # (the catalog's broker_errors)
    require_credentials(ctx, f"{prefix}; no reference clock", **details)
    try:
        offset, err = broker_offset(ctx)
    except BrokerError as exc:
        out = Outcome.skipped(f"{prefix}; the broker clock is unavailable as a reference ({exc})", **details)
        out.skipped_by = clock_failure_owner(exc)
        return out
    skew = max(0.0, abs(offset) - err)
    details.update(broker_offset_seconds=round(offset, 3), uncertainty_seconds=round(err, 3))
    if skew > float(p["max_offset_seconds"]):
        return Outcome.warn(f"{prefix} and the clock is {abs(offset):.1f} s off the broker's (see FP-4.9)",
                            **details).observe("trading_clock_synchronised", 0)
    return Outcome.ok(f"{prefix}, but the clock agrees with the broker's within {skew + err:.2f} s "
                      "(checked on every run)", **details).observe("trading_clock_synchronised", 1)
