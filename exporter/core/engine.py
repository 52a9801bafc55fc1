"""The check engine: registered checks, run concurrently, each under its own timeout.

A check that raises, hangs or times out is an ERROR with the reason, never a crashed run and
never a stale earlier result. Dependencies are honoured: when a point fails, the points that
depend on it are SKIPPED naming it, so one cause is one critical, not four.

The checks run on a small set of long-lived worker threads (:class:`Workers`), not a new thread
per check per cycle: a point is handed to a worker only once the points it depends on have
results, so no worker ever waits for another check. A check that blocks (a slow broker, a hung
read) holds its worker; when a handed-over check has waited :data:`GRACE_SECONDS` without a free
worker, another worker is started for it, so a hung check never stalls the others or a later
cycle, and a check's timeout still counts from the moment it starts.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

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


T = TypeVar("T")

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


#: how many workers run checks at once in the normal case (more only while some are blocked).
#: Two: the checks are mostly Python, which one thread runs at a time, and every runnable worker
#: beyond that only contends for the GIL. Measured while the bot writes (bench_checks'
#: production case, the exporter's 1 ms switch interval): 48 ms CPU per cycle with one or two
#: workers, 57 ms with four; blocked checks (a slow broker) still get more after GRACE_SECONDS
WORKERS = 2
#: a check handed over this long ago and still waiting for a worker gets a new one
GRACE_SECONDS = 0.05
#: a worker beyond ``WORKERS`` that has had nothing to do for this long ends
IDLE_SECONDS = 30.0


class Workers:
    """Long-lived daemon threads that run the engine's checks.

    ``size`` workers are kept (started on demand); a task that has waited ``grace`` seconds while
    every worker is busy (blocked checks: a hung broker, a stuck read) gets one more worker, and
    such an extra worker ends once it finds nothing to do. The number of threads stays bounded:
    the engine never starts a point whose previous run has not returned, so at most one thread
    per point can be stuck, plus ``size``.
    """

    def __init__(self, size: int = WORKERS, grace: float = GRACE_SECONDS, idle: float = IDLE_SECONDS) -> None:
        self.size, self.grace, self.idle = size, grace, idle
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # idle workers wait here
        self._watch_cv = threading.Condition(lock)  # the watcher waits here: a worker's notify never wakes it
        self._tasks: deque[tuple[float, Callable[[], None]]] = deque()
        self._live = 0
        self._waiting = 0
        self._watching = False

    def submit(self, task: Callable[[], None]) -> None:
        with self._cv:
            self._tasks.append((time.monotonic(), task))
            if self._waiting >= len(self._tasks):
                self._cv.notify()
            elif self._live < self.size:
                self._start()
            elif not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="check-workers-watch", daemon=True).start()

    def _start(self) -> None:
        self._live += 1
        threading.Thread(target=self._work, name=f"check-worker-{self._live}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._tasks:
                    if self._live > self.size:
                        self._live -= 1  # an extra worker: the backlog it was started for is gone
                        return
                    self._waiting += 1
                    woken = self._cv.wait(self.idle)
                    self._waiting -= 1
                    if not woken and not self._tasks and self._live > self.size:
                        self._live -= 1
                        return
                _, task = self._tasks.popleft()
            with contextlib.suppress(BaseException):  # the task records its own failure; the worker lives on
                task()

    def _watch(self) -> None:
        """While tasks wait, start one more worker for a task left waiting ``grace`` seconds."""
        helped = None
        with self._cv:
            while self._tasks:
                queued, head = self._tasks[0]
                since = time.monotonic() - queued
                if since >= self.grace and self._waiting == 0 and head is not helped:
                    self._start()
                    helped = head  # the new worker takes it; the next one waits its own grace
                    since = 0.0
                self._watch_cv.wait(max(self.grace - since, 0.005))
            self._watching = False


#: shared by every engine of the process (the exporter makes a new one on each config reload)
_WORKERS = Workers()


def _workers_after_fork() -> None:
    # a forked child has the pool's bookkeeping but none of its threads
    global _WORKERS
    _WORKERS = Workers(_WORKERS.size, _WORKERS.grace, _WORKERS.idle)


os.register_at_fork(after_in_child=_workers_after_fork)


class RunMemo:
    """Values computed once per :meth:`Engine.run` and shared by the checks of that run (one scan
    of the process table for every point that looks at processes). A later run computes them
    afresh, so what changed between cycles is seen; a failure is shared like a value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[threading.Lock, list[Any]]] = {}

    def get(self, key: str, fn: Callable[[], T]) -> T:
        with self._lock:
            lock, box = self._slots.setdefault(key, (threading.Lock(), []))
        with lock:
            if not box:
                try:
                    box.append((fn(), None))
                except Exception as exc:
                    box.append((None, exc))
            value, error = box[0]
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]


#: the run whose check this thread is executing (set by the worker around each check)
_CURRENT_RUN: contextvars.ContextVar[RunMemo | None] = contextvars.ContextVar("engine_run", default=None)


def current_run() -> RunMemo | None:
    """The memo of the engine run the calling check belongs to; None outside a check."""
    return _CURRENT_RUN.get()


@dataclass
class _Slot:
    fp: str
    lock: threading.Lock
    started: float | None = None
    result: Result | None = None


class _Run:
    """One call of :meth:`Engine.run`: its slots, what each point waits for, and who waits for it."""

    def __init__(self, ids: list[str], known: dict[str, Result], catalog: Catalog, timeouts: dict[str, float]) -> None:
        self.slots = {fp: _Slot(fp, threading.Lock()) for fp in ids}
        self.memo = RunMemo()
        self.known = known
        self.timeouts = timeouts
        self.cond = threading.Condition()
        self.pending = len(ids)
        #: when the waiting caller next looks at the running checks' deadlines
        self.wake_at = float("inf")
        #: point -> the points of this run it depends on that have no result yet
        self.waiting_on: dict[str, set[str]] = {}
        self.dependents: dict[str, list[str]] = {}
        for fp in ids:
            deps = {d for d in catalog[fp].depends_on if d in self.slots} if fp in catalog.points else set()
            self.waiting_on[fp] = deps
            for d in deps:
                self.dependents.setdefault(d, []).append(fp)


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
        run = _Run(ids, dict(known or {}), self.catalog, {fp: self._timeout(fp) for fp in ids})
        # the catalog has no dependency loop: every point becomes ready once its dependencies settle
        for fp in [fp for fp in ids if not run.waiting_on[fp]]:
            self._dispatch(fp, run)
        with run.cond:
            while run.pending:
                now = time.monotonic()
                next_deadline = None
                for s in run.slots.values():
                    if s.result is not None or s.started is None:
                        continue
                    timeout = run.timeouts[s.fp]
                    if now - s.started >= timeout:
                        run.cond.release()
                        try:
                            self._finalize(s, self._result(s.fp, Outcome.check_fault(
                                CheckFault.TIMED_OUT, f"check timed out after {timeout:g} s"), time.time(),
                                now - s.started), run)
                        finally:
                            run.cond.acquire()
                    else:
                        d = s.started + timeout - now
                        next_deadline = d if next_deadline is None else min(next_deadline, d)
                if not run.pending:
                    break
                # a check that starts later with an earlier deadline wakes this wait (see _work)
                wait = 0.25 if next_deadline is None else min(next_deadline, 0.25)
                run.wake_at = now + wait
                run.cond.wait(timeout=wait)
        return {fp: s.result for fp, s in run.slots.items() if s.result is not None}

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

    def _finalize(self, slot: _Slot, result: Result, run: _Run) -> bool:
        with slot.lock:
            if slot.result is not None:
                return False
            slot.result = result
        with run.cond:
            run.pending -= 1
            if not run.pending:
                run.cond.notify_all()
            ready = []
            for dependent in run.dependents.get(slot.fp, ()):
                deps = run.waiting_on[dependent]
                deps.discard(slot.fp)
                if not deps:
                    ready.append(dependent)
        for fp in ready:
            self._dispatch(fp, run)
        return True

    def _dispatch(self, fp: str, run: _Run) -> None:
        """Hand ``fp`` to a worker, or settle it here when a dependency already failed."""
        cause = self._dependency_failure(fp, run)
        if cause is not None:
            outcome = Outcome.skipped(f"depends on {cause}", depends_on=cause)
            outcome.skipped_by = cause
            self._finalize(run.slots[fp], self._result(fp, outcome, time.time(), 0.0), run)
            return
        _WORKERS.submit(lambda: self._work(fp, run))

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

    def _dependency_failure(self, fp: str, run: _Run) -> str | None:
        """The root cause, if one of this point's dependencies (all settled by now) is failing."""
        for dep in self.catalog[fp].depends_on:
            if dep in run.slots:
                dep_result = run.slots[dep].result
            else:
                dep_result = run.known.get(dep)
            if dep_result is None:
                continue
            if dep_result.status is Status.ERROR:
                return dep
            if dep_result.status is Status.SKIPPED and dep_result.outcome.skipped_by:
                return dep_result.outcome.skipped_by
        return None

    def _work(self, fp: str, run: _Run) -> None:
        slot = run.slots[fp]
        start_wall, start = time.time(), time.monotonic()
        me = threading.current_thread()
        with self._hung_lock:
            hung = self._hung.get(fp)
            if hung is not None and hung[0].is_alive() and hung[0] is not me:
                since = time.strftime("%H:%M:%SZ", time.gmtime(hung[1]))
                self._finalize(slot, self._result(fp, Outcome.check_fault(
                    CheckFault.HUNG, f"previous run has not returned since {since} (hung); not started again"),
                    start_wall, 0.0), run)
                return
            self._hung[fp] = (me, start_wall)
        with run.cond:
            slot.started = start
            if start + run.timeouts[fp] < run.wake_at:
                run.cond.notify_all()
        fn = self.checks.get(fp)
        token = _CURRENT_RUN.set(run.memo)
        try:
            outcome = self._outcome(fp, fn)
        finally:
            _CURRENT_RUN.reset(token)
            # the point may run again once this returns, whatever it raised
            with self._hung_lock:
                if self._hung.get(fp, (None,))[0] is me:
                    del self._hung[fp]
        self._finalize(slot, self._result(fp, outcome, start_wall, time.monotonic() - start), run)

    def _outcome(self, fp: str, fn: CheckFn | None) -> Outcome:
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
        return outcome
