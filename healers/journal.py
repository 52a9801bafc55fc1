"""The receiver's journal: every acknowledged delivery on disk before it is answered.

The webhook answers as soon as a delivery is known to be an Alertmanager v4 payload and is on
disk in the journal (``<audit file's stem>.journal`` next to the heal audit, in the bot root):
concurrent requests share one synchronous write (``O_DSYNC``: a group commit), so the answer costs a fraction of a
millisecond of disk, never a policy decision, a lease, an audit record or a log line. Under the
receiver's event loop that write is the loop's own, once per turn of the loop for everything the
turn accepted (no thread hand-off on the way to the disk or back), unless the file is busy; a
flusher thread writes otherwise. A receiver
killed after the answer replays the journal's undecided deliveries when it starts; the policy,
restored from the audit, makes the replay safe (an alert already acted on is a ``duplicate``).

The journal is one JSON object per line: a delivery, or ``{"done": [seq, ...]}`` once those were
decided. A delivery the receiver's check took in one pass is its webhook body as it came
(``seq``, ``at``, ``body``): writing it costs no encoding, and its alerts are made from the
checked payload by the dispatcher, off the event loop. Any other is its alerts as deciding needs
them (``seq``, ``at``, ``source``, ``alerts``). It is bounded: emptied whenever nothing is
pending, rewritten with only the pending deliveries when it grows past COMPACT_BYTES, and rewritten
on start. A torn last line (a kill mid-write, before that delivery was answered) is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from exporter.core import audit
from healers.alerts import Alert, Payload, check_payload, payload_alerts, payload_source

#: rewrite the journal with only its pending deliveries once it is larger than this
COMPACT_BYTES = 1024 * 1024
#: a journal larger than this on start is not ours (or a bug): only its end is replayed
MAX_REPLAY_BYTES = 64 * 1024 * 1024
#: acknowledged alerts waiting for a decision at most; beyond, deliveries get 503 (Alertmanager retries)
MAX_PENDING_ALERTS = 100_000
#: bytes of journal lines waiting for a decision at most (a delivery's line holds its body): beyond,
#: 503; well under MAX_REPLAY_BYTES, so a restart replays every one of them
MAX_PENDING_BYTES = 32 * 1024 * 1024
#: receivers of one bot running at once, each with its own journal
MAX_SLOTS = 16


class InboxFull(Exception):  # noqa: N818  (a refusal, answered 503)
    """Too many acknowledged alerts wait for a decision."""


@dataclass
class Delivery:
    """One acknowledged webhook delivery; ``decisions`` fill in as the dispatcher decides."""

    at: float
    source: str
    alerts: list[Alert]
    seq: int = 0
    decisions: list[str | None] = field(default_factory=list)
    replayed: bool = False
    #: a delivery journaled as its body: the checked payload its ``alerts`` are made from by
    #: ``make_alerts`` (on the dispatcher's thread, never the event loop's); None once they are
    payload: Payload | None = None

    def __post_init__(self) -> None:
        if not self.decisions:
            n = len(self.payload.alerts) if self.payload is not None else len(self.alerts)
            self.decisions = [None] * n

    def make_alerts(self, keep: frozenset[str]) -> None:
        """The alerts of a delivery journaled as its body (each with the labels named in ``keep``)."""
        if self.payload is not None:
            self.alerts = payload_alerts(self.payload, keep)[0]
            self.payload = None

    def decided(self) -> bool:
        return all(d is not None for d in self.decisions)

    def view(self, full: bool = False) -> dict[str, Any]:
        """For ``/api/heals``: counts by decision, or (``full``) the decision of every alert."""
        counts: dict[str, int] = {}
        for d in self.decisions:
            counts[d or "pending"] = counts.get(d or "pending", 0) + 1
        out: dict[str, Any] = {"delivery": self.seq, "received": audit.iso(self.at), "alerts": len(self.decisions),
                               "source": self.source, "state": "decided" if self.decided() else "pending",
                               "replayed": self.replayed, "counts": counts}
        if full:
            out["decisions"] = list(self.decisions)
        return out


def _encode(d: Delivery) -> bytes:
    """A delivery's short journal line: each alert as ``[status, fp, fingerprint, starts_at,
    labels]``, where the labels are only those named in healer.match_labels (what the alert kept
    when it was parsed), no annotations: what deciding needs. Used for a delivery that was not
    journaled as its body, and for what a restart replays."""
    rec = {"seq": d.seq, "at": round(d.at, 3), "source": d.source, "alerts": d.alerts}
    try:
        return _encoder.encode(rec) + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (valid JSON, not UTF-8): json escapes it
        return (json.dumps({**rec, "alerts": [list(msgspec.structs.astuple(a)) for a in d.alerts]},
                           separators=(",", ":")) + "\n").encode()


_encoder = msgspec.json.Encoder()


def one_line(body: bytes) -> bool:
    """Whether ``body`` can be a journal line's field as it is: no line break (a replay splits
    lines at CR as well as LF, and JSON may use either as whitespace)."""
    return b"\n" not in body and b"\r" not in body


#: a delivery journaled as its body (``submit_checked``), and how a replay reads it back
_BODY_LINE_FORMAT = b'{"seq":%d,"at":%.3f,"body":%b}\n'
_BODY_LINE = re.compile(rb'\{"seq":(\d{1,18}),"at":(\d{1,15}\.\d{3}),"body":(.*)\}')


def _from_body(seq: int, at: float, body: bytes, keep: frozenset[str]) -> Delivery | None:
    payload = check_payload(body)
    if payload is None:
        return None
    alerts, source = payload_alerts(payload, keep)
    return Delivery(at, source, alerts, seq=seq, replayed=True)


def _decode(rec: dict[str, Any]) -> Delivery | None:
    try:
        alerts = [Alert(str(s), None if fp is None else str(fp), str(f), str(t),
                        tuple((str(k), str(v)) for k, v in labels)) for s, fp, f, t, labels in rec["alerts"]]
        return Delivery(float(rec["at"]), str(rec.get("source", "")), alerts, seq=int(rec["seq"]), replayed=True)
    except (KeyError, TypeError, ValueError):
        return None  # not a delivery line of ours


def _run_now(fn: Callable[[], None]) -> None:
    fn()


#: told once a delivery is on disk (``failed`` None) or could not be written (the error):
#: ``told(seq, alerts, failed)``, with the number the journal gave it and its count of alerts
Synced = Callable[[int, int, OSError | None], None]

#: a numbered delivery waiting for the next write: (seq, its journal line, its alerts, told, item)
_Waiting = tuple[int, bytes, int, Synced, Delivery]


def journal_path(audit_file: Path, slot: int = 0) -> Path:
    """``logs/trading_readiness_heals.jsonl`` -> ``logs/trading_readiness_heals.journal`` (slot 0),
    ``...journal.1`` (slot 1): one per receiver of the bot running at once."""
    path = audit_file.with_name(audit_file.stem + ".journal")
    if path == audit_file:
        path = audit_file.with_name(audit_file.name + ".journal")
    return path if slot == 0 else path.with_name(f"{path.name}.{slot}")


class Journal(audit.AuditLog):
    """This receiver's journal file and the deliveries acknowledged but not yet decided.

    Receivers of one bot may share the audit file, never a journal: each holds an exclusive
    ``flock`` on the first free slot for its lifetime, so a crashed receiver's journal is free
    and adopted (replayed) by the next receiver that starts, while a live peer's is left alone.
    """

    def __init__(self, audit_file: Path) -> None:
        super().__init__(journal_path(audit_file))
        self.audit_file = audit_file
        self.pending: OrderedDict[int, bytes] = OrderedDict()  # seq -> its journal line
        self.pending_alerts = 0
        self.pending_bytes = 0
        self._alerts: dict[int, int] = {}
        #: the labels an alert keeps (healer.match_labels' names), for deliveries journaled as their body
        self.keep_labels: frozenset[str] = frozenset()
        self._next = 1
        self._fd: int | None = None  # holds the slot's flock
        #: the flusher's descriptor of the journal: appends, and each write is on disk when it
        #: returns (O_DSYNC), so a batch costs the flusher one system call (each call is a wait
        #: for the GIL on the way back while the event loop holds it); reopened after a rewrite
        self._append: int | None = None
        self._append_ino = 0
        #: numbered, waiting for the flusher's synced write
        self._waiting: list[_Waiting] = []
        #: guards the in-memory state (pending, waiting, numbering) and is never held for I/O, so a
        #: delivery is numbered and queued without waiting for the flusher's write; ``lock`` guards
        #: the file (taken first when both are needed)
        self._state = threading.Lock()
        self._flush = threading.Condition(self._state)
        #: how the flusher hands a synced batch's completion over: to the thread waiting for them
        #: (an event loop's ``call_soon_threadsafe``: one hand-off per batch, not one per delivery)
        self.completer: Callable[[Callable[[], None]], object] = _run_now
        #: when set (an event loop's ``call_soon``), what is submitted in one turn of the loop is
        #: written and synced by the loop itself at the end of that turn, in one ``write``, and
        #: answered right after: no thread takes the GIL from the loop to write it or to hand it
        #: back. Only while the journal is being rewritten or marked (``lock`` held) does the loop
        #: leave the turn to the flusher rather than wait
        self.batcher: Callable[[Callable[[], None]], object] | None = None
        self._kick_pending = False
        #: told once per synced batch, after the deliveries' own callbacks (in the same call, before
        #: anything else can ask for them), of the deliveries now on disk, in order: one hand-over
        #: for the batch rather than one per delivery
        self.synced: Callable[[list[Delivery]], None] | None = None
        #: told once per synced batch, after the deliveries' own callbacks (so what it wakes, such
        #: as the dispatcher, does not take the GIL from the answers)
        self.answered: Callable[[list[Delivery]], None] | None = None
        #: told (a one-line message) when a delivery's own callback raised; the batch's other
        #: deliveries are answered and handed over all the same
        self.on_error: Callable[[str], None] | None = None

    def _take_slot(self) -> None:
        for slot in range(MAX_SLOTS):
            path = journal_path(self.audit_file, slot)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino == path.stat().st_ino:  # not a copy a live owner just replaced
                    self.path, self._fd = path, fd
                    return
            except OSError:
                pass
            os.close(fd)
        raise OSError(errno.EBUSY, f"all {MAX_SLOTS} journal slots next to {self.audit_file} are in use")

    def close(self) -> None:
        """Release the slot (what waits for an fsync still gets it); the flusher ends."""
        with self._flush:
            fd, self._fd = self._fd, None
            self._flush.notify_all()
        with self.lock:
            self._drop_append()
        if fd is not None:
            os.close(fd)

    def _drop_append(self) -> None:
        """Forget the append descriptor (the caller holds ``lock``): the file was replaced or closed."""
        fd, self._append = self._append, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write_synced(self, data: bytes) -> None:
        """Append ``data`` in one ``write`` that returns once it is on disk (the caller holds
        ``lock``); a short write (a disk that filled up) is cut off again and raised as ENOSPC."""
        fd = self._append
        if fd is not None:
            try:  # the file this descriptor writes to must still be the journal (not moved or deleted)
                same = os.stat(self.path).st_ino == self._append_ino
            except FileNotFoundError:
                same = False
            if not same:
                self._drop_append()
                fd = None
        if fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._append = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_DSYNC | os.O_CLOEXEC,
                                        0o640)
            self._append_ino = os.fstat(fd).st_ino
        n = os.write(fd, data)
        if n != len(data):
            os.ftruncate(fd, os.fstat(fd).st_size - n)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a short write)")

    def recover(self) -> list[Delivery]:
        """Take a journal slot and return the undecided deliveries a previous receiver
        acknowledged in it, oldest first; the file is rewritten with only them (which also
        drops a torn last line)."""
        self._take_slot()
        with self.path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - MAX_REPLAY_BYTES))
            data = fh.read()
        found: dict[int, Delivery] = {}
        done: set[int] = set()
        for raw in data.splitlines():
            if (m := _BODY_LINE.fullmatch(raw)) is not None:
                # the body is checked again by the one-pass check that took it on arrival (not
                # by json, whose nesting limit depends on the stack): the same alerts, or none
                # for a line torn by a kill (a body cut short is never a whole JSON object)
                if (d := _from_body(int(m[1]), float(m[2]), m[3], self.keep_labels)) is not None:
                    found[d.seq] = d
                continue
            for rec in audit.parse_lines(raw):
                if isinstance(rec.get("done"), list):
                    done.update(s for s in rec["done"] if isinstance(s, int))
                elif (d := _decode(rec)) is not None:
                    found[d.seq] = d
        out = [found[s] for s in sorted(found) if s not in done]
        with self.lock, self._state:
            self._next = max([*found, *done, 0]) + 1
            for d in out:
                self._hold(d.seq, _encode(d), len(d.alerts))
        with self.lock:
            self._rewrite()
        threading.Thread(target=self._flusher, name="heal-journal-flush", daemon=True).start()
        return out

    def submit(self, delivery: Delivery, on_synced: Synced) -> None:
        """Number the delivery and hand it to the flusher thread; ``on_synced(seq, alerts,
        failed)`` is called (through ``completer``) once it is on disk, or could not be written.
        The flusher writes everything handed to it in one ``write`` that returns once it is on
        disk (a group commit), so no request waits on the disk by itself, and the caller never
        touches it. InboxFull when too many alerts already wait."""
        with self._state:
            delivery.seq = self._next
            line = _encode(delivery)
            self._room(len(delivery.alerts), len(line))  # refused: its number is given to the next one
            self._next += 1
            kick = self._queue(delivery.seq, line, len(delivery.alerts), on_synced, delivery)
        if kick is not None:
            kick(self._write_turn)

    def submit_checked(self, payload: Payload, body: bytes, answer: Synced) -> None:
        """``submit`` for a delivery ``check_payload`` took (its ``body``, ``one_line``):
        journaled as the body it came as, no encoding; ``answer(seq, alerts, failed)``
        once it is on disk (``failed`` None) or could not be written. Its Delivery, handed to
        ``synced`` and ``answered``, holds ``payload``: its alerts are made by the dispatcher
        (``Delivery.make_alerts``). InboxFull when too many alerts or bytes already wait."""
        if not one_line(body):
            raise ValueError("a body journaled as it came must hold no line break")
        n, at = len(payload.alerts), time.time()
        with self._state:
            self._room(n, len(body) + 48)
            seq = self._next
            self._next += 1
            line = _BODY_LINE_FORMAT % (seq, at, body)
            kick = self._queue(seq, line, n, answer,
                               Delivery(at, payload_source(payload), [], seq, [None] * n, payload=payload))
        if kick is not None:
            kick(self._write_turn)

    def _queue(self, seq: int, line: bytes, alerts: int, told: Synced, item: Delivery
               ) -> Callable[[Callable[[], None]], object] | None:
        """Hold a numbered line and queue it for the next write (the caller holds ``_state``):
        the flusher is woken, or the batcher returned when this turn of the event loop has not
        asked it for its write yet (the caller asks it once the state lock is released)."""
        self._hold(seq, line, alerts)
        self._waiting.append((seq, line, alerts, told, item))
        if self.batcher is None:
            self._flush.notify_all()
            return None
        if self._kick_pending:
            return None
        self._kick_pending = True
        return self.batcher

    def _room(self, alerts: int, size: int) -> None:
        """InboxFull unless ``alerts`` more alerts in a line of ``size`` bytes fit the bounds (the
        caller holds ``_state``)."""
        if self.pending_alerts + alerts > MAX_PENDING_ALERTS:
            raise InboxFull(f"{self.pending_alerts} acknowledged alerts wait for a decision")
        if self.pending_bytes + size > MAX_PENDING_BYTES:
            raise InboxFull(f"{self.pending_bytes} bytes of acknowledged deliveries wait for a decision")

    def _write_turn(self) -> None:
        """Where ``batcher`` runs it (the event loop, after the turn's callbacks): everything
        waiting written and synced in one call, and each delivery told at once; while the file is
        busy (a rewrite, a done mark) the flusher writes it instead, when the file is free."""
        with self._flush:
            self._kick_pending = False
            if not self._waiting:
                return
            if not self.lock.acquire(blocking=False):
                self._flush.notify_all()  # never waits for the lock on the event loop
                return
            batch, self._waiting = self._waiting, []
        self._complete(batch, self._write_batch(batch, held=True))

    def _flusher(self) -> None:
        while True:
            with self._flush:
                while not self._waiting and self._fd is not None:
                    self._flush.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting, []
            # new deliveries are numbered and queued meanwhile: the next batch
            self.completer(functools.partial(self._complete, batch, self._write_batch(batch)))

    def _write_batch(self, batch: list[_Waiting], held: bool = False
                     ) -> OSError | None:
        """The batch's write and its sync in one call (a group commit); the error if it failed.
        ``held``: the caller holds ``lock``, released here."""
        if not held:
            self.lock.acquire()
        try:
            self._write_synced(b"".join([w[1] for w in batch]))
            return None
        except OSError as exc:  # a full disk: nothing of the batch is acknowledged
            failed = exc
            self._drop_append()  # the next batch opens the file again (it may be gone)
        finally:
            self.lock.release()
        with contextlib.suppress(OSError):
            self.done([w[0] for w in batch])  # never answered 2xx: Alertmanager sends them again
        return failed

    def _complete(self, batch: list[_Waiting], failed: OSError | None) -> None:
        """Where ``completer`` runs it: each delivery told (answered), then, when the batch is on
        disk, its deliveries handed over in one call each to ``synced`` and ``answered``."""
        error: Exception | None = None
        for seq, _, n, told, _ in batch:
            try:
                told(seq, n, failed)
            except Exception as exc:  # noqa: BLE001  (one answer's fault never costs the others theirs)
                error = error or exc
        if error is not None and self.on_error is not None:
            self.on_error(f"a journaled delivery could not be answered: {type(error).__name__}: {error}")
        if failed is not None:
            return
        deliveries = [item for _, _, _, _, item in batch]
        lost: Exception | None = None
        for hand in (self.synced, self.answered):  # on disk: decided whatever became of an answer
            if hand is not None:
                try:
                    hand(deliveries)
                except Exception as exc:  # noqa: BLE001  (the other hand-over still happens)
                    lost = lost or exc
        if lost is not None and self.on_error is not None:
            self.on_error(f"journaled deliveries could not be handed over: {type(lost).__name__}: {lost}")

    def _hold(self, seq: int, line: bytes, n: int) -> None:
        self.pending[seq] = line
        self._alerts[seq] = n
        self.pending_alerts += n
        self.pending_bytes += len(line)

    def done(self, seqs: list[int]) -> None:
        """These deliveries are decided (their records are on disk): they are never replayed."""
        if not seqs:
            return
        with self.lock:
            with self._state:
                for s in seqs:
                    if (line := self.pending.pop(s, None)) is not None:
                        self.pending_alerts -= self._alerts.pop(s, 0)
                        self.pending_bytes -= len(line)
                empty = not self.pending
            if empty:
                self._rewrite()  # nothing pending: the journal is emptied
                return
            self._write_line((json.dumps({"done": seqs}) + "\n").encode())
            if self.path.stat().st_size > COMPACT_BYTES:
                self._rewrite()

    def _rewrite(self) -> None:
        """The journal holds exactly the pending deliveries (the caller holds ``lock``); the new
        copy is locked before it replaces the old one, so the slot never looks free. A delivery
        numbered but not yet written by the flusher is in the copy already, and the flusher's
        later line for it is a duplicate that a replay reads once."""
        with self._state:
            data = b"".join(self.pending.values())
        if not data:
            if self.path.stat().st_size:
                os.truncate(self.path, 0)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        audit.fsync_path(self.path.parent)
        self._drop_append()  # the old file is gone: the next batch appends to the new one
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
