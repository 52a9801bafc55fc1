"""`trading-readiness verify`: config, every check, the probe and the alerting config, in one record.

The old verification always said NOT_READY because its injection test crashed; scripts still
read its result files. This writes them per CONTRACT.md ("Files written"), crash-safe:

- ``data/trading_verification_latest.json``: temp file in the same directory, fsync, os.replace,
  so a reader sees the previous record or the new one, never half of one;
- ``data/trading_verification_results.jsonl``: one line per run, written with a single
  ``os.write`` on an O_APPEND descriptor, so a killed run leaves a whole line or none;
- ``data/trading_verification_results.json``: the latest record again (atomic), for old scripts.

These are the only files verify writes into the bot root. Exit code by readiness (0 READY,
1 DEGRADED, 2 BLOCKED, 3 UNKNOWN); a probe that is blocked makes the verdict BLOCKED, except by
the per-ticker cooldown of the probe's own symbol, which only refuses that symbol (DEGRADED).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bot.context import Context
from ..checks import registry
from ..core.config import Config, ConfigError
from ..core.config import load as load_config
from ..core.engine import Engine
from ..core.fields import decimal
from ..core.model import Readiness, iso_utc
from .probe import ProbeReport, run_probe

LATEST = "trading_verification_latest.json"
HISTORY = "trading_verification_results.jsonl"
LEGACY = "trading_verification_results.json"
#: test-only pause points: verify stops at the named point until killed; unset in production
PAUSE_ENV = "TRADING_READINESS_VERIFY_PAUSE_AT"
TOOL_TIMEOUT_SECONDS = 30.0


def _pause(point: str) -> None:
    """Hold at ``point`` when the test hook names it, so a test can kill the process there."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    sys.stderr.write(f"verify paused at {point}\n")
    sys.stderr.flush()
    while True:
        time.sleep(0.2)


@dataclass
class ToolCheck:
    """promtool/amtool validation of generated alerting config; ``status`` ok/failed/skipped."""

    name: str
    status: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


@dataclass
class Verification:
    readiness: Readiness
    checks: dict[str, Any]
    probe: ProbeReport | None
    tools: list[ToolCheck] = field(default_factory=list)
    started: float = 0.0
    duration: float = 0.0
    config_source: str = ""
    reasons: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        data = dict(self.checks)
        data["checks_readiness"] = self.checks.get("readiness")
        data.update({
            "readiness": self.readiness.name,
            "color": self.readiness.color,
            "exit_code": self.readiness.exit_code,
            "verification": {"started": iso_utc(self.started), "duration_seconds": round(self.duration, 3),
                             "config": self.config_source, "reasons": self.reasons},
            "probe": self.probe.to_json() if self.probe is not None else None,
            "rule_validation": [t.to_json() for t in self.tools],
        })
        return data


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def validate_alerting(root: Path | None = None, rule_files: list[Path] | None = None,
                      alertmanager_config: Path | None = None) -> list[ToolCheck]:
    """``promtool check rules`` and ``amtool check-config`` on the configured files, else on the
    checkout's ``rules/*.yml`` and ``alertmanager/alertmanager.yml``.

    A configured file that does not exist fails (the operator named it); the checkout's files
    are only looked for, so an installed package without them reports skipped.
    """
    root = root or repo_root()
    out: list[ToolCheck] = []
    if rule_files is None:
        rules = sorted((root / "rules").glob("*.yml")) if (root / "rules").is_dir() else []
        rules = [r for r in rules if not r.name.endswith("_test.yml") and not r.name.startswith("test")]
        rules_where = f"rules/*.yml not found in {root}"
    else:
        rules = list(rule_files)
        rules_where = ""
    am = alertmanager_config if alertmanager_config is not None else root / "alertmanager" / "alertmanager.yml"
    am_where = "" if alertmanager_config is not None else f"alertmanager/alertmanager.yml not found in {root}"
    for name, tool, argv, files, where in (
        ("rules", "promtool", ["check", "rules", *map(str, rules)], rules, rules_where),
        ("alertmanager", "amtool", ["check-config", str(am)], [am], am_where),
    ):
        binary = shutil.which(tool)
        absent = [f for f in files if not f.is_file()]
        if not files or absent:
            if where:
                out.append(ToolCheck(name, "skipped", where))
            else:
                out.append(ToolCheck(name, "failed", "configured file not found: "
                                     + ", ".join(str(f) for f in absent)))
            continue
        if binary is None:
            out.append(ToolCheck(name, "skipped", f"{tool} not installed"))
            continue
        try:
            proc = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            out.append(ToolCheck(name, "failed", f"{tool} did not finish within {TOOL_TIMEOUT_SECONDS:g} s"))
            continue
        except OSError as exc:
            out.append(ToolCheck(name, "skipped", f"{tool} cannot run: {exc.strerror}"))
            continue
        text = (proc.stdout + proc.stderr).strip().splitlines()
        if proc.returncode == 0:
            out.append(ToolCheck(name, "ok", f"{tool} {' '.join(argv[:2])}: {len(rules) if name == 'rules' else 1} "
                                 "file(s) valid"))
        else:
            out.append(ToolCheck(name, "failed", f"{tool}: " + " | ".join(text[-3:])[:300]))
    return out


def run_verification(cfg: Config, environ: dict[str, str] | None = None,
                     tools_root: Path | None = None) -> Verification:
    """Checks, probe and alerting config for one bot root; the verdict combines them."""
    started = time.time()
    ctx = Context(cfg, environ=environ)
    report = Engine(ctx, registry()).report()
    checks = report.to_json()
    probe = run_probe(ctx)
    vcfg = cfg["verify"]
    tools = validate_alerting(
        tools_root,
        rule_files=[cfg.resolve(f) for f in vcfg["rule_files"]] if vcfg["rule_files"] else None,
        alertmanager_config=cfg.resolve(vcfg["alertmanager_config"]) if vcfg["alertmanager_config"] else None)
    readiness = report.readiness
    reasons: list[str] = []
    if report.readiness is not Readiness.READY:
        failing = checks["critical_fps"] or checks["warning_fps"]
        reasons.append(f"checks: {report.readiness.name} ({', '.join(failing)})")
    stop = probe.stopped_at
    if probe.outcome == "blocked" and stop is not None and stop.details.get("gate") == "cooldown":
        # a per-ticker cooldown refuses the probe's own symbol only: the bot still trades the
        # others, so calling that BLOCKED would be a false alarm after every trade in it
        if readiness is Readiness.READY:
            readiness = Readiness.DEGRADED
        reasons.append(f"probe: {probe.summary()} (a per-ticker cooldown: other symbols are not refused; "
                       "set probe.symbol to one the bot seldom trades)")
    elif probe.outcome == "blocked":
        readiness = Readiness.BLOCKED
        reasons.append(f"probe: {probe.summary()}")
    elif probe.outcome == "error":
        # could not tell whether a signal would execute: never READY on that
        if readiness is not Readiness.BLOCKED:
            readiness = Readiness.UNKNOWN
        reasons.append(f"probe: {probe.summary()}")
    failed_tools = [t for t in tools if t.status == "failed"]
    if failed_tools and readiness is Readiness.READY:
        # broken alerting does not stop trading, but nobody would be told when it does
        readiness = Readiness.DEGRADED
    reasons += [f"{t.name} validation failed: {t.message}" for t in failed_tools]
    return Verification(readiness, checks, probe, tools, started, time.time() - started, cfg.source, reasons)


# --- crash-safe record files ---------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str, pause_prefix: str = "") -> None:
    """Replace ``path`` so a reader (or a kill) sees the old content or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        half = len(data) // 2
        os.write(fd, data[:half])
        _pause(f"{pause_prefix}mid_write")
        view = memoryview(data)[half:]
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    _pause(f"{pause_prefix}before_replace")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """One whole line per call: a single write on an O_APPEND descriptor."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _pause("before_append")
        written = os.write(fd, data)
        if written != len(data):  # regular files do not short-write short of a full disk
            raise OSError(f"short write to {path.name} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(directory: Path) -> None:
    """Temp files a killed run left behind (their writer is gone); never another live run's."""
    for name in (LATEST, LEGACY):
        for tmp in directory.glob(f".{name}.*.tmp"):
            pid = decimal(tmp.name.removeprefix(f".{name}.").removesuffix(".tmp"), 10)
            if pid is None or pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # that run is still writing
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            tmp.unlink(missing_ok=True)


def write_record(cfg: Config, record: dict[str, Any]) -> list[Path]:
    """The CONTRACT.md result files; returns their paths."""
    directory = cfg.path("verification_dir")
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(directory)
    text = json.dumps(record, indent=2, sort_keys=False)
    latest, history, legacy = directory / LATEST, directory / HISTORY, directory / LEGACY
    atomic_write(latest, text + "\n", "latest_")
    append_line(history, json.dumps(record, separators=(",", ":")))
    atomic_write(legacy, text + "\n", "legacy_")
    return [latest, history, legacy]


def render(v: Verification, files: list[Path]) -> str:
    c = v.checks
    lines = [f"verification: {v.readiness.name} (exit {v.readiness.exit_code}) at {iso_utc(v.started)} "
             f"in {v.duration:.1f} s", f"config: {v.config_source}",
             f"checks: {c['readiness']} - {c['critical_count']} critical, {c['warning_count']} warnings, "
             f"{c['total_checked']} checked"]
    for fp, r in c["failure_points"].items():
        if r["status"] in ("ERROR", "WARN"):
            lines.append(f"  {r['status']:<5} {fp:<7} {r['name']}: {r['message']}")
    if v.probe is not None:
        lines.append("probe: " + v.probe.summary())
        for s in v.probe.to_json()["stages"]:
            lines.append(f"  {s['status']:<11} {s['stage']:<11} {s['reason']}")
    for t in v.tools:
        lines.append(f"{t.name} config: {t.status} - {t.message}")
    for reason in v.reasons:
        lines.append(f"why not READY: {reason}")
    if files:
        lines.append("written: " + ", ".join(str(p) for p in files))
    return "\n".join(lines)


def cli_verify(args: argparse.Namespace) -> int:
    """``trading-readiness verify [--json]``."""
    try:
        cfg = load_config(args.config, args.bot_root)
    except ConfigError as exc:
        # config validation is the first step of verification: report it the same way
        print(f"config error: {exc}", file=sys.stderr)
        return Readiness.UNKNOWN.exit_code
    v = run_verification(cfg)
    record = v.record()
    try:
        files = write_record(cfg, record)
    except OSError as exc:
        problem = f"cannot write the verification record in {cfg.path('verification_dir')}: {exc.strerror or exc}"
        print(f"error: {problem}", file=sys.stderr)
        files = []
        v.reasons.append(problem)
        if v.readiness is Readiness.READY:
            v.readiness = Readiness.UNKNOWN
        record = v.record()  # what is printed must match the exit code
    if getattr(args, "json", False):
        print(json.dumps(record, indent=2))
    else:
        print(render(v, files))
    return v.readiness.exit_code
