"""Attempts a crashed receiver left behind: the audit's started records without an outcome, and
whether their process group still runs (it is waited for, never started twice)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from healers import actions
from healers.lease import owner_alive


def owner_id(pid: int) -> str:
    """``pid:start-ticks:nonce``: one receiver, never a later process that reuses the pid (and
    not another receiver in the same process)."""
    return f"{pid}:{actions.proc_start_time(pid)}:{secrets.token_hex(4)}"


@dataclass
class Orphan:
    """A start record without an outcome whose receiver is gone."""

    fp: str
    fingerprint: str
    starts_at: str
    at: float
    pgid: int | None = None
    proc_start: int | None = None
    spawned_at: float | None = None

    owner: str = ""

    def same_leader(self) -> bool:
        """The recorded leader is still this process, or gone while its group lives on (a pgid is
        never reused while its group has members)."""
        now = actions.proc_start_time(self.pgid) if self.pgid is not None else None
        return now is None or self.proc_start is None or now == self.proc_start


def attempt_marker(owner: str, fp: str, fingerprint: str, starts_at: str) -> str:
    """The attempt's id in its action's environment: a hash, so no alert data reaches the action."""
    return hashlib.sha256(f"{owner}|{fp}|{fingerprint}|{starts_at}".encode()).hexdigest()[:24]


def find_orphans(records: list[dict[str, Any]]) -> list[Orphan]:
    """Starts (oldest first) with no later outcome, whose owner process is no longer alive."""
    # one action per point at a time: the latest start of each point is the only one that can be open
    open_: dict[str, tuple[Orphan, object]] = {}
    for rec in records:
        fp, at = rec.get("fp"), rec.get("epoch")
        if not isinstance(fp, str) or not isinstance(at, (int, float)):
            continue
        fingerprint, starts_at = str(rec.get("fingerprint", "")), str(rec.get("starts_at", ""))
        event = rec.get("event")
        cur = open_.get(fp)
        same = cur is not None and (cur[0].fingerprint, cur[0].starts_at) == (fingerprint, starts_at)
        if event == "started":
            owner = rec.get("owner")
            open_[fp] = (Orphan(fp, fingerprint, starts_at, float(at), owner=str(owner or "")), owner)
        elif event == "spawned" and cur is not None and same:
            orphan = cur[0]
            pgid, start = rec.get("pgid"), rec.get("proc_start")
            orphan.pgid = pgid if isinstance(pgid, int) and pgid > 1 else None
            orphan.proc_start = start if isinstance(start, int) else None
            orphan.spawned_at = float(at)
        elif event == "attempt" and same:
            open_.pop(fp, None)
    return [orphan for orphan, owner in open_.values() if not owner_alive(owner)]
