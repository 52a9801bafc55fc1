"""Reading the bot's files without being fooled by them.

- JSON state files are rewritten in place by the bot (some non-atomically), so a read can meet a
  half-written file: it is read again before it is called corrupt.
- JSONL logs grow without bound: they are read incrementally from the last offset, rotation and
  truncation are detected by inode and size, and a partial last line waits for the next read.
- The multi-MB cache is re-parsed only when its (inode, size, mtime_ns) changed, once however
  many checks ask for it at the same moment.
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

import msgspec

_DECODER = msgspec.json.Decoder()


def loads(raw: bytes | bytearray) -> Any:
    """``json.loads(raw)``, decoded by msgspec where it can (about three times faster on a log
    line): msgspec accepts strict UTF-8 JSON only, and anything it refuses (``NaN``, ``1e400``, a
    lone surrogate, a BOM, another encoding, nesting too deep for it) goes to ``json.loads``,
    which decodes it as before or raises its own reason. Both build the same values: dict, list,
    str, int of any size, float, bool, None, the last of duplicate keys."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return json.loads(raw)


class FileProblem(Exception):
    """A state file is missing, unreadable or corrupt; ``kind`` is missing/unreadable/corrupt/empty."""

    def __init__(self, kind: str, path: Path, message: str) -> None:
        self.kind, self.path = kind, path
        super().__init__(message)


class ReadBuffer:
    """One file read, again and again, into the same memory.

    ``Path.read_bytes`` of a multi-MB file allocates a new buffer each time, and every other read
    met fresh pages from the kernel: about 1,400 page faults, 3-4 ms of CPU for the 6 MB cache.
    Here the bytes go into one ``bytearray`` that is kept. It is written over only when nothing
    views it any more: a ``memoryview`` or a ``msgspec.Raw`` decoded from it holds an export,
    which refuses a resize, so a buffer still in use is left to its users and a new one taken.
    What :meth:`read` returns is valid until the next read.
    """

    #: what is added at a time when the file grew while it was being read
    GROW = 1 << 16

    def __init__(self) -> None:
        self._buf = bytearray()

    def read(self, path: Path) -> bytearray:
        """The whole file at ``path`` (as ``Path.read_bytes`` reads it, with its errors)."""
        buf = self._free_buffer()
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _set_len(buf, size + 1)  # one byte more: a file that grew is read to its end
            got = 0
            while True:
                if got == len(buf):
                    _set_len(buf, got + self.GROW)
                with memoryview(buf) as view, view[got:] as rest:
                    n = f.readinto(rest)
                if not n:
                    break
                got += n
        _set_len(buf, got)
        return buf

    def _free_buffer(self) -> bytearray:
        try:
            self._buf.append(0)  # a resize, refused while an export of the buffer is alive
            self._buf.pop()
        except BufferError:
            self._buf = bytearray()  # still viewed by what decoded it: never written over
        return self._buf


def _set_len(buf: bytearray, n: int) -> None:
    """Make ``buf`` ``n`` bytes long; within its allocation this moves nothing."""
    if len(buf) > n:
        del buf[n:]
    elif len(buf) < n:
        buf.extend(bytes(n - len(buf)))


def read_json(path: Path, retries: int = 3, delay: float = 0.2,
              decode: Callable[[bytes | bytearray], Any] = loads,
              read: Callable[[Path], bytes | bytearray] = Path.read_bytes) -> Any:
    """Parse a JSON file, re-reading a torn file up to ``retries`` times before giving up.

    ``decode`` turns the bytes into a value and raises ValueError (or UnicodeDecodeError) with
    ``json.loads``'s reason when they are not JSON (a partial decoder of a large file). ``read``
    reads the file (:meth:`ReadBuffer.read` keeps reading a large one into the same memory).
    """
    last_error = ""
    for attempt in range(max(1, retries)):
        try:
            raw = read(path)
        except FileNotFoundError:
            raise FileProblem("missing", path, f"{path.name} does not exist") from None
        except IsADirectoryError:
            raise FileProblem("unreadable", path, f"{path.name} is a directory") from None
        except OSError as exc:
            raise FileProblem("unreadable", path, f"{path.name} cannot be read: {exc.strerror}") from None
        if not raw or raw.isspace():  # not raw.strip(): that copies a multi-MB file ending in a newline
            last_error = f"{path.name} is empty"
            kind = "empty"
        else:
            try:
                return decode(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
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
    key: tuple[int, int, int] | None = None
    value: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ChangedFileCache:
    """Keeps the parse of a file until its identity (inode, size, mtime) changes.

    ``kind`` separates different parses of one file (the raw JSON of the weights file for FP-2.1,
    a torn-read-counting parse for FP-2.6): without it the first parser's result would be handed
    to the second. ``parses`` counts real parses, so tests can prove an unchanged file is not
    parsed again.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], _Parsed] = {}
        self._lock = threading.Lock()
        self.parses = 0

    def get(self, path: Path, parse: Callable[[Path], Any], kind: str = "") -> Any:
        with self._lock:
            slot = self._cache.setdefault((path, kind), _Parsed())
        # one parse per version of the file: the checks that ask for it at the same moment
        # (several run concurrently) wait for the parse in flight instead of each parsing it
        with slot.lock:
            key = _identity(path)
            if slot.key == key:
                return slot.value
            value = parse(path)
            slot.key, slot.value = key, value
        with self._lock:
            self.parses += 1
        return value


def _identity(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileProblem("missing", path, f"{path.name} does not exist") from None
    except OSError as exc:
        raise FileProblem("unreadable", path, f"{path.name} cannot be read: {exc.strerror}") from None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class TailState:
    inode: int = -1
    offset: int = 0
    partial: bytes = b""
    #: the file's first bytes when we started reading it: a log truncated and regrown past our
    #: offset between two polls keeps its inode and size order, but not its first line
    head: bytes = b""


HEAD_BYTES = 128


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
    #: records appended since this reader was created (a consumer compares it with what it saw)
    appended: int = 0
    #: bumped when the reader lost continuity (rotation, truncation, a gap skipped): consumers
    #: that count every record (the UW quota) must recount from the file
    generation: int = 0
    #: a single poll reads at most this much; a bigger backlog is skipped to its last part
    max_read_bytes: int = 64 << 20
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.records = deque(maxlen=self.keep)

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last poll; returns the new records."""
        with self._lock:
            return list(self._poll())

    def snapshot(self) -> tuple[list[dict[str, Any]], int, int]:
        """Poll, then (kept records oldest first, ``appended``, ``generation``), all consistent."""
        with self._lock:
            for _ in self._poll():
                pass
            return list(self.records), self.appended, self.generation

    def kept(self) -> list[dict[str, Any]]:
        """The records kept in memory, oldest first, without reading the file."""
        with self._lock:
            return list(self.records)

    def version(self) -> tuple[int, int]:
        """Poll, then (``appended``, ``generation``): cheap change detection without copying records."""
        with self._lock:
            for _ in self._poll():
                pass
            return self.appended, self.generation

    def consumed(self) -> tuple[int, int, int]:
        """Poll, then (end offset of the complete lines read, ``appended``, ``generation``).

        Lines before that offset are exactly the records counted in ``appended``, so a consumer
        that recounts the file up to it and then follows ``since(appended)`` misses nothing.
        """
        with self._lock:
            for _ in self._poll():
                pass
            return self.state.offset - len(self.state.partial), self.appended, self.generation

    def since(self, seen: int) -> tuple[list[dict[str, Any]], bool]:
        """Records appended after a consumer saw ``seen`` of them (call after ``poll``).

        The flag is False when some of them are no longer kept in memory: the consumer must
        fall back to reading the file itself.
        """
        with self._lock:
            new = self.appended - seen
            if new <= 0:
                return [], new == 0
            if new > len(self.records):
                return list(self.records), False
            return list(self.records)[-new:], True

    def _poll(self) -> Iterator[dict[str, Any]]:
        yield from self._read()
        if self.bad_lines and not self.records:
            # a log of nothing but garbage is not an empty log: "no errors in 0 cycles" would be
            # a verdict about a file nobody could read
            raise FileProblem("corrupt", self.path, f"{self.path.name} is corrupt: {self.bad_lines} line(s), "
                                                    "none a JSON object")

    def _read(self) -> Iterator[dict[str, Any]]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, stat needs the open fd
        except FileNotFoundError:
            raise FileProblem("missing", self.path, f"{self.path.name} does not exist") from None
        except OSError as exc:
            raise FileProblem("unreadable", self.path, f"{self.path.name} cannot be read: {exc.strerror}") from None
        with fh:
            st = os.fstat(fh.fileno())
            s = self.state
            restart = st.st_ino != s.inode or st.st_size < s.offset
            if not restart and st.st_size > s.offset:
                # same inode, grown: make sure it was not truncated and regrown past our offset
                fh.seek(0)
                head = fh.read(min(HEAD_BYTES, st.st_size))
                self.bytes_read += len(head)
                restart = not head.startswith(s.head)
                if not restart:
                    s.head = head
            skip_partial_first = False
            if restart:
                # new file (rotation, a replaced file) or truncated in place: start again, and
                # forget the old file's records, so a long-lived reader says what a fresh one
                # (a restarted exporter, a one-shot `check`) says about the same file
                first = s.inode == -1
                if not first:
                    self.generation += 1
                    self.records.clear()
                s.inode, s.partial = st.st_ino, b""
                s.offset = max(0, st.st_size - self.initial_bytes) if first else 0
                fh.seek(0)
                s.head = fh.read(min(HEAD_BYTES, st.st_size))
                self.bytes_read += len(s.head)
                skip_partial_first = s.offset > 0
            if st.st_size - s.offset > self.max_read_bytes:
                # a backlog larger than we would ever keep: only its end matters; say we skipped
                s.offset, s.partial = st.st_size - self.max_read_bytes, b""
                skip_partial_first = True
                self.generation += 1
            if st.st_size == s.offset:
                return
            if skip_partial_first:
                # keep the first line when the offset happens to be a line start
                fh.seek(s.offset - 1)
                if fh.read(1) == b"\n":
                    skip_partial_first = False
                self.bytes_read += 1
            fh.seek(s.offset)
            chunk = fh.read(st.st_size - s.offset)
            s.offset += len(chunk)
            self.bytes_read += len(chunk)
        data = s.partial + chunk
        lines = data.split(b"\n")
        s.partial = lines.pop()  # b"" when the chunk ended with a newline
        if skip_partial_first and lines:
            lines = lines[1:]
        if len(lines) > self.keep:
            # only the last `keep` records can be kept: parsing the rest (a first read, a burst)
            # would cost CPU for nothing. They still count as appended, so since() tells a
            # consumer that counts every record to recount from the file.
            self.appended += len(lines) - self.keep
            lines = lines[-self.keep:]
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                self.records.append(rec)
                self.appended += 1
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
        # copied under the reader's lock: another check may be appending to the deque right now
        return self.get(path, keep).snapshot()[0]


def find_offset(path: Path, key: Callable[[dict[str, Any]], float | None], target: float,
                max_probes: int = 64) -> int:
    """First byte offset of a line whose ``key`` is >= ``target`` in a time-ordered JSONL file.

    A binary search over byte offsets (each probe reads one line), so finding today's first
    quota record in a 1 GB log costs ~30 small reads, not a scan. Lines without a key are
    skipped forward. Returns the file size when every line is older.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size

        def line_at(pos: int) -> tuple[int, float | None, int]:
            """(start of the first full line at or after pos, its key, end of that line)."""
            fh.seek(pos)
            if pos > 0:
                fh.seek(pos - 1)
                if fh.read(1) != b"\n":
                    fh.readline()
            while True:
                start = fh.tell()
                line = fh.readline()
                if not line:
                    return size, None, size
                if not line.endswith(b"\n"):
                    return start, None, size  # a partial last line is not evidence
                try:
                    rec = loads(line)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    continue
                k = key(rec) if isinstance(rec, dict) else None
                if k is not None:
                    return start, k, fh.tell()

        lo, hi = 0, size
        for _ in range(max_probes):
            if lo >= hi:
                break
            mid = (lo + hi) // 2
            start, k, end = line_at(mid)
            if k is None or start >= hi:
                hi = mid
            elif k < target:
                lo = end
            else:
                hi = mid
        start, k, _end = line_at(lo)
        while k is not None and k < target:
            start, k, _end = line_at(_end)
        return start
