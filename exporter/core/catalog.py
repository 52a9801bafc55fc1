"""The failure-point catalog: one YAML file, the single source of truth.

Rules, dashboards, docs/FAILURE_POINTS.md and the metrics and runbook tables in docs/ are generated from it.
A malformed catalog is a programming error caught by the test suite, so loading is strict.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .faults import BROKER_ERROR_KINDS, KINDS
from .model import fp_sort_key

CATEGORIES: dict[int, str] = {
    1: "Data & Signal Generation",
    2: "Scoring & Evaluation",
    3: "Gates & Filters",
    4: "Execution & Broker",
    5: "State & Configuration",
    6: "System & Infrastructure",
}

REQUIRED = ("id", "name", "category", "severity", "detection", "source", "detects", "how", "levels",
            "depends_on", "healer", "runbook")
OPTIONAL = ("params", "interval_seconds", "timeout_seconds", "market_hours", "observations", "original_name",
            "no_healer_reason", "alert_for")


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class FailurePoint:
    id: str
    name: str
    category: str
    severity: str
    detection: str
    source: str
    detects: str
    how: str
    levels: dict[str, str]
    #: skipped, naming the dependency, while one of these is failing (and an inhibit rule)
    depends_on: tuple[str, ...]
    healer: str | None
    no_healer_reason: str | None
    runbook: str
    params: dict[str, Any] = field(default_factory=dict)
    interval_seconds: float = 15.0
    timeout_seconds: float = 10.0
    market_hours: str = "always"
    observations: tuple[dict[str, Any], ...] = ()
    original_name: str | None = None
    alert_for: str = "1m"
    #: fault kind (``exporter.core.faults``) -> the point that reports that fact: when the check
    #: meets the fault it is skipped naming that point (``depends_on: [{id: FP-1.8, when: ...}]``)
    reported_by: dict[str, str] = field(default_factory=dict)

    @property
    def all_dependencies(self) -> tuple[str, ...]:
        """Every point this one may skip for, unconditionally or when it meets a fault."""
        return tuple(dict.fromkeys((*self.depends_on, *self.reported_by.values())))

    @property
    def category_number(self) -> int:
        return fp_sort_key(self.id)[0]

    @property
    def anchor(self) -> str:
        """Markdown anchor of this point's section in docs/FAILURE_POINTS.md."""
        return self.id.lower().replace(".", "")


@dataclass(frozen=True)
class BrokerErrors:
    """Which point reports a failed broker request (the catalog's ``broker_errors``)."""

    #: error kind -> the point that reports it: a check meeting it is SKIPPED naming that point
    owners: dict[str, str] = field(default_factory=dict)
    #: the point that requests /v2/clock every cycle and so reports any failure of the clock itself
    clock: str | None = None


@dataclass(frozen=True)
class Catalog:
    points: dict[str, FailurePoint]
    broker_errors: BrokerErrors = field(default_factory=BrokerErrors)

    def __getitem__(self, fp: str) -> FailurePoint:
        return self.points[fp]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.points.values())

    def __len__(self) -> int:
        return len(self.points)

    def ids(self) -> list[str]:
        return list(self.points)

    def dependents(self, fp: str) -> list[str]:
        return [p.id for p in self if fp in p.depends_on]

    def by_category(self) -> dict[str, list[FailurePoint]]:
        out: dict[str, list[FailurePoint]] = {name: [] for name in CATEGORIES.values()}
        for p in self:
            out[p.category].append(p)
        return out


def catalog_path() -> Path:
    return Path(str(resources.files("exporter").joinpath("catalog.yaml")))


def parse(data: Any, source: str = "catalog.yaml") -> Catalog:
    if not isinstance(data, dict) or not isinstance(data.get("failure_points"), list):
        raise CatalogError(f"{source}: expected a mapping with a 'failure_points' list")
    points: dict[str, FailurePoint] = {}
    for i, raw in enumerate(data["failure_points"]):
        where = f"{source}: failure_points[{i}]"
        if not isinstance(raw, dict):
            raise CatalogError(f"{where}: not a mapping")
        missing = [k for k in REQUIRED if k not in raw]
        unknown = [k for k in raw if k not in REQUIRED and k not in OPTIONAL]
        if missing or unknown:
            raise CatalogError(f"{where} ({raw.get('id')}): missing {missing}, unknown {unknown}")
        fp = str(raw["id"])
        if fp in points:
            raise CatalogError(f"{where}: duplicate id {fp}")
        major = fp_sort_key(fp)[0]
        if CATEGORIES.get(major) != raw["category"]:
            raise CatalogError(f"{where}: {fp} must be in category {CATEGORIES.get(major)!r}")
        if raw["detection"] not in ("implemented", "planned"):
            raise CatalogError(f"{where}: detection must be implemented or planned")
        if raw["severity"] not in ("critical", "warning"):
            raise CatalogError(f"{where}: severity must be critical or warning")
        if not isinstance(raw["levels"], dict) or not set(raw["levels"]) <= {"warn", "error", "skipped"}:
            raise CatalogError(f"{where}: levels must map warn/error/skipped to text")
        healer = raw["healer"]
        if healer is None and not raw.get("no_healer_reason"):
            raise CatalogError(f"{where}: a point without a healer must say why (no_healer_reason)")
        depends_on, reported_by = _dependencies(raw["depends_on"], f"{where} ({fp})")
        points[fp] = FailurePoint(
            id=fp,
            name=str(raw["name"]),
            category=str(raw["category"]),
            severity=str(raw["severity"]),
            detection=str(raw["detection"]),
            source=str(raw["source"]).strip(),
            detects=str(raw["detects"]).strip(),
            how=str(raw["how"]).strip(),
            levels={k: str(v).strip() for k, v in raw["levels"].items()},
            depends_on=depends_on,
            reported_by=reported_by,
            healer=healer,
            no_healer_reason=(str(raw["no_healer_reason"]).strip() if raw.get("no_healer_reason") else None),
            runbook=str(raw["runbook"]).strip(),
            params=dict(raw.get("params") or {}),
            interval_seconds=float(raw.get("interval_seconds", 15)),
            timeout_seconds=float(raw.get("timeout_seconds", 10)),
            market_hours=str(raw.get("market_hours", "always")),
            observations=tuple(raw.get("observations") or ()),
            original_name=raw.get("original_name"),
            alert_for=str(raw.get("alert_for", "1m")),
        )
    for p in points.values():
        for dep in p.all_dependencies:
            if dep not in points:
                raise CatalogError(f"{source}: {p.id} depends on unknown {dep}")
    _check_acyclic(points)
    ordered = dict(sorted(points.items(), key=lambda kv: fp_sort_key(kv[0])))
    return Catalog(ordered, _broker_errors(data.get("broker_errors"), points, f"{source}: broker_errors"))


def _broker_errors(raw: Any, points: dict[str, FailurePoint], where: str) -> BrokerErrors:
    """``broker_errors: {clock: FP-x, owners: {<kind>: FP-y, ...}}``, every id a known point."""
    if raw is None:
        return BrokerErrors()
    if not isinstance(raw, dict) or not set(raw) <= {"clock", "owners"} or not isinstance(raw.get("owners", {}), dict):
        raise CatalogError(f"{where}: expected a mapping with 'clock' (an id) and 'owners' (error kind -> id)")
    owners = {str(k): str(v) for k, v in raw.get("owners", {}).items()}
    for kind, fp in owners.items():
        if kind not in BROKER_ERROR_KINDS:
            raise CatalogError(f"{where}: unknown error kind {kind!r} (known: {', '.join(BROKER_ERROR_KINDS)})")
        if fp not in points:
            raise CatalogError(f"{where}: {kind} is owned by unknown {fp}")
    clock = raw.get("clock")
    if clock is not None and str(clock) not in points:
        raise CatalogError(f"{where}: clock is owned by unknown {clock}")
    return BrokerErrors(owners, None if clock is None else str(clock))


def _dependencies(raw: Any, where: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """``depends_on``: ids (skip while that point fails) and ``{id, when}`` (skip when the check
    meets fault ``when``, naming that point as the one that reports it)."""
    if raw is None:
        return (), {}
    if not isinstance(raw, list):
        raise CatalogError(f"{where}: depends_on must be a list")
    plain: list[str] = []
    when: dict[str, str] = {}
    for entry in raw:
        if isinstance(entry, str):
            plain.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"id", "when"}:
            kind = str(entry["when"])
            if kind not in KINDS:
                raise CatalogError(f"{where}: depends_on names unknown fault {kind!r} (known: {', '.join(KINDS)})")
            if kind in when:
                raise CatalogError(f"{where}: depends_on names fault {kind!r} twice")
            when[kind] = str(entry["id"])
        else:
            raise CatalogError(f"{where}: a depends_on entry is an id or {{id, when}}, not {entry!r}")
    return tuple(plain), when


def _check_acyclic(points: dict[str, FailurePoint]) -> None:
    state: dict[str, int] = {}

    def visit(fp: str, path: tuple[str, ...]) -> None:
        if state.get(fp) == 2:
            return
        if state.get(fp) == 1:
            raise CatalogError(f"dependency cycle: {' -> '.join((*path, fp))}")
        state[fp] = 1
        for dep in points[fp].all_dependencies:
            visit(dep, (*path, fp))
        state[fp] = 2

    for fp in points:
        visit(fp, ())


#: libyaml's safe loader where PyYAML was built with it: the catalog is the largest YAML every
#: command reads, and the pure-Python loader took about 0.25 s of CPU for it (libyaml: a tenth)
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load() -> Catalog:
    path = catalog_path()
    with open(path, encoding="utf-8") as fh:
        return parse(yaml.load(fh, Loader=_SAFE_LOADER), str(path))  # noqa: S506 (a safe loader)
