"""The exporter's scheduler: every enabled check at its own interval, in the background.

The HTTP side only ever reads the snapshot kept here, so a scrape never waits on a check and a
hung broker call cannot slow ``/metrics``. Each due batch runs in its own thread through
``Engine.run(ids, known=latest)``, so a check that hangs until its timeout delays only its own
batch, and dependencies use the latest known results of points not in the batch.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..bot import funnel as funnel_mod
from ..bot.context import Context
from ..checks import registry
from ..core.audit import heal_status
from ..core.config import Config, ConfigError
from ..core.config import load as load_config
from ..core.engine import Engine
from ..core.model import Report, Result, Status
from . import affinity
from .readiness_log import ReadinessLog
from .watch import Watcher, pids_of

log = logging.getLogger("trading_readiness.exporter")

_HASH = re.compile(r"^pbkdf2_sha256\$[1-9][0-9]*\$(?:[0-9a-f]{2})+\$[0-9a-f]{64}$")


def exporter_config_problems(config: Config) -> list[str]:
    """What the generic config check cannot know about the exporter's own keys.

    A basic-auth hash in another format (bcrypt, as Prometheus' web config uses) would silently
    lock every scraper out, so it is refused at start and on reload.
    """
    exp = config["exporter"]
    problems: list[str] = []
    for user, stored in (exp["basic_auth_users"] or {}).items():
        if not isinstance(stored, str) or not _HASH.match(stored):
            problems.append(f"exporter.basic_auth_users.{user} in {config.source} is not a pbkdf2_sha256 hash "
                            "(make one with: python -m exporter.serve.server hash-password)")
    return problems


#: after a watched process exits, its point is checked this often until it is OK again (a
#: supervisor's restart is seen within a second, not at the next interval) ...
FOLLOW_UP_INTERVAL_SECONDS = 1.0
#: ... for at most this long; then its own interval again
FOLLOW_UP_SECONDS = 30.0


#: added to the longest chain of check timeouts: the funnel and the healer record are read after
#: the checks, and thread start-up is not free
FIRST_CYCLE_SLACK_SECONDS = 10.0


def first_cycle_bound(config: Config) -> float:
    """The longest a first evaluation of every enabled point can take, plus a safety margin.

    A point starts only once the points it depends on have a result, and each one turns ERROR at
    its own ``timeout_seconds``, so the worst case is the longest chain of dependent timeouts.
    """
    enabled = set(config.enabled_ids())
    chain: dict[str, float] = {}

    def longest(fp: str, seen: frozenset[str]) -> float:
        if fp not in chain:
            deps = [d for d in config.catalog[fp].depends_on if d in enabled and d not in seen]
            own = float(config.check_settings(fp)["timeout_seconds"])
            chain[fp] = own + max((longest(d, seen | {fp}) for d in deps), default=0.0)
        return chain[fp]

    return max((longest(fp, frozenset()) for fp in enabled), default=0.0) + FIRST_CYCLE_SLACK_SECONDS


#: the collector's young-generation threshold once the exporter runs (CPython's default: 700)
YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Keep what start-up and the first cycle built out of the collector's full passes, and
    collect the young generation less often.

    The modules, config, catalog, metrics and the state the checks keep between cycles live as
    long as the process; a full collection would otherwise walk all of them every few dozen
    cycles (tens of ms each). Garbage is collected first, so none of it is kept for good. Called
    once the first cycle has run, before the exporter listens.

    A cycle that meets a rewritten cache allocates a few thousand containers (the decoded
    tickers, the new log records), nearly all freed by reference counting when the cycle is
    done: at the default threshold they set off five or six young collections and half a
    middle one per cycle, 1.5-2 ms of CPU that found about eight objects in reference cycles
    (small closures). At :data:`YOUNG_THRESHOLD` the young generation's net growth rarely
    reaches it; such garbage is still collected, later (a few hundred small objects).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def is_check_fault(result: Result) -> bool:
    """True when the point is ERROR because its check broke, not because the bot is failing."""
    return result.status is Status.ERROR and result.outcome.fault is not None


@dataclass
class Snapshot:
    """What the HTTP side reads: an immutable view taken under the scheduler's lock."""

    config: Config
    enabled: list[str]
    intervals: dict[str, float]
    results: dict[str, Result]
    report: Report | None
    ready: bool
    check_errors: dict[str, int]
    cycle_duration: float | None
    reload_success: bool
    last_reload: float
    funnel: dict[str, Any] | None
    healing: dict[str, tuple[bool, bool]] = field(default_factory=dict)


class Scheduler:
    """Owns the Context/Engine and the latest results; thread-safe snapshots for readers."""

    def __init__(self, config: Config, config_file: str | None = None, bot_root: str | None = None,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._config_file = config_file
        self._bot_root = bot_root
        self._environ = environ
        self._clock = clock
        self._lock = threading.Lock()
        #: notified once a batch has stored its results and logged what they changed
        self._evaluated = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: set[str] = set()
        self._latest: dict[str, Result] = {}
        #: points whose latest result is stored and logged (what wait_evaluated waits for)
        self._settled: set[str] = set()
        self._next_due: dict[str, float] = {}
        self._check_errors: dict[str, int] = {}
        self._cycle_duration: float | None = None
        self._reload_success = True
        self._last_reload = time.time()
        self._funnel: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        #: points asked for again while their batch ran (they run once more right after it)
        self._again: set[str] = set()
        #: point -> until when it is re-checked every FOLLOW_UP_INTERVAL_SECONDS while not OK
        self._follow: dict[str, float] = {}
        #: process exits and finished heals trigger re-checks (see exporter/serve/watch.py)
        self.watcher = Watcher(self.recheck, self._audit_path(config))
        #: bumped on every change a scrape could see, so the server can reuse an exposition
        self.generation = 0
        self.readiness_log = ReadinessLog(config.path("readiness_log"))
        self._install(config)

    # configuration -------------------------------------------------------------------------
    def _dotenv_signature(self, config: Config) -> tuple[int, int, int] | None:
        try:
            st = (config.bot_root / ".env").stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _dotenv_changed(self) -> bool:
        """The bot's .env was edited (a key replaced, a limit changed): the checks must judge the
        new values, as the bot will on its next start, not the ones read when we started."""
        with self._lock:
            config, seen = self.config, self._dotenv
        return self._dotenv_signature(config) != seen

    def _install(self, config: Config) -> None:
        self._dotenv = self._dotenv_signature(config)
        ctx = Context(config, environ=self._environ, clock=self._clock)
        engine = Engine(ctx, registry())
        old = getattr(self, "engine", None)
        if old is not None:
            # a check thread of the old engine that is still hung must not be started twice
            engine._hung = old._hung
            engine._hung_lock = old._hung_lock
        enabled = config.enabled_ids()
        with self._lock:
            self.config, self.ctx, self.engine = config, ctx, engine
            self.enabled = enabled
            self.intervals = {fp: float(config.check_settings(fp)["interval_seconds"]) for fp in enabled}
            self._latest = {fp: r for fp, r in self._latest.items() if fp in enabled}
            self._settled &= set(enabled)
            for fp in set(self._check_errors) - set(enabled):
                self._check_errors.pop(fp, None)
            for fp in enabled:
                self._check_errors.setdefault(fp, 0)
            now = time.monotonic()
            self._next_due = {fp: now for fp in enabled}
            self.readiness_log.path = config.path("readiness_log")
            self.generation += 1
        if hasattr(self, "watcher"):
            self.watcher.set_audit_file(self._audit_path(config))
        self._wake.set()

    @staticmethod
    def _audit_path(config: Config) -> Any:
        try:
            return config.resolve(config["healer"]["audit_file"])
        except (KeyError, TypeError):
            return None

    def reload(self) -> bool:
        """Re-read the config; a bad one keeps the running config and says so (gauge and log)."""
        try:
            config = load_config(self._config_file, self._bot_root)
            problems = exporter_config_problems(config)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            with self._lock:
                self._reload_success = False
                self._last_reload = time.time()
                self.generation += 1
            log.error("config reload failed, keeping the running config: %s", self.ctx.redact(str(exc)))
            return False
        one_cpu = self.config["exporter"]["one_cpu"]
        self._install(config)
        if config["exporter"]["one_cpu"] != one_cpu:
            affinity.apply(config["exporter"]["one_cpu"])
        with self._lock:
            self._reload_success = True
            self._last_reload = time.time()
            self.generation += 1
        log.info("config reloaded from %s (%d checks enabled)", config.source, len(self.enabled))
        return True

    # running -------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        self.watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.watcher.stop()

    def recheck(self, fps: Iterable[str], why: str = "asked") -> list[str]:
        """Run ``fps`` and every point depending on them now instead of at their next interval;
        returns the points scheduled. A point whose check is running runs again right after it.
        Each keeps being checked every FOLLOW_UP_INTERVAL_SECONDS while it is not OK, for at most
        FOLLOW_UP_SECONDS: what follows an exit (a restart) is seen as soon as it happens."""
        now = time.monotonic()
        with self._lock:
            catalog, enabled = self.config.catalog, set(self.enabled)
            todo, targets = [fp for fp in fps if fp in enabled], []
            while todo:
                fp = todo.pop()
                if fp in targets:
                    continue
                targets.append(fp)
                todo.extend(d for d in catalog.dependents(fp) if d in enabled)
            for fp in targets:
                if fp in self._inflight:
                    self._again.add(fp)
                else:
                    self._next_due[fp] = now
                self._follow[fp] = now + FOLLOW_UP_SECONDS
        if targets:
            log.info("re-checking %s now: %s", ", ".join(sorted(targets)), why)
            self._wake.set()
        return targets

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._dotenv_changed():
                log.info("%s changed: re-reading the bot's environment", self.config.bot_root / ".env")
                self._install(self.config)
            now = time.monotonic()
            with self._lock:
                due = [fp for fp in self.enabled if fp not in self._inflight and self._next_due.get(fp, now) <= now]
                self._inflight.update(due)
                waiting = [t for fp, t in self._next_due.items() if fp not in self._inflight and fp not in due]
            if due:
                threading.Thread(target=self._run_batch, args=(due,), name="batch", daemon=True).start()
            # sleep until the next point is due or something (a finished batch, a reload) wakes us
            delay = max(0.05, min(waiting) - time.monotonic()) if waiting else 1.0
            self._wake.wait(timeout=min(delay, 5.0))
            self._wake.clear()

    def _run_batch(self, ids: list[str]) -> None:
        started = time.monotonic()
        try:
            with self._lock:
                engine, ctx, config, known = self.engine, self.ctx, self.config, dict(self._latest)
            try:
                engine.healing = heal_status(config.resolve(config["healer"]["audit_file"]))
            except Exception as exc:  # the healer's record is optional context, never fatal
                log.warning("cannot read the healer audit file: %s", ctx.redact(str(exc)))
            results = engine.run(ids, known=known)
            fun = self._compute_funnel(ctx)
        except Exception as exc:  # defensive: the scheduler thread must survive anything
            log.error("check batch failed: %s", type(exc).__name__)
            results, fun = {}, None
        duration = time.monotonic() - started
        with self._lock:
            if engine is self.engine:
                self._latest.update(results)
            for fp, r in results.items():
                if is_check_fault(r) and fp in self._check_errors:
                    self._check_errors[fp] += 1
            now = time.monotonic()
            for fp in ids:
                self._inflight.discard(fp)
                if fp in self.intervals:
                    self._next_due[fp] = started + self.intervals[fp] if now < started + self.intervals[fp] else now
                    result = results.get(fp)
                    follow = self._follow.get(fp)
                    if fp in self._again:
                        self._again.discard(fp)
                        self._next_due[fp] = now
                    elif follow is not None and (now >= follow or (result is not None and result.status is Status.OK)):
                        del self._follow[fp]
                    elif follow is not None:
                        self._next_due[fp] = min(self._next_due[fp], now + FOLLOW_UP_INTERVAL_SECONDS)
            self._cycle_duration = duration
            if fun is not None:
                self._funnel = fun
            self.generation += 1
            report = self._report_locked()
        if report is not None and self.readiness_log.record(report):
            log.info("readiness %s (critical: %s)", report.readiness.name,
                     ", ".join(report.ids_with(Status.ERROR)) or "none")
        for fp, r in results.items():
            if is_check_fault(r):
                log.warning("%s check fault: %s", fp, r.outcome.message)
            if engine is self.engine:
                # an OK point's processes are watched: their exit re-checks it at once
                self.watcher.watch(fp, pids_of(r.outcome.details) if r.status is Status.OK else ())
        with self._lock:
            # after the batch's own log lines, so a waiter's next line ("serving") follows them
            if engine is self.engine:
                self._settled.update(fp for fp in results if fp in self.intervals)
            self._evaluated.notify_all()
        self._wake.set()

    def _compute_funnel(self, ctx: Context) -> dict[str, Any] | None:
        if funnel_mod is None or not hasattr(funnel_mod, "compute"):
            return None
        try:
            return funnel_mod.compute(ctx)  # type: ignore[no-any-return]
        except Exception as exc:  # the page falls back to the funnel observations
            log.warning("funnel unavailable: %s", ctx.redact(f"{type(exc).__name__}: {exc}"))
            return None

    def _report_locked(self) -> Report | None:
        if not self._latest:
            return None
        complete = all(fp in self._latest for fp in self.enabled)
        if not complete:
            return None
        return Report.build(dict(self._latest), int(self.config["readiness"]["max_warnings"]), time.time())

    def _pending_locked(self) -> list[str]:
        return [fp for fp in self.enabled if fp not in self._settled]

    def pending(self) -> list[str]:
        """Enabled points whose first result is not stored and logged yet."""
        with self._lock:
            return self._pending_locked()

    def wait_evaluated(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds until every enabled point has a result; the still pending ones.

        A hung check turns ERROR at its own timeout, so this ends by itself once the slowest chain
        of dependent checks has had its timeouts (``first_cycle_bound``).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                pending = self._pending_locked()
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0:
                    return pending
                self._evaluated.wait(remaining)

    # reading -------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            report = self._report_locked()
            return Snapshot(
                config=self.config, enabled=list(self.enabled), intervals=dict(self.intervals),
                results=dict(self._latest), report=report, ready=report is not None,
                check_errors=dict(self._check_errors), cycle_duration=self._cycle_duration,
                reload_success=self._reload_success, last_reload=self._last_reload, funnel=self._funnel,
                healing=dict(self.engine.healing))

    def api_json(self) -> dict[str, Any]:
        """CONTRACT JSON of the latest results plus the funnel and which points are pending."""
        snap = self.snapshot()
        results = snap.results
        report = snap.report or Report.build(results, int(snap.config["readiness"]["max_warnings"]), time.time())
        data = report.to_json()
        if snap.report is None:
            # not every check has run yet: an honest "not known", never a READY built from a subset
            data.update(readiness="UNKNOWN", color="grey")
        for fp, entry in data["failure_points"].items():
            attempted, success = snap.healing.get(fp, (entry["self_healing_attempted"], entry["self_healing_success"]))
            entry["self_healing_attempted"], entry["self_healing_success"] = attempted, success
        data["pending_fps"] = [fp for fp in snap.enabled if fp not in results]
        data["ready"] = snap.ready
        data["funnel"] = snap.funnel
        data["observations"] = {
            fp: [{"name": o.name, "value": o.value, "labels": dict(o.labels)} for o in r.outcome.observations]
            for fp, r in results.items() if r.outcome.observations}
        return data
