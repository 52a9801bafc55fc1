"""The check engine: registered checks, run concurrently, each under its own timeout.

A check that raises, hangs or times out is an ERROR with the reason, never a crashed run and
never a stale earlier result. Dependencies are honoured: when a point fails, the points that
depend on it are SKIPPED naming it, so one cause is one critical, not four.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .catalog import Catalog
from .config import Config
from .faults import Unavailable
from .model import CheckFault, Outcome, Report, Result, Status


class CheckContext(Protocol):
    """What the engine itself needs of the context it hands every check (``exporter.bot.context``)."""

    @property
    def config(self) -> Config: ...

    @property
    def redact(self) -> Callable[[str], str]: ...


#: a check takes the bot's context (``exporter.bot.context.Context``) and the point's params
CheckFn = Callable[[Any, dict[str, Any]], Outcome]

#: id -> check function; filled by the @check decorator as the modules of exporter.checks are imported.
REGISTRY: dict[str, CheckFn] = {}


def check(fp: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the detection of failure point ``fp``."""

    def register(fn: CheckFn) -> CheckFn:
        if fp in REGISTRY and REGISTRY[fp] is not fn:
            raise RuntimeError(f"{fp} registered twice ({REGISTRY[fp].__name__}, {fn.__name__})")
        REGISTRY[fp] = fn
        return fn

    return register


@dataclass
class _Slot:
    fp: str
    event: threading.Event
    lock: threading.Lock
    started: float | None = None
    result: Result | None = None


def redacted(value: Any, redact: Callable[[str], str]) -> Any:
    """Details are free-form (exception text, URLs, names): a secret in one must not reach the API."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v, redact) for v in value]
    return value


class Engine:
    """Evaluates failure points. One Engine per Context; safe to call from several threads.

    ``checks`` maps ids to their detections (``exporter.checks.registry()``): the engine knows
    how to run a check, never which checks exist.
    """

    def __init__(self, ctx: CheckContext, checks: Mapping[str, CheckFn], catalog: Catalog | None = None) -> None:
        self.ctx: Any = ctx
        self.catalog = catalog or ctx.config.catalog
        self.checks = dict(checks)
        #: checks whose previous run never returned: their thread is still alive
        self._hung: dict[str, tuple[threading.Thread, float]] = {}
        self._hung_lock = threading.Lock()
        #: fp -> (attempted, success) from the healer's record; shown in the JSON
        self.healing: dict[str, tuple[bool, bool]] = {}

    def run(self, only: Iterable[str] | None = None, known: dict[str, Result] | None = None) -> dict[str, Result]:
        """Run ``only`` (default: every enabled, implemented point) and return their results.

        ``known`` supplies results of dependencies that are not run this time (the exporter
        runs each point at its own interval).
        """
        # once each: a second concurrent run of one point would report the first as hung
        ids = list(dict.fromkeys(only)) if only is not None else self.ctx.config.enabled_ids()
        known = dict(known or {})
        slots = {fp: _Slot(fp, threading.Event(), threading.Lock()) for fp in ids}
        cond = threading.Condition()
        for fp in ids:
            threading.Thread(target=self._worker, args=(fp, slots, known, cond), name=f"check-{fp}",
                             daemon=True).start()
        with cond:
            while True:
                now = time.monotonic()
                pending = [s for s in slots.values() if s.result is None]
                if not pending:
                    break
                next_deadline = None
                for s in pending:
                    if s.started is None:
                        continue
                    timeout = self._timeout(s.fp)
                    if now - s.started >= timeout:
                        self._finalize(s, self._result(s.fp, Outcome.check_fault(
                            CheckFault.TIMED_OUT, f"check timed out after {timeout:g} s"), time.time(),
                            now - s.started), cond)
                    else:
                        d = s.started + timeout - now
                        next_deadline = d if next_deadline is None else min(next_deadline, d)
                cond.wait(timeout=min(next_deadline or 0.05, 0.25))
        return {fp: s.result for fp, s in slots.items() if s.result is not None}

    def report(self, only: Iterable[str] | None = None, with_dependencies: bool = True) -> Report:
        """Every enabled point, or ``only`` these; a point's verdict is the same either way.

        The enabled points ``only`` depends on (transitively) run too, so a point is skipped for a
        failing dependency exactly as in the whole cycle; such a root cause is reported with it
        (a partial run must not read READY while its dependency blocks trading), the others not.
        ``with_dependencies=False`` runs exactly ``only`` (a check's own logic, as tests probe it).
        """
        if only is None:
            results = self.run()
        else:
            wanted = list(dict.fromkeys(only))
            ran = self.run(self.with_dependencies(wanted) if with_dependencies else wanted)
            results = {fp: ran[fp] for fp in wanted if fp in ran}
            for fp in wanted:
                cause = ran[fp].outcome.skipped_by if fp in ran else None
                if cause is not None and cause in ran:
                    results.setdefault(cause, ran[cause])
        return Report.build(results, int(self.ctx.config["readiness"]["max_warnings"]), time.time())

    def with_dependencies(self, ids: Iterable[str]) -> list[str]:
        """``ids`` and the enabled points they depend on, transitively (dependencies first)."""
        enabled = set(self.ctx.config.enabled_ids())
        out: list[str] = []
        seen: set[str] = set()

        def visit(fp: str) -> None:
            if fp in seen:
                return
            seen.add(fp)
            if fp in self.catalog.points:
                for dep in self.catalog[fp].all_dependencies:
                    if dep in enabled:
                        visit(dep)
            out.append(fp)

        for fp in ids:
            visit(fp)
        return out

    # internals ------------------------------------------------------------------------------
    def _timeout(self, fp: str) -> float:
        return float(self.ctx.config.check_settings(fp)["timeout_seconds"])

    def _result(self, fp: str, outcome: Outcome, at: float, duration: float) -> Result:
        point = self.catalog[fp]
        outcome.message = self.ctx.redact(outcome.message)
        outcome.details = redacted(outcome.details, self.ctx.redact)
        attempted, success = self.healing.get(fp, (False, False))
        return Result(fp, point.name, point.category, outcome, at, duration, attempted, success)

    def _finalize(self, slot: _Slot, result: Result, cond: threading.Condition) -> bool:
        with slot.lock:
            if slot.result is not None:
                return False
            slot.result = result
            slot.event.set()
        with cond:
            cond.notify_all()
        return True

    def _unavailable(self, fp: str, fault: Unavailable) -> Outcome:
        """SKIPPED naming the point the catalog says reports this fact; ERROR when none is declared."""
        owner = self.catalog[fp].reported_by.get(fault.kind)
        if owner is None:
            outcome = Outcome.error(str(fault), **fault.details)
            outcome.observations.extend(fault.observations)
            return outcome
        outcome = Outcome.skipped(fault.skip_message(owner), **fault.details)
        outcome.observations.extend(fault.observations)
        if fault.owner_fails:
            outcome.details.setdefault("depends_on", owner)
            outcome.skipped_by = owner
        return outcome

    def _dependency_failure(self, fp: str, slots: dict[str, _Slot], known: dict[str, Result]) -> str | None:
        """Wait for this point's dependencies; name the root cause if one of them is failing."""
        for dep in self.catalog[fp].depends_on:
            if dep in slots:
                slots[dep].event.wait()
                dep_result = slots[dep].result
            else:
                dep_result = known.get(dep)
            if dep_result is None:
                continue
            if dep_result.status is Status.ERROR:
                return dep
            if dep_result.status is Status.SKIPPED and dep_result.outcome.skipped_by:
                return dep_result.outcome.skipped_by
        return None

    def _worker(self, fp: str, slots: dict[str, _Slot], known: dict[str, Result], cond: threading.Condition) -> None:
        slot = slots[fp]
        cause = self._dependency_failure(fp, slots, known)
        start_wall, start = time.time(), time.monotonic()
        if cause is not None:
            outcome = Outcome.skipped(f"depends on {cause}", depends_on=cause)
            outcome.skipped_by = cause
            self._finalize(slot, self._result(fp, outcome, start_wall, 0.0), cond)
            return
        with self._hung_lock:
            hung = self._hung.get(fp)
            if hung is not None and hung[0].is_alive() and hung[0] is not threading.current_thread():
                since = time.strftime("%H:%M:%SZ", time.gmtime(hung[1]))
                self._finalize(slot, self._result(fp, Outcome.check_fault(
                    CheckFault.HUNG, f"previous run has not returned since {since} (hung); not started again"),
                    start_wall, 0.0), cond)
                return
            self._hung[fp] = (threading.current_thread(), start_wall)
        slot.started = start
        with cond:
            cond.notify_all()
        fn = self.checks.get(fp)
        try:
            if fn is None:
                outcome = Outcome.check_fault(CheckFault.UNREGISTERED,
                                              "no detection is registered for this failure point")
            else:
                outcome = fn(self.ctx, self.ctx.config.check_settings(fp)["params"])
                if not isinstance(outcome, Outcome):
                    outcome = Outcome.check_fault(CheckFault.BAD_RETURN,
                                                   f"check returned {type(outcome).__name__}, not an Outcome")
        except Unavailable as fault:
            outcome = self._unavailable(fp, fault)
        except Exception as exc:  # isolation: one broken check never breaks the run
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" at {frame.name}:{frame.lineno}" if frame else ""
            outcome = Outcome.check_fault(CheckFault.RAISED, f"check raised {type(exc).__name__}: {exc}{where}")
        with self._hung_lock:
            if self._hung.get(fp, (None,))[0] is threading.current_thread():
                del self._hung[fp]
        self._finalize(slot, self._result(fp, outcome, start_wall, time.monotonic() - start), cond)
