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
           "other_bot")
#: outcomes for trading_healer_attempts_total
OUTCOMES = ("success", "failed", "timeout", "unverified", "dry_run")


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
    running: bool = False


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
            if st.running or spec.argv in self.argv_running:
                return "busy"
            shared = self.argv_last_start.get(spec.argv)
            if shared is not None and now - shared < spec.cooldown_seconds:
                return "cooldown"  # another point ran this same action moments ago
            if not dry_run and len(st.attempts) >= spec.max_attempts:
                st.gave_up = True
                return "gave_up"
            st.keys[key] = now
            st.last_start = now
            self.argv_last_start[spec.argv] = now
            if dry_run:
                return "dry_run"
            st.attempts.append(now)
            st.running = True
            self.argv_running.add(spec.argv)
            return None

    def finished(self, fp: str, success: bool) -> bool:
        """Release the reservation; True when this failure used the last allowed attempt."""
        spec = self.specs[fp]
        with self.lock:
            st = self.state[fp]
            st.running = False
            self.argv_running.discard(spec.argv)
            if not success and len(st.attempts) >= spec.max_attempts:
                st.gave_up = True
                return True
            return False

    def reset(self, fp: str) -> bool:
        """A resolved alert: the point is healthy again, so it gets its full attempt budget.

        False when there was nothing to reset (repeated resolved notifications need no record).
        """
        with self.lock:
            st = self.state[fp]
            if not st.attempts and not st.gave_up and not st.keys:
                return False
            st.attempts.clear()
            st.gave_up = False
            st.keys.clear()
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
            return {fp: {"running": st.running, "gave_up": st.gave_up, "attempts_in_window": len(st.attempts),
                         "last_start": st.last_start} for fp, st in self.state.items()}
