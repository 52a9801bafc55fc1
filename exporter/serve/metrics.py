"""The exposition: a custom collector that turns the scheduler's snapshot into metric families.

``collect()`` does no I/O and never waits on a check: it reads the snapshot the scheduler keeps.
``describe()`` is given so registering the collector does not call ``collect()``. ``serve``
listens only once every enabled point has been evaluated, so the first scrape already has every
family for every point. A point enabled later by a reload has no status, last check or duration
until its first run, and readiness is absent meanwhile: a value before that would be a guess.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .. import __version__
from ..core.catalog import Catalog
from ..core.model import Status
from .scheduler import Scheduler, Snapshot

log = logging.getLogger("trading_readiness.exporter")

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: bounds that keep a misbehaving check from exploding the series count
MAX_SERIES_PER_OBSERVATION = 64
MAX_LABEL_VALUE_CHARS = 64

_FIRST = "present from the first scrape; absent for a point enabled by a reload until its first run"
CORE: dict[str, str] = {
    "trading_failure_point_status": f"State of the failure point: 0 OK, 1 WARN, 2 ERROR, -1 SKIPPED ({_FIRST}).",
    "trading_failure_point_info": "Static facts of the failure point (name, category, configured healer); always 1.",
    "trading_failure_point_last_check_timestamp_seconds": f"When the failure point was last evaluated ({_FIRST}).",
    "trading_failure_point_check_duration_seconds": "How long the last evaluation of the failure point took "
                                                    f"({_FIRST}).",
    "trading_failure_point_interval_seconds": "How often the exporter evaluates the failure point.",
    "trading_readiness_status": "Readiness: 0 READY, 1 DEGRADED, 2 BLOCKED (present from the first scrape; absent "
                                "while a point enabled by a reload has not run yet).",
    "trading_readiness_max_warnings": "readiness.max_warnings: more WARN points than this is DEGRADED.",
    "trading_exporter_check_errors": "Checks that raised, timed out or hung (an exporter fault, not a bot fault).",
    "trading_exporter_cycle_duration_seconds": "Duration of the last batch of checks.",
    "trading_exporter_config_reload_success": "1 when the last config (re)load succeeded, 0 when the running "
                                              "config was kept because the new one is invalid.",
    "trading_exporter_config_last_reload_timestamp_seconds": "When the config was last (re)loaded or tried.",
    "trading_exporter_build_info": "Build of the exporter; always 1.",
    "trading_exporter_ready": "1 once every enabled check has run at least once (0 while a point enabled by a "
                              "reload has not run yet).",
}
#: label names of the CORE families that have labels
CORE_LABELS: dict[str, tuple[str, ...]] = {
    "trading_failure_point_status": ("fp", "category"),
    "trading_failure_point_info": ("fp", "name", "category", "healer"),
    "trading_failure_point_last_check_timestamp_seconds": ("fp",),
    "trading_failure_point_check_duration_seconds": ("fp",),
    "trading_failure_point_interval_seconds": ("fp",),
    "trading_exporter_check_errors": ("fp",),
    "trading_exporter_build_info": ("version",),
}
#: CORE families that are counters (exposed with ``_total``); every other one is a gauge
CORE_COUNTERS = frozenset({"trading_exporter_check_errors"})


def _core(name: str, value: float | None = None) -> GaugeMetricFamily | CounterMetricFamily:
    kind = CounterMetricFamily if name in CORE_COUNTERS else GaugeMetricFamily
    labels = list(CORE_LABELS.get(name, ()))
    if value is not None:
        return kind(name, CORE[name], value=value)
    return kind(name, CORE[name], labels=labels) if labels else kind(name, CORE[name])


def observation_help(catalog: Catalog) -> dict[str, str]:
    """name -> help text from the catalog's ``observations`` lists (first declaration wins)."""
    helps: dict[str, str] = {}
    for point in catalog:
        for obs in point.observations:
            name = str(obs.get("name", ""))
            if name and name not in helps:
                helps[name] = str(obs.get("help") or f"Observed by {point.id}.")
    return helps


class SnapshotCollector(Collector):
    """Builds every family from one snapshot, so a scrape is consistent and never blocks."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> Iterable[Metric]:
        return [_core(name) for name in CORE]

    def collect(self) -> Iterator[Metric]:
        yield from families(self.scheduler.snapshot())


def families(snap: Snapshot) -> list[Metric]:
    cfg = snap.config
    cat = cfg.catalog
    status, info = _core("trading_failure_point_status"), _core("trading_failure_point_info")
    last = _core("trading_failure_point_last_check_timestamp_seconds")
    dur = _core("trading_failure_point_check_duration_seconds")
    interval = _core("trading_failure_point_interval_seconds")
    errors = _core("trading_exporter_check_errors")
    healers = cfg["healers"]
    for fp in snap.enabled:
        point = cat[fp]
        healer = point.healer if fp in healers and healers[fp].get("enabled", True) else ""
        info.add_metric([fp, point.name, point.category, str(healer or "")], 1)
        interval.add_metric([fp], snap.intervals[fp])
        errors.add_metric([fp], snap.check_errors.get(fp, 0))
        r = snap.results.get(fp)
        if r is not None:
            status.add_metric([fp, point.category], r.status.value)
            last.add_metric([fp], r.last_check)
            dur.add_metric([fp], r.duration_seconds)
    out: list[Metric] = [status, info, last, dur, interval]
    readiness = _core("trading_readiness_status")
    if snap.report is not None:
        readiness.add_metric([], snap.report.readiness.value)
    out.append(readiness)
    out.append(_core("trading_readiness_max_warnings", int(cfg["readiness"]["max_warnings"])))
    out.append(errors)
    cycle = _core("trading_exporter_cycle_duration_seconds")
    if snap.cycle_duration is not None:
        cycle.add_metric([], snap.cycle_duration)
    out.append(cycle)
    out.append(_core("trading_exporter_config_reload_success", int(snap.reload_success)))
    out.append(_core("trading_exporter_config_last_reload_timestamp_seconds", snap.last_reload))
    build = _core("trading_exporter_build_info")
    build.add_metric([__version__], 1)
    out.append(build)
    out.append(_core("trading_exporter_ready", int(snap.ready)))
    try:
        out.extend(observation_families(snap))
    except Exception as exc:  # check-provided data must never break the scrape of every other series
        log.error("observation gauges left out of this scrape: %s", type(exc).__name__)
    return out


def observation_families(snap: Snapshot) -> list[Metric]:
    """One gauge per observation name; the first point to report a label set wins.

    Label names are the union over the family (missing ones exported empty) so the family is
    well-formed even if two checks label one observation differently.
    """
    helps = observation_help(snap.config.catalog)
    series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fp in snap.enabled:
        r = snap.results.get(fp)
        if r is None or r.status is Status.SKIPPED and not r.outcome.observations:
            continue
        for o in r.outcome.observations:
            if not _NAME.match(o.name) or o.name in CORE or not o.name.startswith("trading_"):
                continue
            labels = tuple((k, str(v)[:MAX_LABEL_VALUE_CHARS]) for k, v in o.labels if _LABEL.match(k))
            fam = series.setdefault(o.name, {})
            if labels not in fam and len(fam) < MAX_SERIES_PER_OBSERVATION:
                fam[labels] = o.value
    out: list[Metric] = []
    for name in sorted(series):
        names = sorted({k for labels in series[name] for k, _ in labels})
        g = GaugeMetricFamily(name, helps.get(name, "Observation recorded by a check."), labels=names)
        for labels, value in series[name].items():
            d = dict(labels)
            g.add_metric([d.get(k, "") for k in names], value)
        out.append(g)
    return out


def make_registry(scheduler: Scheduler) -> CollectorRegistry:
    """Our own registry (not the process-global one): only the snapshot collector."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(scheduler))
    return registry


class _Isolated(Collector):
    """A collector that, when it raises, is left out of the scrape instead of failing all of it.

    client_python's registry does not isolate collectors: one exception fails the whole
    exposition, so a bug in an add-on (say the pre-market verifier) would blank every failure
    point in Prometheus.
    """

    def __init__(self, inner: Collector) -> None:
        self.inner = inner
        self.name = type(inner).__name__

    def describe(self) -> Iterable[Metric]:
        describe = getattr(self.inner, "describe", None)
        # without describe() the registry would learn the names from collect(); do the same
        return list(describe()) if describe is not None else list(self.collect())

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.inner.collect())
        except Exception as exc:
            log.error("collector %s left out of this scrape: %s", self.name, type(exc).__name__)
            return []


class IsolatingRegistry(CollectorRegistry):
    """A registry whose collectors fail alone (see ``_Isolated``); unregister with the original."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self._wrapped: dict[int, _Isolated] = {}

    def register(self, collector: Collector) -> None:
        wrapped = _Isolated(collector)
        super().register(wrapped)
        self._wrapped[id(collector)] = wrapped

    def unregister(self, collector: Collector) -> None:
        super().unregister(self._wrapped.pop(id(collector), collector))  # type: ignore[arg-type]

    def collectors(self) -> list[Collector]:
        """The collectors registered, as they were registered (not their isolating wrappers)."""
        return [w.inner for w in list(self._wrapped.values())]


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
