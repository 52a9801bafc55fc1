"""The receiver's stderr log and its redaction: every line and every audit string passes the
redactor (the bot's secrets and the webhook token), identical lines are counted rather than
repeated, and deliberate skips are summarised periodically instead of a line each."""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from typing import Any

from exporter.bot.botenv import BotEnv, Redactor
from exporter.core import audit
from exporter.core.config import Config

#: how often skipped deliveries and suppressed repeated lines are summarised on stderr
SUMMARY_SECONDS = 60.0
LOG_REPEAT_SECONDS = 60.0
#: with automatic collection off (``heal``), reference cycles are collected after a decided batch
#: of deliveries (a pause between bursts) at most this often, and with every periodic summary
GC_SECONDS = 1.0

#: audit fields that are never redacted: what the policy restores from (a rewritten fingerprint
#: or startsAt would make a restarted receiver heal the same alert again)
IDENTITY_FIELDS = frozenset({"event", "time", "epoch", "fp", "fingerprint", "starts_at", "healer", "outcome"})


def _walk_strings(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _walk_strings(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk_strings(v, redact) for v in value]
    return value


class Logbook:
    """Redaction and the rate-limited log; the receiver is one (it inherits these)."""

    def __init__(self, config: Config, token: str | None) -> None:
        self.config = config
        self.token = token
        self.stopping = threading.Event()
        self.log_lock = threading.Lock()
        self._redactor_lock = threading.Lock()
        self._redactor: Redactor | None = None
        self._redactor_ident: tuple[int, ...] = ()
        self._last_logged: dict[str, float] = {}
        self._repeats: dict[str, int] = {}
        self._skip_counts: dict[tuple[str, str], int] = {}
        self._collected = 0.0  # monotonic

    def redactor(self) -> Redactor:
        """The bot's secrets and the webhook token: an action's output (a ``set -x`` script, a tool
        printing its config) and its argv may carry credentials. Rebuilt only when ``.env``
        changes (its stat), not for every line."""
        env_file = self.config.bot_root / ".env"
        try:
            st = env_file.stat()
            ident: tuple[int, ...] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            ident = ()
        with self._redactor_lock:
            if self._redactor is None or ident != self._redactor_ident:
                secrets = [*BotEnv.load(self.config.bot_root).secrets(), *([self.token] if self.token else [])]
                self._redactor, self._redactor_ident = Redactor(secrets), ident
            return self._redactor

    def redact(self, text: str) -> str:
        return self.redactor()(text)

    def redact_record(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Every string of a record redacted before it is serialised, keys and structure untouched:
        redacting serialised JSON rewrites its syntax whenever a secret is a substring of it (a
        ``true``, a ``"fp"``). The identity fields are ours or Alertmanager's (ids, hashes, times)
        and are what a restart dedupes on, so they are kept exactly."""
        redact = self.redactor()
        return {k: v if k in IDENTITY_FIELDS else _walk_strings(v, redact) for k, v in rec.items()}

    def log(self, msg: str) -> None:
        """One line to stderr, redacted. A line identical to one written in the last
        LOG_REPEAT_SECONDS is counted instead, and the count written by the next summary."""
        msg = self.redact(msg)
        now = time.monotonic()
        with self.log_lock:
            last = self._last_logged.get(msg)
            if last is not None and now - last < LOG_REPEAT_SECONDS:
                self._repeats[msg] = self._repeats.get(msg, 0) + 1
                return
            if len(self._last_logged) >= 1024:  # bounded: forget lines not seen for a while
                self._last_logged = {m: t for m, t in self._last_logged.items() if now - t < LOG_REPEAT_SECONDS}
            self._last_logged[msg] = now
            print(f"{audit.iso(time.time())} {msg}", file=sys.stderr, flush=True)

    def summarise(self) -> None:
        """The skips and suppressed repeats since the last summary, as at most two lines."""
        with self.log_lock:
            skips, self._skip_counts = self._skip_counts, {}
            repeats, self._repeats = self._repeats, {}
        stamp = audit.iso(time.time())
        lines = []
        if skips:
            parts = ", ".join(f"{fp or '(no fp)'} {reason} {n}" for (fp, reason), n in sorted(skips.items()))
            lines.append(f"{stamp} heal: skipped since the last summary: {parts}")
        if repeats:
            parts = "; ".join(f"{n}x {msg[:200]}" for msg, n in sorted(repeats.items(), key=lambda kv: -kv[1])[:10])
            lines.append(f"{stamp} heal: repeated lines not written again: {parts}")
        if lines:
            with self.log_lock:
                print("\n".join(lines), file=sys.stderr, flush=True)

    def collect_garbage(self, due: bool = False) -> bool:
        """Collect reference cycles now, when the process turned automatic collection off and
        the last collection is GC_SECONDS old (or ``due``); True when it did. ``heal`` turns it
        off so that no collection lands in the middle of a burst of deliveries; this runs after
        each decided batch (a pause in the deliveries) and with each summary (an idle receiver's
        scrapes and heals leave no cycles for long)."""
        if gc.isenabled():
            return False
        now = time.monotonic()
        if not due and now - self._collected < GC_SECONDS:
            return False
        self._collected = now
        gc.collect()
        return True

    def _summariser(self) -> None:
        while not self.stopping.wait(SUMMARY_SECONDS):
            with contextlib.suppress(Exception):
                self.summarise()
            with contextlib.suppress(Exception):
                self.collect_garbage(due=True)

    def _log_error(self, msg: str) -> None:
        with contextlib.suppress(Exception):
            self.log(msg)

