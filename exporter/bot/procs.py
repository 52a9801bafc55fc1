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

from ..core.fields import decimal

PYTHON_EXE = re.compile(r"^python(\d+(\.\d+)?)?$")
#: process states in which a process does no work: SIGSTOPped or traced (`T`/`t`), exited but not
#: reaped (`Z`), dead (`X`)
NOT_WORKING = {psutil.STATUS_STOPPED: "stopped (state T)", psutil.STATUS_TRACING_STOP: "stopped by a tracer (state t)",
               psutil.STATUS_ZOMBIE: "a zombie (state Z: exited, not reaped)", psutil.STATUS_DEAD: "dead (state X)"}


def process_state(pid: int) -> str | None:
    """psutil's status of ``pid`` (``running``, ``sleeping``, ``stopped``, ``zombie`` ...), None if gone."""
    try:
        return str(psutil.Process(pid).status())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


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
        n_restarts=decimal(restarts),
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
    status: str = psutil.STATUS_RUNNING

    @property
    def working(self) -> bool:
        return self.status not in NOT_WORKING


@dataclass
class ProcessReport:
    running: bool
    pids: list[int] = field(default_factory=list)
    how: str = ""
    message: str = ""
    unit: UnitState | None = None
    matches: list[Match] = field(default_factory=list)
    lock_holders: set[int] = field(default_factory=set)
    #: the state of the process that should be doing the work, when it is not working
    state: str | None = None


def script_path(cmdline: list[str], cwd: str | None) -> Path | None:
    """The script a ``python [-u ...] <script>`` command line runs, resolved; None for anything else."""
    if not cmdline or not PYTHON_EXE.match(os.path.basename(cmdline[0])):
        return None
    # the script is the first non-option argument: `python -u main.py`, not `python -c "...main.py"`
    args = cmdline[1:]
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("-c", "-m"):
            return None
        if args[i] in ("-W", "-X"):
            i += 1
        i += 1
    if i >= len(args):
        return None
    target = args[i]
    try:
        if os.path.isabs(target):
            return Path(target).resolve()
        return None if cwd is None else (Path(cwd) / target).resolve()
    except OSError:
        return None


def runs_script(cmdline: list[str], cwd: str | None, bot_root: Path, script: str) -> bool:
    """True for ``python [-u ...] <script>`` run from the bot root (or with the script's full path)."""
    path = script_path(cmdline, cwd)
    return path is not None and path == (bot_root.resolve() / script).resolve()


#: every process's raw command line: (pid, the bytes of /proc/<pid>/cmdline)
CmdlineTable = list[tuple[int, bytes]]


def cmdlines(proc_root: Path = Path("/proc")) -> CmdlineTable | None:
    """One scan of the process table: each process's pid and raw command line; None without /proc.

    Several points look at processes every cycle; one scan serves them all (see ``mentioning``).
    Each file is read with bare ``os.open``/``os.read``: a buffered ``open`` adds an ``fstat``,
    an ``ioctl`` and two ``lseek`` calls per process, which made the scan twice as expensive.
    """
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return None
    table: CmdlineTable = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fd = os.open(f"{proc_root}/{entry}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            raw = _read_all(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
        table.append((int(entry), raw))
    return table


def _read_all(fd: int) -> bytes:
    first = os.read(fd, 1 << 16)
    if not first:
        return first
    chunks = [first]
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def mentioning(*names: str, proc_root: Path = Path("/proc"), table: CmdlineTable | None = None) -> list[psutil.Process]:
    """The processes whose command line contains one of ``names``, each its own psutil object.

    Several points scan the process table every cycle. psutil builds a Process and reads its
    files for every process of the host (about 9 ms for 100 processes); reading the raw
    command lines from /proc and building objects only for those that mention a name costs a
    tenth of that. The raw bytes contain a name whenever one of psutil's arguments does, so the
    callers' own tests on ``cmdline()`` decide exactly as before. ``table``: a scan already made
    (``cmdlines``), shared by the points of one cycle. Without /proc: psutil's scan.
    """
    needles = [os.fsencode(n) for n in names]
    if table is None:
        table = cmdlines(proc_root)
    if table is None:
        return list(psutil.process_iter())
    found: list[psutil.Process] = []
    for pid, raw in table:
        if any(n in raw for n in needles):
            try:
                # a fresh object: psutil shares one per pid between concurrent process_iter() scans
                found.append(psutil.Process(pid))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return found


@dataclass
class OtherBot:
    root: Path
    pid: int
    script: str


#: the module of stock-bot's main.py whose supervisor runs ``pkill -f uw_flow_daemon`` host-wide
SUPERVISOR_MODULE = "health_supervisor.py"


def other_bots(bot_root: Path, daemon_script: str, bot_script: str,
               marker: str = SUPERVISOR_MODULE, table: CmdlineTable | None = None) -> list[OtherBot]:
    """Processes of *other* stock-bot roots on this host: Python running ``<dir>/main.py`` or
    ``<dir>/uw_flow_daemon.py`` where ``<dir>`` is not our root and holds ``marker`` (the health
    supervisor main.py imports from its own directory; ``main.py`` alone is a common name).
    """
    root = bot_root.resolve()
    found: list[OtherBot] = []
    for proc in mentioning(daemon_script, bot_script, table=table):
        try:
            cmdline = proc.cmdline()
            if not any(daemon_script in a or bot_script in a for a in cmdline):
                continue
            try:
                cwd: str | None = proc.cwd()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cwd = None
            path = script_path(cmdline, cwd)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if path is None or path.parent == root or path.name not in (daemon_script, bot_script):
            continue
        if not (path.parent / marker).is_file():
            continue
        found.append(OtherBot(path.parent, proc.pid, path.name))
    return sorted(found, key=lambda b: (str(b.root), b.pid))


def find_script_processes(bot_root: Path, script: str, table: CmdlineTable | None = None) -> list[Match]:
    matches: list[Match] = []
    for proc in mentioning(script, table=table):
        try:
            cmdline = proc.cmdline()
            if not cmdline or not any(script in a for a in cmdline):
                continue
            try:
                cwd: str | None = proc.cwd()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cwd = None
            status = proc.status()
            if status == psutil.STATUS_ZOMBIE:
                continue
            if runs_script(cmdline, cwd, bot_root, script):
                matches.append(Match(proc.pid, cmdline, proc.create_time() or 0.0, status=status))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(matches, key=lambda m: m.create_time)


def inspect(bot_root: Path, script: str, systemd_unit: str | None, lock_file: Path | None,
            table: CmdlineTable | None = None) -> ProcessReport:
    """Decide whether the process runs, preferring the unit, then the lock holder, then cwd+argv."""
    unit = unit_state(systemd_unit) if systemd_unit else None
    matches = find_script_processes(bot_root, script, table)
    holders = lock_holders(lock_file) if lock_file else set()
    for m in matches:
        m.holds_lock = m.pid in holders
    report = ProcessReport(False, unit=unit, matches=matches, lock_holders=holders)
    if unit is not None and unit.exists:
        if unit.active and unit.main_pid:
            report.pids, report.how = [unit.main_pid], f"systemd unit {unit.name}"
            state = process_state(unit.main_pid)
            if state in NOT_WORKING:
                report.state = state
                report.message = (f"{unit.name} is {unit.active_state} but its MainPID {unit.main_pid} is "
                                  f"{NOT_WORKING[state]}: it does no work")
                return report
            report.running = True
            report.message = f"{unit.name} is {unit.active_state} (MainPID {unit.main_pid})"
            return report
        if not matches:
            report.message = f"{unit.name} is {unit.active_state}/{unit.sub_state} and no {script} process runs"
            return report
    if lock_file is not None:
        owners = [m for m in matches if m.holds_lock]
        working = [m for m in owners if m.working]
        if working:
            report.running, report.pids = True, [m.pid for m in working]
            report.how = f"holds {lock_file.name}"
            report.message = f"{script} running (pid {working[0].pid}, holds the lock)"
            return report
        if owners:
            # a SIGSTOPped daemon keeps its lock (so no other instance starts) and does nothing
            report.pids, report.how, report.state = [m.pid for m in owners], f"holds {lock_file.name}", owners[0].status
            report.message = (f"{script} pid {owners[0].pid} holds {lock_file.name} but is "
                              f"{NOT_WORKING[owners[0].status]}: it does no work")
            return report
        zombie = _zombie_lock_owner(lock_file)
        if zombie is not None and not matches:
            report.pids, report.how, report.state = [zombie], "pid in the lock file", psutil.STATUS_ZOMBIE
            report.message = (f"{script} pid {zombie} (from {lock_file.name}) is {NOT_WORKING[psutil.STATUS_ZOMBIE]}: "
                              "no daemon runs")
            return report
        if matches:
            report.pids = [m.pid for m in matches]
            report.how = "process without lock"
            report.message = (f"{script} process(es) {report.pids} run but none holds {lock_file.name} "
                              "(starting up, or a duplicate about to exit)")
            return report
        report.message = f"no {script} process runs in {bot_root}"
        return report
    working_matches = [m for m in matches if m.working]
    if working_matches:
        report.running, report.pids, report.how = True, [m.pid for m in working_matches], "cwd and argv"
        report.message = f"{script} running (pid {working_matches[0].pid})"
        return report
    if matches:
        report.pids, report.how, report.state = [m.pid for m in matches], "cwd and argv", matches[0].status
        report.message = f"{script} pid {matches[0].pid} is {NOT_WORKING[matches[0].status]}: it does no work"
        return report
    report.message = f"no {script} process runs in {bot_root}"
    return report


LOCK_PID = re.compile(r"\bpid=(\d+)")


def _zombie_lock_owner(lock_file: Path) -> int | None:
    """The pid the lock file names (``pid=<n> ts=<iso>``) when that process is a zombie.

    A zombie has released its flock and shows no command line, so only the pid it wrote tells
    that the daemon exited without being reaped.
    """
    try:
        found = LOCK_PID.search(lock_file.read_text(errors="replace")[:4096])
    except OSError:
        return None
    if not found:
        return None
    pid = int(found.group(1))
    return pid if process_state(pid) == psutil.STATUS_ZOMBIE else None
