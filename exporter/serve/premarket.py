"""Pre-market verification: run ``verify`` a configured time before every session open.

A verification that runs at a fixed wall-clock time checks on holidays, misses the open after
a long weekend by a day, or runs while the market is already open after a half day, so the
schedule comes from the broker: the session opens in ``/v2/calendar`` (holidays and half days
are the broker's) and ``next_open`` of ``/v2/clock``. The run for a session is due at
``open - exporter.premarket_verify_offset_seconds`` and runs once per session.

Only when the broker answers neither is the next open computed from regular America/New_York
hours (no holidays); the schedule then says ``source="local"`` so nobody mistakes it for the
broker's word, and a run on a holiday is harmless while a missed run before an open is not.

``PremarketVerifier`` is the exporter's part: a daemon thread that runs the verification when
it is due and exports ``trading_verification_last_run_timestamp_seconds`` and
``trading_verification_last_status`` (0 READY, 1 DEGRADED, 2 BLOCKED, 3 UNKNOWN, as the exit
code of ``verify``). It also follows the record file, so a run of the systemd timer's
``verify`` counts as the last run too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..bot import market
from ..bot.broker import BrokerError
from ..bot.context import Context
from ..core.fields import decimal

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger("trading_readiness.exporter")

#: how far ahead the calendar is read: longer than any closure in the exchange's history
CALENDAR_DAYS = 14
#: the runner re-plans at least this often, so a reload or a corrected broker clock is followed
REPLAN_SECONDS = 300.0
#: after a failed attempt to plan (broker and calendar both failing is impossible: the local
#: fallback always answers) or a verification that raised, wait this long before trying again
RETRY_SECONDS = 60.0


class ScheduleError(Exception):
    """The next session open cannot be determined."""


@dataclass(frozen=True)
class PlannedRun:
    """The verification for the session opening at ``session_open``, due at ``run_at``."""

    run_at: datetime
    session_open: datetime
    source: str  # "broker" (clock and/or calendar) or "local" (regular NY hours, no holidays)

    def to_json(self) -> dict[str, Any]:
        return {"run_at": self.run_at.isoformat(), "session_open": self.session_open.isoformat(),
                "source": self.source}


def _parse_hhmm(value: Any) -> dtime | None:
    text = str(value or "").strip()
    if ":" not in text and len(text) == 4 and decimal(text, 4) is not None:
        text = f"{text[:2]}:{text[2:]}"  # Alpaca's session_open style "0930"
    try:
        return dtime.fromisoformat(text)
    except ValueError:
        return None


def calendar_opens(calendar: Any) -> list[datetime]:
    """Session opens (aware UTC) of a ``/v2/calendar`` answer; malformed entries are skipped."""
    opens: list[datetime] = []
    if not isinstance(calendar, list):
        return opens
    for entry in calendar:
        if not isinstance(entry, dict):
            continue
        try:
            day = date.fromisoformat(str(entry.get("date", ""))[:10])
        except ValueError:
            continue
        at = _parse_hhmm(entry.get("open"))
        if at is not None:
            opens.append(datetime.combine(day, at, market.NY).astimezone(UTC))
    return sorted(opens)


class PremarketSchedule:
    """When the next pre-market verification is due, from the broker's clock and calendar.

    ``now`` is always passed in (aware), so tests drive the schedule with a controlled clock.
    Broker answers are memoised by the context (``market.clock_cache_seconds`` and
    ``market.calendar_cache_seconds``), so asking often costs nothing.
    """

    def __init__(self, ctx: Context, offset_seconds: float | None = None) -> None:
        self.ctx = ctx
        cfg_offset = ctx.config["exporter"]["premarket_verify_offset_seconds"]
        self.offset = timedelta(seconds=float(cfg_offset if offset_seconds is None else offset_seconds))

    def _broker_opens(self, now: datetime) -> tuple[list[datetime], list[str]]:
        mcfg = self.ctx.config["market"]
        opens: set[datetime] = set()
        problems: list[str] = []
        try:
            clock = self.ctx.broker_get("/clock", ttl=float(mcfg["clock_cache_seconds"]))
            nxt = market.parse_ts(clock.get("next_open")) if isinstance(clock, dict) else None
            if nxt is None:
                problems.append("the broker clock has no next_open")
            else:
                opens.add(nxt)
        except BrokerError as exc:
            problems.append(f"clock: {exc}")
        start = now.astimezone(market.NY).date()
        try:
            cal = self.ctx.broker_get(
                "/calendar", {"start": start.isoformat(), "end": (start + timedelta(days=CALENDAR_DAYS)).isoformat()},
                ttl=float(mcfg["calendar_cache_seconds"]))
            opens.update(calendar_opens(cal))
        except BrokerError as exc:
            problems.append(f"calendar: {exc}")
        # clock and calendar should agree; if they do not, the earliest open wins so a
        # disagreement can make the run early, never late
        return sorted(opens), problems

    def upcoming(self, now: datetime) -> tuple[list[datetime], str]:
        """Session opens after ``now`` (sorted) and where they come from."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        opens, problems = self._broker_opens(now)
        later = [o for o in opens if o > now]
        if later:
            return later, "broker"
        if opens or not problems:
            problems.append(f"no session open after {now.isoformat()} in the broker's clock or calendar")
        log.warning("pre-market schedule from regular New York hours (no holidays): %s",
                    self.ctx.redact("; ".join(problems)))
        local = market.local_session(now, 0.0).next_open
        if local is None:  # pragma: no cover - local_session always names the next open
            raise ScheduleError("; ".join(problems))
        return [local], "local"

    def next_open(self, now: datetime) -> datetime:
        """The next session open strictly after ``now``."""
        return self.upcoming(now)[0][0]

    def plan(self, now: datetime, last_run: datetime | None = None) -> PlannedRun:
        """The next run that has not happened yet: possibly already due (``run_at <= now``).

        The run for the session opening at O is due from O - offset until O. A ``last_run`` at
        or after O - offset means that session's run happened (here or by the systemd timer).
        """
        opens, source = self.upcoming(now)
        for session_open in opens:
            run_at = session_open - self.offset
            if last_run is None or last_run < run_at:
                return PlannedRun(run_at, session_open, source)
        # every known open in the window is covered: the next one lies beyond the calendar
        after = self.upcoming(opens[-1])[0][0]
        return PlannedRun(after - self.offset, after, source)

    def next_run(self, now: datetime, last_run: datetime | None = None) -> datetime:
        """When the next verification is due (at or before ``now`` when it is due now)."""
        return self.plan(now, last_run).run_at

    def due(self, now: datetime, last_run: datetime | None) -> bool:
        """True when the verification for the upcoming session should run now."""
        return self.plan(now, last_run).run_at <= now


# --- the exporter's runner ---------------------------------------------------------------------
@dataclass(frozen=True)
class LastRun:
    started: float
    status: int  # the exit code of verify: 0 READY, 1 DEGRADED, 2 BLOCKED, 3 UNKNOWN
    origin: str  # "exporter" or "record" (found in the record file, e.g. the systemd timer's run)


def read_record(path: Path) -> LastRun | None:
    """The last run from ``data/trading_verification_latest.json``; None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        started = market.parse_ts(data["verification"]["started"])
        status = int(data["exit_code"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if started is None or status not in (0, 1, 2, 3):
        return None
    return LastRun(started.timestamp(), status, "record")


class PremarketVerifier(Collector):
    """Daemon thread of the exporter: verify before each open; a collector for its two gauges.

    Reads the scheduler's current config and context every time it plans, so a reload (a new
    offset, another broker URL) takes effect at the next plan. ``verify`` runs in this thread,
    never in a request or in the check scheduler's threads.
    """

    def __init__(self, scheduler: Scheduler, clock: Callable[[], float] = time.time,
                 run: Callable[[Any], int] | None = None) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self._run = run or run_verify_once
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: LastRun | None = None
        self._record_mtime: float | None = None
        self._planned: PlannedRun | None = None
        self.runs = 0  # verifications this process ran (for the log and tests)

    # state ------------------------------------------------------------------------------------
    @property
    def last(self) -> LastRun | None:
        with self._lock:
            return self._last

    @property
    def planned(self) -> PlannedRun | None:
        with self._lock:
            return self._planned

    def _record_path(self) -> Path:
        from ..tools.verify import LATEST
        return self.scheduler.config.path("verification_dir") / LATEST

    def _follow_record(self) -> None:
        """Take the record file's run when it is newer (e.g. written by the systemd timer)."""
        path = self._record_path()
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._record_mtime:
            return
        self._record_mtime = mtime
        found = read_record(path)
        with self._lock:
            if found is not None and (self._last is None or found.started > self._last.started):
                self._last = found

    # running ----------------------------------------------------------------------------------
    def start(self) -> PremarketVerifier:
        self._thread = threading.Thread(target=self._loop, name="premarket-verify", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> float:
        """Plan, run the verification when due; returns how long to wait before the next step."""
        self._follow_record()
        now_ts = self.clock()
        now = datetime.fromtimestamp(now_ts, UTC)
        last = self.last
        last_dt = datetime.fromtimestamp(last.started, UTC) if last is not None else None
        try:
            plan = PremarketSchedule(self.scheduler.ctx).plan(now, last_dt)
        except (ScheduleError, ValueError) as exc:
            log.error("pre-market verification cannot be scheduled: %s", exc)
            return RETRY_SECONDS
        with self._lock:
            previous, self._planned = self._planned, plan
        if plan.run_at > now and (previous is None or previous.run_at != plan.run_at):
            log.info("next pre-market verification at %s for the session opening %s (%s schedule)",
                     plan.run_at.isoformat(), plan.session_open.isoformat(), plan.source)
        if plan.run_at > now:
            return max(1.0, min(REPLAN_SECONDS, (plan.run_at - now).total_seconds()))
        log.info("pre-market verification for the session opening %s (%s schedule)",
                 plan.session_open.isoformat(), plan.source)
        started = self.clock()
        try:
            status = int(self._run(self.scheduler.config))
        except Exception as exc:  # the runner thread must survive a broken verification
            log.error("pre-market verification failed: %s", self.scheduler.ctx.redact(f"{type(exc).__name__}: {exc}"))
            status = 3
        last = LastRun(started, status, "exporter")
        try:
            # the run covers this session: the exported next run moves to the following one now
            after = PremarketSchedule(self.scheduler.ctx).plan(
                datetime.fromtimestamp(self.clock(), UTC), datetime.fromtimestamp(started, UTC))
        except (ScheduleError, ValueError):
            after = None
        with self._lock:
            self._last, self._planned = last, after
            self.runs += 1
        log.info("pre-market verification finished with exit code %d%s", status,
                 f"; next at {after.run_at.isoformat()}" if after is not None else "")
        return 1.0

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception as exc:  # defensive: never let the thread die silently
                log.error("pre-market runner: %s", type(exc).__name__)
                delay = RETRY_SECONDS
            self._stop.wait(delay)

    # metrics ----------------------------------------------------------------------------------
    def state_key(self) -> tuple[LastRun | None, PlannedRun | None]:
        """What :meth:`collect` yields depends on, and nothing else: the exporter re-renders these
        families only when it changes."""
        with self._lock:
            return self._last, self._planned

    def describe(self) -> Iterable[Metric]:
        return list(families(None, None))

    def collect(self) -> Iterator[Metric]:
        yield from families(self.last, self.planned)


def families(last: LastRun | None, planned: PlannedRun | None) -> list[Metric]:
    ts = GaugeMetricFamily("trading_verification_last_run_timestamp_seconds",
                           "When the last verification (pre-market run or verify) started; absent until one ran.")
    status = GaugeMetricFamily("trading_verification_last_status",
                               "Outcome of the last verification as verify's exit code: 0 READY, 1 DEGRADED, "
                               "2 BLOCKED, 3 UNKNOWN; absent until one ran.")
    nxt = GaugeMetricFamily("trading_verification_next_run_timestamp_seconds",
                            "When the next pre-market verification is due (session open minus the offset).")
    if last is not None:
        ts.add_metric([], last.started)
        status.add_metric([], last.status)
    if planned is not None:
        nxt.add_metric([], planned.run_at.timestamp())
    return [ts, status, nxt]


def run_verify_once(cfg: Any) -> int:
    """One full verification with its record files, as ``trading-readiness verify`` does."""
    from ..core.model import Readiness
    from ..tools.verify import run_verification, write_record

    v = run_verification(cfg)
    try:
        write_record(cfg, v.record())
    except OSError as exc:
        log.error("cannot write the verification record: %s", exc.strerror or exc)
        if v.readiness is Readiness.READY:
            return Readiness.UNKNOWN.exit_code
    log.log(logging.INFO if v.readiness is Readiness.READY else logging.WARNING, "verification: %s%s",
            v.readiness.name, (" - " + "; ".join(v.reasons)) if v.reasons else "")
    return v.readiness.exit_code
