"""One action per fault across receivers of the same bot: a lease file in the bot root.

An operator runs receivers in pairs (one per Alertmanager, or both behind a clustered pair), and
Alertmanager delivers at least once to each: every receiver sees every firing. Each receiver's
own policy dedupes only what *it* saw, so before running an action it takes the point's entry
in ``state/trading_readiness_heal.lease`` under an exclusive ``flock`` (read, decide, write, in
one critical section). An entry names its owner (``pid:start-ticks:nonce``), the point, a hash
of the argv (an argv may hold a credential), when it started, when it expires (the action's
timeout plus its verification) and, once done, when it finished. Another receiver refuses the
point (and any point sharing its argv) while a live entry is held, and for the cooldown after it
finished. An entry whose owner died mid-action expires and is taken over: its orphaned process
group is ended first, so the fault still gets one action, not two at once.

The lock is an ``flock`` on the lease file itself, which is never replaced, so a crash releases
it with the process. The JSON is the file's first line, written by one ``write`` before the
file is truncated: a kill between the two leaves old bytes after the newline, which are ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporter.core.fields import decimal
from healers import actions


def owner_alive(owner: object) -> bool:
    """The process named by ``pid:start-ticks[:nonce]`` still runs (a reused pid does not count)."""
    if not isinstance(owner, str):
        return False
    parts = owner.split(":")
    pid = decimal(parts[0], 10)
    if len(parts) < 2 or pid is None or parts[1] in ("", "None"):
        return False
    return str(actions.proc_start_time(pid)) == parts[1]


class LeaseRefused(Exception):  # noqa: N818  (a decision, not a fault)
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # "leased" (a peer's action is in flight) or "cooldown" (a peer just ran it)


class Lease:
    """The bot's lease file, as seen by one receiver (``owner``)."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path = path
        self.owner = owner

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.pread(fd, 65536, len(raw)):
                raw += chunk
            try:
                data = json.loads(raw.split(b"\n", 1)[0] or b"{}")
            except (ValueError, RecursionError):  # corrupt, or nested deeper than the parser goes
                data = {}
            entries = data.get("entries") if isinstance(data, dict) else None
            yield fd, entries if isinstance(entries, dict) else {}
        finally:
            os.close(fd)  # releases the flock

    @staticmethod
    def _write(fd: int, entries: dict[str, Any]) -> None:
        line = (json.dumps({"version": 1, "entries": entries}, sort_keys=True) + "\n").encode()
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))
        os.fsync(fd)

    def acquire(self, fp: str, argv: tuple[str, ...], now: float, hold_seconds: float, cooldown_seconds: float
                ) -> str | None:
        """Take ``fp``'s entry for ``hold_seconds``; LeaseRefused when a peer holds it (or the same
        argv) or ran it within ``cooldown_seconds``. Returns a note when an expired entry of
        another receiver was taken over (its orphaned action group ended), else None."""
        note = None
        action = action_id(argv)
        with self._locked() as (fd, entries):
            for key, e in list(entries.items()):
                if not isinstance(e, dict) or (key != fp and e.get("action") != action):
                    continue
                owner = e.get("owner")
                if owner == self.owner:
                    continue  # ours: the receiver's own policy already decided
                started, expires = _num(e.get("started")), _num(e.get("expires"))
                if e.get("finished") is None and expires > now:
                    raise LeaseRefused("leased", f"another receiver ({owner}) holds the lease for {key} "
                                                 f"for {expires - now:.0f} s more")
                if e.get("finished") is not None and now - started < cooldown_seconds:
                    raise LeaseRefused("cooldown", f"another receiver ({owner}) ran {key}'s action "
                                                   f"{now - started:.0f} s ago")
                if e.get("finished") is None:
                    note = f"took over the expired lease of {key} from {owner}"
                    pgid, start = e.get("pgid"), e.get("proc_start")
                    if isinstance(pgid, int) and pgid > 1 and not owner_alive(owner) and actions.group_alive(pgid):
                        leader = actions.proc_start_time(pgid)
                        if leader is None or start is None or leader == start:
                            actions.end_group(pgid)
                            note += f" and ended its orphaned action (process group {pgid})"
                del entries[key]
            entries[fp] = {"owner": self.owner, "fp": fp, "action": action, "started": round(now, 3),
                           "expires": round(now + hold_seconds, 3), "finished": None, "pgid": None,
                           "proc_start": None}
            self._write(fd, entries)
        return note

    def update(self, fp: str, now: float, hold_seconds: float | None = None, **fields: Any) -> bool:
        """Extend our entry (the action starts: its process group, a fresh expiry). False when
        it is no longer ours (a peer took it over after it expired)."""
        with self._locked() as (fd, entries):
            e = entries.get(fp)
            if not isinstance(e, dict) or e.get("owner") != self.owner:
                return False
            if hold_seconds is not None:
                e["expires"] = round(now + hold_seconds, 3)
            e.update(fields)
            self._write(fd, entries)
            return True

    def release(self, fp: str, now: float, ran: bool) -> None:
        """Our action ended: peers see it finished (its cooldown holds for them) or, when nothing
        ran (its start could not be recorded), the entry is gone."""
        with self._locked() as (fd, entries):
            e = entries.get(fp)
            if not isinstance(e, dict) or e.get("owner") != self.owner:
                return
            if ran:
                e["finished"] = round(now, 3)
                e["expires"] = round(now, 3)
            else:
                del entries[fp]
            self._write(fd, entries)

    def entries(self) -> dict[str, Any]:
        with self._locked() as (_fd, entries):
            return entries


def action_id(argv: tuple[str, ...]) -> str:
    """Which action, as a hash: an argv may hold a credential, and the lease file is not the config."""
    return hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:16]


def _num(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
