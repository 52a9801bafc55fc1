"""Keeping the exporter's threads on one CPU (``exporter.one_cpu``, on by default).

The exporter's checks are one Python interpreter: whatever the number of threads, one runs Python
code at a time (the GIL), and the checks, the request threads, the cache parser and the event
loop hand it to each other many times per cycle. With the threads on different CPUs every
hand-over is a cross-CPU wake-up; kept on one CPU, a cycle of the bench's production case cost
about 15% less CPU (``docs/benchmarks.md``). node_exporter limits itself the same way by default
(``GOMAXPROCS=1``). The CPU is the one the exporter runs on when it starts, among those it is
allowed (a cpuset, ``taskset`` or systemd's ``CPUAffinity=`` is respected); with ``one_cpu:
false`` the threads may run on all of those again.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("trading_readiness.exporter")

#: the CPUs the process was allowed when it first looked (what ``one_cpu: false`` gives back)
_allowed: set[int] | None = None


def current_cpu() -> int | None:
    """The CPU the calling thread last ran on (``/proc/thread-self/stat``, field 39), if known."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def threads() -> list[int]:
    """The native ids of this process's threads."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [threading.get_native_id()]


def keep_threads(one_cpu: bool) -> set[int] | None:
    """Put every thread of this process on one CPU (``one_cpu``) or on all it was allowed; the
    CPUs they may use now, or None where affinity is not available. Threads started later
    inherit it from the thread that starts them; the threads are set twice, so one started while
    the first pass ran is set too."""
    global _allowed
    try:
        if _allowed is None:
            _allowed = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    target = set(_allowed)
    if one_cpu and len(target) > 1:
        cpu = current_cpu()
        target = {cpu if cpu in target else min(target)}
    for _ in range(2):
        for tid in threads():
            try:
                os.sched_setaffinity(tid, target)
            except OSError:  # a thread that ended meanwhile; or not ours to set (a sandbox)
                continue
    try:
        return set(os.sched_getaffinity(0))
    except OSError:
        return None


def apply(one_cpu: bool) -> None:
    """:func:`keep_threads`, and one log line saying what the exporter may use."""
    cpus = keep_threads(one_cpu)
    if cpus is None:
        log.info("CPU affinity is not available here; exporter.one_cpu has no effect")
    elif one_cpu and len(cpus) == 1:
        log.info("keeping the exporter's threads on CPU %d of %s (exporter.one_cpu)", min(cpus),
                 cpu_list(_allowed or cpus))
    else:
        log.info("the exporter's threads may run on CPUs %s", cpu_list(cpus))


def cpu_list(cpus: set[int]) -> str:
    """``{0, 1, 2, 5}`` as ``0-2,5``."""
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and out[-1].split("-")[-1] == str(cpu - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)
