"""The readiness log: one line per change of readiness in ``logs/failure_points.log``.

Operators and scripts written against the old system grep this file to learn when trading
stopped and why, so a missing line hides an outage and a rewritten file loses history: lines
are only ever appended, one per change (and one on the first complete evaluation).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..core.model import Readiness, Report, iso_utc

log = logging.getLogger("trading_readiness.exporter")


def format_line(report: Report) -> str:
    """``<iso UTC> | <READINESS> | Critical: n, Warnings: n | Critical FPs: FP-x.y, ...``."""
    data = report.to_json()
    critical = ", ".join(data["critical_fps"]) or "none"
    return (f"{iso_utc(report.timestamp)} | {report.readiness.name} | Critical: {data['critical_count']}, "
            f"Warnings: {data['warning_count']} | Critical FPs: {critical}")


class ReadinessLog:
    """Appends a line when the readiness differs from the last one this process logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: Readiness | None = None
        self._lock = threading.Lock()

    def record(self, report: Report) -> bool:
        """Append a line if the readiness changed; True when one was written.

        A write failure (disk full, permissions) is logged, never raised: the exporter must keep
        serving metrics, which is where the operator learns about the disk (FP-6.4).
        """
        with self._lock:
            if report.readiness is self.last:
                return False
            line = format_line(report)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            except OSError as exc:
                log.error("cannot append to the readiness log %s: %s", self.path, exc.strerror or exc)
                return False
            self.last = report.readiness
            return True
