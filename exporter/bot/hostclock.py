"""Whether the host's clock is synchronised: adjtimex(2) read-only, then systemd-timedated.

The checks compare the bot's timestamps with the local clock and the market's hours, so a host
that keeps no time makes every freshness and session judgement wrong (FP-6.8).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import subprocess

from . import procs


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux); only read, never set (modes = 0)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
                ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
                ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
                ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


STA_UNSYNC = 0x0040


TIME_ERROR = 5


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def kernel_sync() -> tuple[bool, float] | None:
    """(synchronised, max error in seconds) from adjtimex(2) in read-only mode, or None."""
    libc = _libc()
    if libc is None:
        return None
    try:
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return (state != TIME_ERROR and not tx.status & STA_UNSYNC), tx.maxerror / 1e6


def timedatectl_sync(timeout: float = 3.0) -> bool | None:
    """NTPSynchronized from systemd-timedated, or None where systemd does not run."""
    if not procs.systemd_running():
        return None
    try:
        r = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                           text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = r.stdout.strip().lower()
    return {"yes": True, "no": False}.get(value) if r.returncode == 0 else None
