"""Statuses, check outcomes and the readiness verdict.

The verdict logic lives here once; the PromQL recording rule is generated to mirror it and a
property test proves the two agree.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class Status(enum.Enum):
    """State of one failure point. ``value`` is the gauge value CONTRACT.md fixes."""

    OK = 0
    WARN = 1
    ERROR = 2
    SKIPPED = -1


class Readiness(enum.Enum):
    READY = 0
    DEGRADED = 1
    BLOCKED = 2
    UNKNOWN = 3

    @property
    def color(self) -> str:
        return {0: "green", 1: "yellow", 2: "red"}.get(self.value, "grey")

    @property
    def exit_code(self) -> int:
        """Nagios plugin convention: 0 READY, 1 DEGRADED, 2 BLOCKED, 3 UNKNOWN."""
        return self.value


class CheckFault(enum.Enum):
    """Why a point is ERROR because its check broke, not because the bot is failing.

    Set by the engine on the outcome it makes in the check's place; the exporter counts these
    (``trading_exporter_check_errors_total``) as its own faults.
    """

    RAISED = "raised"
    TIMED_OUT = "timed_out"
    HUNG = "hung"
    BAD_RETURN = "bad_return"
    UNREGISTERED = "unregistered"


@dataclass(frozen=True)
class Observation:
    """A measured value a check exports as a named gauge (base units, bounded labels)."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    """What a check returns: a status, a one-line reason and structured details."""

    status: Status
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    #: set when SKIPPED because a failure point this one depends on is failing.
    skipped_by: str | None = None
    #: set (by the engine) when ERROR because the check itself raised, hung, timed out or is missing
    fault: CheckFault | None = None

    @classmethod
    def ok(cls, message: str = "", **details: Any) -> Outcome:
        return cls(Status.OK, message, details)

    @classmethod
    def warn(cls, message: str, **details: Any) -> Outcome:
        return cls(Status.WARN, message, details)

    @classmethod
    def error(cls, message: str, **details: Any) -> Outcome:
        return cls(Status.ERROR, message, details)

    @classmethod
    def skipped(cls, message: str, **details: Any) -> Outcome:
        return cls(Status.SKIPPED, message, details)

    @classmethod
    def check_fault(cls, fault: CheckFault, message: str) -> Outcome:
        """ERROR because the check broke (``fault`` says how), never because of the bot."""
        return cls(Status.ERROR, message, fault=fault)

    def observe(self, name: str, value: float | int | bool | None, **labels: str) -> Outcome:
        """Record a gauge value; ``None`` or non-finite values are dropped, never exported as 0."""
        if value is None:
            return self
        try:
            v = float(value)
        except OverflowError:  # an int beyond float range (a sum of absurd counts from a corrupt log)
            return self
        if math.isfinite(v):
            self.observations.append(Observation(name, v, tuple(sorted(labels.items()))))
        return self


@dataclass
class Result:
    """One evaluated failure point, as the JSON API and the metrics show it."""

    fp: str
    name: str
    category: str
    outcome: Outcome
    last_check: float
    duration_seconds: float
    self_healing_attempted: bool = False
    self_healing_success: bool = False

    @property
    def status(self) -> Status:
        return self.outcome.status

    def to_json(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "id": self.fp,
            "name": self.name,
            "category": self.category,
            "status": o.status.name,
            "last_check": round(self.last_check, 3),
            "last_error": o.message if o.status is not Status.OK else None,
            "message": o.message,
            "self_healing_attempted": self.self_healing_attempted,
            "self_healing_success": self.self_healing_success,
            "duration_seconds": round(self.duration_seconds, 4),
            "details": json_finite(o.details),
        }


def json_finite(value: Any) -> Any:
    """NaN and infinities become null, as JSON.stringify does: they are not JSON (RFC 8259), and
    one such value from the bot's files or environment would make jq or a browser reject the
    whole result."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_finite(v) for v in value]
    return value


def verdict(statuses: list[Status], max_warnings: int) -> Readiness:
    """BLOCKED if any ERROR; DEGRADED if more than ``max_warnings`` WARN; else READY."""
    if any(s is Status.ERROR for s in statuses):
        return Readiness.BLOCKED
    if sum(1 for s in statuses if s is Status.WARN) > max_warnings:
        return Readiness.DEGRADED
    return Readiness.READY


def iso_utc(ts: float) -> str:
    """ISO-8601 UTC; a timestamp no calendar can hold (1e308 or -1e18 from a corrupt file) is
    shown as the number itself, so the message naming the bad value is not lost to an exception."""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} (not a valid time)" if isinstance(ts, (int, float)) else f"{ts!r} (not a valid time)"


@dataclass
class Report:
    """All results of one evaluation plus the verdict (CONTRACT.md JSON shape)."""

    results: dict[str, Result]
    readiness: Readiness
    timestamp: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, results: dict[str, Result], max_warnings: int, timestamp: float) -> Report:
        ordered = dict(sorted(results.items(), key=lambda kv: fp_sort_key(kv[0])))
        return cls(ordered, verdict([r.status for r in ordered.values()], max_warnings), timestamp)

    def ids_with(self, status: Status) -> list[str]:
        return [fp for fp, r in self.results.items() if r.status is status]

    def to_json(self) -> dict[str, Any]:
        critical = self.ids_with(Status.ERROR)
        warnings = self.ids_with(Status.WARN)
        data: dict[str, Any] = {
            "readiness": self.readiness.name,
            "color": self.readiness.color,
            "critical_count": len(critical),
            "warning_count": len(warnings),
            "total_checked": sum(1 for r in self.results.values() if r.status is not Status.SKIPPED),
            "total_failure_points": len(self.results),
            "timestamp": iso_utc(self.timestamp),
            "critical_fps": critical,
            "warning_fps": warnings,
            "skipped_fps": self.ids_with(Status.SKIPPED),
            "failure_points": {fp: r.to_json() for fp, r in self.results.items()},
        }
        data.update(self.extra)
        return data


def fp_sort_key(fp: str) -> tuple[int, int]:
    """FP-1.10 sorts after FP-1.9."""
    try:
        major, minor = fp.removeprefix("FP-").split(".", 1)
        return int(major), int(minor)
    except ValueError:
        return (999, 999)
