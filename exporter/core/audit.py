"""The heal audit file (``healer.audit_file``): one JSON object per line, appended, never rewritten.

This module owns the format; the healer writes it and the exporter reads it, and neither
imports the other. It is the receiver's memory across restarts (cooldowns, attempt windows,
dedupe keys) and the exporter's source for ``self_healing_attempted/success``. A torn last line
(a crash mid-write) is skipped, never fatal: losing one record must not stop healing or the
exporter.

Every record has ``event`` and ``fp``; the healer also writes ``time`` (ISO UTC) and ``epoch``.
The exporter reads only ``event: "attempt"`` records: ``fp``, ``epoch`` (seconds) and
``outcome`` (``success``, ``failed``, ``timeout``, ``unverified``; ``dry_run`` counts as no
attempt). The other events (``started``, ``spawned``, ``resolved``, ``gave_up``) are the
healer's own bookkeeping.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: how much of the file's end a restarting receiver replays (bounded start-up cost)
RESTORE_BYTES = 4 * 1024 * 1024


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends records with one ``write`` per line under a lock, so lines never interleave.

    Durability is a group commit: a record is on disk when ``append`` returns, but concurrent
    appends share one ``fsync`` (the first caller to need one syncs everything written so far,
    the others wait for it), so a burst of deliveries does not queue behind one fsync each.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._sync = threading.Condition()
        self._written = 0  # records written (not yet necessarily synced)
        self._synced = 0
        self._syncing = False

    def append(self, record: dict[str, Any], sync: bool = True) -> None:
        """Write one record; on disk when this returns unless ``sync`` is False (then a later
        :meth:`sync` makes it durable: a batch of records shares that one ``fsync``)."""
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self.lock:
            mine = self._write_line(line.encode("utf-8"))
        if sync:
            self._sync_up_to(mine)  # the record is what stops a restarted receiver from healing twice

    def sync(self) -> None:
        """Everything appended so far is on disk when this returns."""
        with self.lock:
            mine = self._written
        self._sync_up_to(mine)

    def _write_line(self, line: bytes) -> int:
        """One ``write`` of a whole line (the caller holds ``lock``); its sequence number."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            n = os.write(fd, line)
            if n != len(line):  # a disk that filled up mid-line: cut it off, or the next line is glued to it
                os.ftruncate(fd, os.fstat(fd).st_size - n)
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a short write)")
        finally:
            os.close(fd)
        self._written += 1
        return self._written

    def _sync_up_to(self, seq: int) -> None:
        with self._sync:
            while self._synced < seq:
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                with self.lock:
                    target = self._written
                self._sync.release()
                try:
                    fsync_path(self.path)
                finally:
                    self._sync.acquire()
                    self._syncing = False
                    self._sync.notify_all()
                self._synced = max(self._synced, target)


def fsync_path(path: Path) -> None:
    """What was written to ``path`` (a file, or a directory's entries) is on disk when this returns."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in data.splitlines():
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            continue  # a torn or foreign line (or one nested deeper than the parser goes)
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_tail(path: Path, max_bytes: int = RESTORE_BYTES) -> list[dict[str, Any]]:
    """The records in the last ``max_bytes`` of the file, oldest first; [] when it does not exist."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return []
    if start > 0:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return parse_lines(data)


class _StatusCache:
    """Per file: where we stopped reading and the latest attempt per fp (incremental reads)."""

    def __init__(self) -> None:
        self.ident: tuple[int, int] | None = None
        self.offset = 0
        self.partial = b""
        self.latest: dict[str, tuple[float, bool]] = {}


_CACHES: dict[Path, _StatusCache] = {}
_CACHES_LOCK = threading.Lock()


def heal_status(audit_file: Path, since: float | None = None) -> dict[str, tuple[bool, bool]]:
    """fp -> (attempted, success) of the latest finished attempt (dry runs excluded).

    Called by the exporter every cycle, so only bytes appended since the last call are read;
    a replaced or truncated file is read again from its start. ``since`` drops attempts older
    than that epoch. A missing file means nothing was attempted.
    """
    path = Path(audit_file)
    with _CACHES_LOCK:
        cache = _CACHES.setdefault(path, _StatusCache())
    with _CACHES_LOCK:
        try:
            st = path.stat()
        except OSError:
            _CACHES[path] = _StatusCache()
            return {}
        ident = (st.st_dev, st.st_ino)
        if cache.ident != ident or st.st_size < cache.offset:
            cache.ident, cache.offset, cache.partial, cache.latest = ident, 0, b"", {}
        if st.st_size > cache.offset:
            try:
                with path.open("rb") as fh:
                    fh.seek(cache.offset)
                    data = fh.read(st.st_size - cache.offset)
            except OSError:
                data = b""
            cache.offset += len(data)
            data = cache.partial + data
            complete, _, cache.partial = data.rpartition(b"\n")
            for rec in parse_lines(complete):
                if rec.get("event") != "attempt" or rec.get("outcome") == "dry_run":
                    continue
                fp, at = rec.get("fp"), rec.get("epoch")
                if isinstance(fp, str) and isinstance(at, (int, float)):
                    # an interrupted attempt counts as healed when the re-check proved it
                    healed = rec.get("outcome") == "success" or (rec.get("outcome") == "interrupted"
                                                                 and rec.get("verified") is True)
                    cache.latest[fp] = (float(at), healed)
        return {fp: (True, ok) for fp, (at, ok) in cache.latest.items() if since is None or at >= since}
