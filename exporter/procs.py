"""Is a bot process really running?

A loose pattern (``pgrep -f main.py``) matches editors, ``tail``, ``grep`` and a duplicate daemon
about to exit on its lock, which is how a dead bot looks alive. In order of trust we use: the
systemd unit's state and MainPID (where systemd runs), the holder of the daemon's ``flock``
(from /proc/locks, without touching the lock), and a Python process whose cwd is the bot root
and whose argv runs the script.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PYTHON_EXE = re.compile(r"^python(\d+(\.\d+)?)?$")


@dataclass
class UnitState:
    name: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int
    n_restarts: int | None

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "reloading", "activating")


def systemd_running(proc_root: Path = Path("/run/systemd/system")) -> bool:
    """True when the host's init is systemd (containers and CI usually are not)."""
    return proc_root.is_dir() and shutil.which("systemctl") is not None


def unit_state(unit: str, timeout: float = 3.0) -> UnitState | None:
    """``systemctl show`` for one unit, or None when systemd is not the init system."""
    if not systemd_running():
        return None
    try:
        out = subprocess.run(
            ["systemctl", "show", unit, "--property=LoadState,ActiveState,SubState,MainPID,NRestarts"],
            capture_output=True, text=True, timeout=timeout, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    restarts = props.get("NRestarts", "")
    return UnitState(
        name=unit,
        load_state=props.get("LoadState", ""),
        active_state=props.get("ActiveState", ""),
        sub_state=props.get("SubState", ""),
        main_pid=int(props.get("MainPID", "0") or 0),
        n_restarts=int(restarts) if restarts.isdigit() else None,
    )


def lock_holders(lock_file: Path, proc_locks: Path = Path("/proc/locks")) -> set[int]:
    """PIDs holding a lock on ``lock_file``, read from /proc/locks by inode (we never take it)."""
    try:
        st = lock_file.stat()
        text = proc_locks.read_text()
    except OSError:
        return set()
    holders: set[int] = set()
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters have "->" after the id
        if len(parts) < 6 or parts[1] == "->":
            continue
        try:
            pid = int(parts[4])
            _dev, inode = parts[5].rsplit(":", 1)
            if int(inode) == st.st_ino:
                holders.add(pid)
        except ValueError:
            continue
    return holders


@dataclass
class Match:
    pid: int
    cmdline: list[str]
    create_time: float
    holds_lock: bool = False


@dataclass
class ProcessReport:
    running: bool
    pids: list[int] = field(default_factory=list)
    how: str = ""
    message: str = ""
    unit: UnitState | None = None
    matches: list[Match] = field(default_factory=list)
    lock_holders: set[int] = field(default_factory=set)


def runs_script(cmdline: list[str], cwd: str | None, bot_root: Path, script: str) -> bool:
    """True for ``python [-u ...] <script>`` run from the bot root (or with the script's full path)."""
    if not cmdline:
        return False
    if not PYTHON_EXE.match(os.path.basename(cmdline[0])):
        return False
    # the script is the first non-option argument: `python -u main.py`, not `python -c "...main.py"`
    args = cmdline[1:]
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("-c", "-m"):
            return False
        if args[i] in ("-W", "-X"):
            i += 1
        i += 1
    if i >= len(args):
        return False
    target = args[i]
    root = bot_root.resolve()
    if os.path.isabs(target):
        return Path(target).resolve() == (root / script).resolve()
    if cwd is None:
        return False
    try:
        return (Path(cwd) / target).resolve() == (root / script).resolve()
    except OSError:
        return False


def find_script_processes(bot_root: Path, script: str) -> list[Match]:
    matches: list[Match] = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if not cmdline or not any(script in a for a in cmdline):
                continue
            try:
                cwd: str | None = proc.cwd()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cwd = None
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if runs_script(cmdline, cwd, bot_root, script):
                matches.append(Match(proc.pid, cmdline, proc.info["create_time"] or 0.0))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(matches, key=lambda m: m.create_time)


def inspect(bot_root: Path, script: str, systemd_unit: str | None, lock_file: Path | None) -> ProcessReport:
    """Decide whether the process runs, preferring the unit, then the lock holder, then cwd+argv."""
    unit = unit_state(systemd_unit) if systemd_unit else None
    matches = find_script_processes(bot_root, script)
    holders = lock_holders(lock_file) if lock_file else set()
    for m in matches:
        m.holds_lock = m.pid in holders
    report = ProcessReport(False, unit=unit, matches=matches, lock_holders=holders)
    if unit is not None and unit.exists:
        if unit.active and unit.main_pid:
            report.running, report.pids, report.how = True, [unit.main_pid], f"systemd unit {unit.name}"
            report.message = f"{unit.name} is {unit.active_state} (MainPID {unit.main_pid})"
            return report
        if not matches:
            report.message = f"{unit.name} is {unit.active_state}/{unit.sub_state} and no {script} process runs"
            return report
    if lock_file is not None:
        owners = [m for m in matches if m.holds_lock]
        if owners:
            report.running, report.pids = True, [m.pid for m in owners]
            report.how = f"holds {lock_file.name}"
            report.message = f"{script} running (pid {owners[0].pid}, holds the lock)"
            return report
        if matches:
            report.pids = [m.pid for m in matches]
            report.how = "process without lock"
            report.message = (f"{script} process(es) {report.pids} run but none holds {lock_file.name} "
                              "(starting up, or a duplicate about to exit)")
            return report
        report.message = f"no {script} process runs in {bot_root}"
        return report
    if matches:
        report.running, report.pids, report.how = True, [m.pid for m in matches], "cwd and argv"
        report.message = f"{script} running (pid {matches[0].pid})"
        return report
    report.message = f"no {script} process runs in {bot_root}"
    return report
