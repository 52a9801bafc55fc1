"""Running one healer action: an argv, no shell, its own process group, a hard timeout.

A hung action must not hold the healer's slot forever, and killing only the direct child would
leave its children (a `sleep` in a script, a stuck `systemctl`) running: the whole group dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: after SIGTERM to the group, how long before SIGKILL
KILL_GRACE_SECONDS = 2.0
OUTPUT_TAIL_BYTES = 400
#: never handed to an action: the webhook token is the receiver's, not the action's
SCRUBBED_ENV = ("TRADING_READINESS_HEALER_TOKEN",)
#: set in every action's environment to its attempt's id: a receiver restarted after a crash
#: finds the action's processes by it even when their process group was never recorded
MARKER_ENV = "TRADING_READINESS_HEAL_ATTEMPT"


@dataclass
class ActionResult:
    exit_status: int | None
    duration: float
    timed_out: bool
    error: str | None
    output_tail: str


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    pid it names one process, so a recorded pid reused by an unrelated process is never killed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def group_alive(pgid: int) -> bool:
    return _group_alive(pgid)


def end_group(pgid: int, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the group, then SIGKILL what is left after ``grace`` seconds."""
    _kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    while _group_alive(pgid) and time.monotonic() < deadline + grace:
        _kill_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def find_marked(marker: str, proc: Path = Path("/proc")) -> int | None:
    """The process group of a live process whose environment carries ``MARKER_ENV=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                return os.getpgid(int(d.name))
        except (OSError, ProcessLookupError):
            continue
    return None


def run_action(argv: tuple[str, ...], timeout: float, cwd: Path, environ: Mapping[str, str] | None = None,
               groups: set[int] | None = None, on_start: Callable[[int], None] | None = None,
               marker: str | None = None) -> ActionResult:
    """Run ``argv`` in ``cwd`` (the bot root). Never raises for the action's own failures.

    ``on_start(pid)`` is called once the process exists (not when it could not be started).
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in SCRUBBED_ENV}
    if marker is not None:
        env[MARKER_ENV] = marker
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, shell=False)
        except OSError as exc:
            return ActionResult(None, time.monotonic() - started, False,
                                f"could not start {argv[0]!r}: {exc.strerror or exc}", "")
        pgid = proc.pid  # start_new_session: the child leads its own group
        if groups is not None:
            groups.add(pgid)  # so a stopping receiver can kill what it started
        timed_out = False
        try:
            if on_start is not None:
                on_start(pgid)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_GRACE_SECONDS)
            _kill_group(pgid, signal.SIGKILL)
            proc.wait()
        if timed_out:
            # members that ignored SIGTERM and outlived the leader are killed too
            deadline = time.monotonic() + KILL_GRACE_SECONDS
            while _group_alive(pgid) and time.monotonic() < deadline:
                _kill_group(pgid, signal.SIGKILL)
                time.sleep(0.05)
        if groups is not None:
            groups.discard(pgid)
        duration = time.monotonic() - started
        out.seek(max(0, out.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES))
        tail = out.read().decode("utf-8", "replace").strip()
    error = f"killed after the {timeout:g} s timeout" if timed_out else (
        None if proc.returncode == 0 else f"exited with status {proc.returncode}")
    return ActionResult(None if timed_out else proc.returncode, duration, timed_out, error, tail)
