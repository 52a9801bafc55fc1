"""Event-driven re-checks: the exporter notices a death or a heal when it happens, not at the next poll.

Polling every ``interval_seconds`` makes a dead process wait up to an interval before its point
fails, and a healed one up to an interval before it is OK again. Two events are cheap to watch:

- **process exit**: a point whose OK result names the pids it found (``details.pids``: the UW
  daemon, main.py) has those processes watched through pidfds (``os.pidfd_open``, Linux 5.3+),
  all in one ``poll``; the moment one exits, the point and the points depending on it are
  checked again. Where pidfds are unavailable the pids are probed once a second instead.
- **a finished heal**: the healer appends an ``attempt`` record to its audit file when an action
  has run and its point was re-evaluated; the file is stat'ed twice a second and a new record
  re-checks its point, so READY is reported as soon as the healer has seen the point OK.

The watcher only ever asks the scheduler for an earlier run of a check; it never produces a
result itself, so what a point reports is always what its check saw.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..bot.readers import FileProblem, JsonlTail

log = logging.getLogger("trading_readiness.exporter")

#: how often the audit file is stat'ed and (without pidfds) watched pids are probed
TICK_SECONDS = 0.5
#: at most this many processes are watched (a point listing more is watched for its first ones)
MAX_WATCHED = 64
#: an audit file grown by more than this between two ticks is read from its new end only
MAX_AUDIT_READ = 1024 * 1024

#: the scheduler's re-check: the points to run again and why (what it returns is not used here)
Recheck = Callable[[Iterable[str], str], object]


def pids_of(details: Mapping[str, Any]) -> list[int]:
    """The pids a check's details name (``pids``: a list of ints), nothing else."""
    pids = details.get("pids")
    if not isinstance(pids, list):
        return []
    return [p for p in pids if isinstance(p, int) and not isinstance(p, bool) and p > 1]


class Watcher:
    """One daemon thread: pidfds of the processes OK points depend on, and the heal audit's tail."""

    def __init__(self, recheck: Recheck, audit_file: Path | None = None) -> None:
        self.recheck = recheck
        self.audit_file = audit_file
        self._lock = threading.Lock()
        self._want: dict[str, set[int]] = {}  # fp -> pids its latest OK result named
        self._fds: dict[int, int] = {}  # pid -> pidfd (or -1 when probed instead)
        self._wake_r = self._wake_w = -1  # a pipe that wakes the thread's poll; made by start()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the heal audit, followed by the bot layer's incremental JSONL reader (rotation,
        #: truncation and partial last lines handled there)
        self._audit_tail: JsonlTail | None = None
        #: how many events triggered a re-check (exported for the curious; tests read it)
        self.exits = 0
        self.heals = 0

    # the scheduler's side ----------------------------------------------------------------------
    def watch(self, fp: str, pids: Iterable[int]) -> None:
        """``fp``'s latest result names ``pids`` (empty: nothing to watch for it)."""
        new = set(pids)
        with self._lock:
            if self._want.get(fp, set()) == new:
                return
            if new:
                self._want[fp] = new
            else:
                self._want.pop(fp, None)
        self._poke()

    def set_audit_file(self, path: Path | None) -> None:
        with self._lock:
            if path != self.audit_file:
                # another file: what it already holds counts as new, as for a file created later
                self.audit_file, self._audit_tail = path, _audit_tail(path, from_end=False)

    def start(self) -> Watcher:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._prime_audit()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._poke()

    def _poke(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # under the lock: never a closed (reused) fd
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    # the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: dict[int, int] = {}  # fd -> pid
        try:
            while not self._stop.is_set():
                self._sync_fds(poller, registered)
                try:
                    events = poller.poll(TICK_SECONDS * 1000)
                except InterruptedError:
                    continue
                gone: set[int] = set()
                for fd, _ in events:
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    elif fd in registered:
                        gone.add(registered[fd])
                gone |= self._probe()
                if gone:
                    self._exited(gone, poller, registered)
                self._read_audit()
        except Exception as exc:  # the watcher is an accelerator: polling still works without it
            log.warning("process/heal watcher stopped: %s: %s", type(exc).__name__, exc)
        finally:
            with self._lock:
                for fd in [*registered, self._wake_r, self._wake_w]:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self._fds.clear()
                self._wake_r = self._wake_w = -1

    def _sync_fds(self, poller: select.poll, registered: dict[int, int]) -> None:
        with self._lock:
            wanted: set[int] = set()
            for pids in self._want.values():
                wanted |= pids
            wanted = set(sorted(wanted)[:MAX_WATCHED])
            for pid in [p for p in self._fds if p not in wanted]:
                self._unwatch(pid, poller, registered)
            for pid in wanted - set(self._fds):
                fd = -1
                if hasattr(os, "pidfd_open"):
                    try:
                        fd = os.pidfd_open(pid)
                    except ProcessLookupError:
                        fd = -2  # already gone: handled as an exit on this tick
                    except OSError:
                        fd = -1  # no pidfds here (old kernel, seccomp): probed once a tick instead
                self._fds[pid] = fd
                if fd >= 0:
                    poller.register(fd, select.POLLIN)
                    registered[fd] = pid

    def _unwatch(self, pid: int, poller: select.poll, registered: dict[int, int]) -> None:
        """Forget ``pid`` (the lock is held): its pidfd, if it has one, unregistered and closed."""
        fd = self._fds.pop(pid, -1)
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                poller.unregister(fd)
            registered.pop(fd, None)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _probe(self) -> set[int]:
        """Pids that have no pidfd and no longer exist (or were gone when we tried to watch them)."""
        with self._lock:
            probed = [(pid, fd) for pid, fd in self._fds.items() if fd < 0]
        gone = set()
        for pid, fd in probed:
            if fd == -2:
                gone.add(pid)
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                gone.add(pid)
            except PermissionError:
                pass  # exists, another user's
        return gone

    def _exited(self, gone: set[int], poller: select.poll, registered: dict[int, int]) -> None:
        with self._lock:
            fps = sorted(fp for fp, pids in self._want.items() if pids & gone)
            for fp in fps:
                self._want[fp] -= gone
                if not self._want[fp]:
                    del self._want[fp]
            for pid in gone:
                self._unwatch(pid, poller, registered)
        if fps:
            self.exits += 1
            self.recheck(fps, f"process {', '.join(str(p) for p in sorted(gone))} exited")

    # the heal audit ----------------------------------------------------------------------------
    def _prime_audit(self) -> None:
        """Start at the audit file's current end: only heals finished from now on re-check. A
        file that does not exist yet is read from its start once it appears."""
        path = self.audit_file
        self._audit_tail = _audit_tail(path, from_end=path is not None and path.exists())
        self._read_audit(prime=True)

    def _read_audit(self, prime: bool = False) -> None:
        tail = self._audit_tail
        if tail is None:
            return
        try:
            records = tail.poll()
        except FileProblem:  # not there yet, unreadable, or nothing but garbage: nothing finished
            return
        if prime:
            return
        # the audit's format is the core's (exporter.core.audit), shared with the healer
        fps = {rec["fp"] for rec in records
               if rec.get("event") == "attempt" and isinstance(rec.get("fp"), str) and rec.get("outcome") != "dry_run"}
        if fps:
            self.heals += 1
            self.recheck(sorted(fps), "a heal finished")


def _audit_tail(path: Path | None, from_end: bool) -> JsonlTail | None:
    """A reader of the heal audit: a poll reads at most MAX_AUDIT_READ (a bigger backlog is read
    from its end) and keeps every record of it."""
    if path is None:
        return None
    return JsonlTail(path, keep=MAX_AUDIT_READ // 64, initial_bytes=0 if from_end else 4 << 20,
                     max_read_bytes=MAX_AUDIT_READ)
