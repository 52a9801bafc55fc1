"""Reading the bot's files without being fooled by them.

- JSON state files are rewritten in place by the bot (some non-atomically), so a read can meet a
  half-written file: it is read again before it is called corrupt.
- JSONL logs grow without bound: they are read incrementally from the last offset, rotation and
  truncation are detected by inode and size, and a partial last line waits for the next read.
- The multi-MB cache is re-parsed only when its (inode, size, mtime_ns) changed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FileProblem(Exception):
    """A state file is missing, unreadable or corrupt; ``kind`` is missing/unreadable/corrupt/empty."""

    def __init__(self, kind: str, path: Path, message: str) -> None:
        self.kind, self.path = kind, path
        super().__init__(message)


def read_json(path: Path, retries: int = 3, delay: float = 0.2) -> Any:
    """Parse a JSON file, re-reading a torn file up to ``retries`` times before giving up."""
    last_error = ""
    for attempt in range(max(1, retries)):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise FileProblem("missing", path, f"{path.name} does not exist") from None
        except IsADirectoryError:
            raise FileProblem("unreadable", path, f"{path.name} is a directory") from None
        except OSError as exc:
            raise FileProblem("unreadable", path, f"{path.name} cannot be read: {exc.strerror}") from None
        if not raw.strip():
            last_error = f"{path.name} is empty"
            kind = "empty"
        else:
            try:
                return json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                kind = "corrupt"
                last_error = f"{path.name} is not valid JSON ({_short(exc)})"
        if attempt + 1 < retries:
            time.sleep(delay)
    raise FileProblem(kind, path, last_error + f" after {max(1, retries)} reads")


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 80 else text[:77] + "..."


@dataclass
class _Parsed:
    key: tuple[int, int, int]
    value: Any


class ChangedFileCache:
    """Keeps the parse of a file until its identity (inode, size, mtime) changes."""

    def __init__(self) -> None:
        self._cache: dict[Path, _Parsed] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, parse: Callable[[Path], Any]) -> Any:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise FileProblem("missing", path, f"{path.name} does not exist") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit.key == key:
                return hit.value
        value = parse(path)
        with self._lock:
            self._cache[path] = _Parsed(key, value)
        return value


@dataclass
class TailState:
    inode: int = -1
    offset: int = 0
    partial: bytes = b""


@dataclass
class JsonlTail:
    """Incremental reader of one JSONL log; keeps the last ``keep`` records in memory.

    The first read of a large file starts ``initial_bytes`` from its end: only recent history
    matters and the cost of a read must not grow with the size of the log.
    """

    path: Path
    keep: int = 2000
    initial_bytes: int = 4 << 20
    state: TailState = field(default_factory=TailState)
    records: deque[dict[str, Any]] = field(init=False)
    bad_lines: int = 0
    bytes_read: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.records = deque(maxlen=self.keep)

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last poll; returns the new records."""
        with self._lock:
            return list(self._poll())

    def _poll(self) -> Iterator[dict[str, Any]]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, stat needs the open fd
        except FileNotFoundError:
            raise FileProblem("missing", self.path, f"{self.path.name} does not exist") from None
        except OSError as exc:
            raise FileProblem("unreadable", self.path, f"{self.path.name} cannot be read: {exc.strerror}") from None
        with fh:
            st = os.fstat(fh.fileno())
            s = self.state
            if st.st_ino != s.inode or st.st_size < s.offset:
                # new file (rotation) or truncated in place: start again
                first = s.inode == -1
                s.inode, s.partial = st.st_ino, b""
                s.offset = max(0, st.st_size - self.initial_bytes) if first else 0
                skip_partial_first = s.offset > 0
            else:
                skip_partial_first = False
            if st.st_size == s.offset:
                return
            fh.seek(s.offset)
            chunk = fh.read(st.st_size - s.offset)
            s.offset += len(chunk)
            self.bytes_read += len(chunk)
        data = s.partial + chunk
        lines = data.split(b"\n")
        s.partial = lines.pop()  # b"" when the chunk ended with a newline
        if skip_partial_first and lines:
            lines = lines[1:]
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                self.records.append(rec)
                yield rec
            else:
                self.bad_lines += 1


class Tails:
    """One JsonlTail per path, shared across check cycles (the exporter keeps it for its lifetime)."""

    def __init__(self) -> None:
        self._tails: dict[Path, JsonlTail] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, keep: int = 2000) -> JsonlTail:
        with self._lock:
            tail = self._tails.get(path)
            if tail is None:
                tail = self._tails[path] = JsonlTail(path, keep=keep)
            return tail

    def recent(self, path: Path, keep: int = 2000) -> list[dict[str, Any]]:
        """Poll the log and return the records kept in memory, oldest first."""
        tail = self.get(path, keep)
        tail.poll()
        return list(tail.records)
