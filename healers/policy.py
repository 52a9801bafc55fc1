"""Which action heals which failure point, and whether it may run now.

The alert's ``fp`` label only *selects* a configured action by exact lookup in the config
mapping; no label or annotation value ever reaches an argv, an environment variable or a path.
The state here (dedupe keys, cooldowns, attempt windows, give-ups) is rebuilt from the audit
file on start, so a restarted receiver does not heal twice.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from exporter.core.config import Config

DEFAULT_TIMEOUT = 60.0
DEFAULT_COOLDOWN = 300.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_WINDOW = 3600.0

#: reasons for trading_healer_skipped_total
REASONS = ("duplicate", "cooldown", "gave_up", "no_healer", "unknown_fp", "dry_run", "resolved", "disabled", "busy",
           "other_bot", "leased")
#: outcomes for trading_healer_attempts_total; ``interrupted``: the receiver died while the action ran
#: and the restarted receiver ended it and re-checked the point
OUTCOMES = ("success", "failed", "timeout", "unverified", "dry_run", "interrupted")

#: A point's lifecycle. Every transition is listed here and made by :meth:`Policy.move`; every
#: exit from a non-idle phase leads back to idle (the worker's ``finally``), so no exception,
#: timeout or full disk can leave a point reserved for ever.
PHASES = ("idle", "queued", "running", "verifying")
TRANSITIONS: dict[str, frozenset[str]] = {
    "idle": frozenset({"queued"}),
    # idle: the start record could not be written; verifying: a restarted receiver re-checks a
    # point whose accepted action never started before it replays it
    "queued": frozenset({"running", "verifying", "idle"}),
    "running": frozenset({"verifying", "idle"}),
    "verifying": frozenset({"idle"}),
}
#: beyond an action's timeout and verification: the kill grace and a margin for a loaded host
STUCK_MARGIN_SECONDS = 10.0


class TransitionError(RuntimeError):
    """A phase change the state machine does not allow: a bug, reported, never silently applied."""


@dataclass(frozen=True)
class HealerSpec:
    fp: str
    name: str
    argv: tuple[str, ...]
    timeout_seconds: float
    cooldown_seconds: float
    max_attempts: int
    window_seconds: float
    verify_timeout_seconds: float
    enabled: bool


def specs_from_config(config: Config) -> dict[str, HealerSpec]:
    """Every configured healer (enabled or not) of a point whose catalog entry names one."""
    out: dict[str, HealerSpec] = {}
    verify_default = float(config["healer"]["verify_timeout_seconds"])
    for fp, spec in config["healers"].items():
        point = config.catalog.points.get(fp)
        if point is None or point.healer is None:
            continue  # config validation refuses these; never heal them even if it did not
        # a named action (``action: restart-uw-daemon``) stands for its argv under ``actions``
        spec = {**config["actions"].get(spec["action"], {}), **spec} if "action" in spec else spec
        if "systemd_restart" in spec:
            argv: tuple[str, ...] = ("systemctl", "restart", str(spec["systemd_restart"]))
        else:
            argv = tuple(str(a) for a in spec.get("run", ()))
        out[fp] = HealerSpec(
            fp=fp,
            name=point.healer,
            argv=argv,
            timeout_seconds=float(spec.get("timeout_seconds", DEFAULT_TIMEOUT)),
            cooldown_seconds=float(spec.get("cooldown_seconds", DEFAULT_COOLDOWN)),
            max_attempts=int(spec.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
            window_seconds=float(spec.get("window_seconds", DEFAULT_WINDOW)),
            verify_timeout_seconds=float(spec.get("verify_timeout_seconds", verify_default)),
            enabled=bool(spec.get("enabled", True)) and bool(argv),
        )
    return out


@dataclass
class FpState:
    last_start: float | None = None
    #: (alert fingerprint, startsAt) -> when it was last acted on
    keys: dict[tuple[str, str], float] = field(default_factory=dict)
    attempts: deque[float] = field(default_factory=deque)
    gave_up: bool = False
    #: one of PHASES; ``since`` is when the point left idle (the stuck clock runs from there)
    phase: str = "idle"
    since: float | None = None
    #: bumped by every reservation: a worker acts on the point only while it holds the current one
    #: (a reservation released as stuck, then taken again, is not its any more)
    gen: int = 0
    #: what admit() changed, so a reservation whose start record failed can be undone
    undo: tuple[float | None, dict[tuple[str, str], float], int, float | None] | None = None


class Policy:
    """Thread-safe admission: one call to :meth:`admit` decides and reserves atomically."""

    def __init__(self, specs: dict[str, HealerSpec]) -> None:
        self.specs = specs
        self.lock = threading.Lock()
        self.state: dict[str, FpState] = {fp: FpState() for fp in specs}
        #: argvs in flight: two points healed by the same restart never run it concurrently
        self.argv_running: set[tuple[str, ...]] = set()
        #: when each argv last started: the cooldown holds for the action too, so a daemon that
        #: fails three points at once (down, cache stale, not cycling) is restarted once, not thrice
        self.argv_last_start: dict[tuple[str, ...], float] = {}

    def admit(self, fp: str, key: tuple[str, str], now: float, dry_run: bool) -> str | None:
        """None when the action may start now (and it is reserved), else the skip reason."""
        spec = self.specs[fp]
        with self.lock:
            st = self.state[fp]
            self._expire(spec, st, now)
            if key in st.keys:
                return "duplicate"
            if st.gave_up:
                return "gave_up"
            if st.last_start is not None and now - st.last_start < spec.cooldown_seconds:
                return "cooldown"
            if st.phase != "idle" or spec.argv in self.argv_running:
                return "busy"
            shared = self.argv_last_start.get(spec.argv)
            if shared is not None and now - shared < spec.cooldown_seconds:
                return "cooldown"  # another point ran this same action moments ago
            if not dry_run and len(st.attempts) >= spec.max_attempts:
                st.gave_up = True
                return "gave_up"
            st.undo = (st.last_start, dict(st.keys), len(st.attempts), self.argv_last_start.get(spec.argv))
            st.keys[key] = now
            st.last_start = now
            self.argv_last_start[spec.argv] = now
            if dry_run:
                return "dry_run"
            st.attempts.append(now)
            self._move(fp, st, "queued", now)
            return None

    def abort(self, fp: str) -> None:
        """Undo the reservation admit() just made: its start record could not be written (a full
        disk), so nothing ran and Alertmanager's retry must be admitted as if this never happened."""
        spec = self.specs[fp]
        with self.lock:
            st = self.state[fp]
            if st.undo is not None:
                st.last_start, st.keys, n, shared = st.undo
                while len(st.attempts) > n:
                    st.attempts.pop()
                if shared is None:
                    self.argv_last_start.pop(spec.argv, None)
                else:
                    self.argv_last_start[spec.argv] = shared
                st.undo = None
            if st.phase != "idle":
                self._move(fp, st, "idle", None)

    def move(self, fp: str, phase: str, now: float | None = None, gen: int | None = None) -> bool:
        """One allowed transition (TransitionError otherwise); False, and nothing changed, when
        ``gen`` is given and is no longer the point's reservation."""
        with self.lock:
            st = self.state[fp]
            if gen is not None and gen != st.gen:
                return False
            self._move(fp, st, phase, now)
            return True

    def generation(self, fp: str) -> int:
        with self.lock:
            return self.state[fp].gen

    def _move(self, fp: str, st: FpState, phase: str, now: float | None) -> None:
        if phase not in TRANSITIONS[st.phase]:
            raise TransitionError(f"{fp}: {st.phase} -> {phase} is not a transition")
        argv = self.specs[fp].argv
        if phase == "idle":
            st.since = None
            self.argv_running.discard(argv)
        elif st.phase == "idle":
            st.since = now
            st.gen += 1
            self.argv_running.add(argv)
        st.phase = phase
        if phase != "queued":
            st.undo = None

    def finished(self, fp: str, success: bool, gen: int | None = None) -> bool:
        """Back to idle from whatever phase the work reached (the worker's ``finally``); True when
        this failure used the last allowed attempt. A stale ``gen`` changes nothing."""
        spec = self.specs[fp]
        with self.lock:
            st = self.state[fp]
            if gen is not None and gen != st.gen:
                return False
            if st.phase != "idle":
                self._move(fp, st, "idle", None)
            if not success and len(st.attempts) >= spec.max_attempts:
                st.gave_up = True
                return True
            return False

    def stuck_after(self, fp: str) -> float:
        """Seconds out of idle after which a point counts as stuck: its action's timeout, its
        verification, and a margin. A live worker always ends it before that."""
        spec = self.specs[fp]
        return spec.timeout_seconds + spec.verify_timeout_seconds + STUCK_MARGIN_SECONDS

    def stuck(self, now: float) -> dict[str, bool]:
        with self.lock:
            return {fp: st.since is not None and now - st.since > self.stuck_after(fp) for fp, st in self.state.items()}

    def reset(self, fp: str, now: float | None = None) -> bool:
        """A resolved alert: the point is healthy again, so it gets its full attempt budget, and a
        point stuck past its bound is released (an action still inside its timeout keeps the
        point until it ends: clearing it would let a second copy start beside it).

        False when there was nothing to reset (repeated resolved notifications need no record).
        """
        with self.lock:
            st = self.state[fp]
            stuck = st.since is not None and now is not None and now - st.since > self.stuck_after(fp)
            if not st.attempts and not st.gave_up and not st.keys and not stuck:
                return False
            st.attempts.clear()
            st.gave_up = False
            st.keys.clear()
            if stuck:
                self._move(fp, st, "idle", None)
            return True

    def _expire(self, spec: HealerSpec, st: FpState, now: float) -> None:
        # a still-firing alert is retried once the cooldown has passed ("at most once per cooldown")
        st.keys = {k: t for k, t in st.keys.items() if now - t < spec.cooldown_seconds}
        while st.attempts and now - st.attempts[0] >= spec.window_seconds:
            st.attempts.popleft()

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Replay audit records (oldest first) so cooldowns, windows and give-ups survive a restart."""
        with self.lock:
            for rec in records:
                fp = rec.get("fp")
                at = rec.get("epoch")
                if not isinstance(fp, str) or fp not in self.state or not isinstance(at, (int, float)):
                    continue
                st = self.state[fp]
                event = rec.get("event")
                key = (str(rec.get("fingerprint", "")), str(rec.get("starts_at", "")))
                if event == "started":
                    st.last_start = float(at)
                    self.argv_last_start[self.specs[fp].argv] = float(at)
                    st.keys[key] = float(at)
                    st.attempts.append(float(at))
                elif event == "attempt" and rec.get("outcome") == "dry_run":
                    st.last_start = float(at)
                    self.argv_last_start[self.specs[fp].argv] = float(at)
                    st.keys[key] = float(at)
                elif event == "gave_up":
                    st.gave_up = True
                elif event == "resolved":
                    st.attempts.clear()
                    st.gave_up = False
                    st.keys.clear()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            # "running": not idle (queued, running or verifying), as before the phases were named
            return {fp: {"running": st.phase != "idle", "phase": st.phase, "gave_up": st.gave_up,
                         "attempts_in_window": len(st.attempts), "last_start": st.last_start}
                    for fp, st in self.state.items()}
