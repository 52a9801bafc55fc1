"""`trading-readiness heal`: the Alertmanager webhook receiver.

Alertmanager delivers at least once (HA peers both notify, repeats every repeat_interval), so a
naive receiver restarts things several times. Here a delivery is acknowledged once it is a valid
payload and on disk in the journal (healers.journal); the dispatcher thread then admits every alert
by the policy (dedupe, cooldown, attempt window, single flight), records the decisions (a batch of
audit records shares one fsync) and hands accepted actions to the worker threads; success is
recorded only when the failure point is OK again when re-evaluated by the engine.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from exporter.core import audit
from exporter.core.config import Config
from healers import actions
from healers.alerts import Alert
from healers.inbox import COLLECT_SECONDS, RETRY_SECONDS, Answer, Intake
from healers.journal import Delivery
from healers.lease import Lease, LeaseRefused
from healers.metrics import HealerMetrics
from healers.orphans import Orphan, attempt_marker, find_orphans, owner_id
from healers.policy import HealerSpec, Policy, specs_from_config
from healers.verify import verify_point

RECENT = 200
#: the metric label for an fp label that names no catalog point (keeps label cardinality bounded)
OTHER_FP = "other"


class _Held(threading.local):
    gen: int | None = None
    #: the dispatcher is deciding a batch: records are synced once, at its end
    batch: bool = False


class Healer(Intake):
    """Intake, admission, metrics, audit and workers; the HTTP layer is a thin wrapper around it."""

    def __init__(self, config: Config, token: str | None, dry_run: bool = False, start_workers: bool = True) -> None:
        super().__init__(config, token)
        #: the Authorization header a delivery must carry (None: authentication is off)
        self._bearer = None if token is None else f"Bearer {token}".encode()
        self.dry_run = dry_run or bool(config["healer"]["dry_run"])
        self.specs: dict[str, HealerSpec] = specs_from_config(config)
        self.policy = Policy(self.specs)
        self.audit = audit.AuditLog(config.resolve(config["healer"]["audit_file"]))
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.queue: queue.Queue[tuple[HealerSpec, Alert] | Orphan | None] = queue.Queue()
        #: this process, as written into its start records: a restarted receiver (or a peer sharing
        #: the audit file) tells an orphan of a dead receiver from a live receiver's action
        self.owner = owner_id(os.getpid())
        self.lease = Lease(config.resolve(config["healer"]["lease_file"]), self.owner)
        self.groups: set[int] = set()
        #: per worker thread: the point reservation (generation) its current item holds
        self._held = _Held()
        metrics = HealerMetrics(config, self.specs)
        self.registry, self.attempts, self.skipped = metrics.registry, metrics.attempts, metrics.skipped
        self.running, self.queued, self.stuck = metrics.running, metrics.queued, metrics.stuck
        self.gave_up, self.info = metrics.gave_up, metrics.info
        metrics.backlog.set_function(lambda: self.journal.pending_alerts)
        records = audit.read_tail(self.audit.path)
        self.policy.restore(records)
        for rec in records:
            if rec.get("event") == "attempt":
                self.recent.appendleft(rec)
        self.orphans = find_orphans(records)
        #: points whose give-up is recorded and exported (until their alert resolves)
        self.given_up: set[str] = {fp for fp, st in self.policy.snapshot().items() if st["gave_up"]}
        for fp in self.given_up:
            self.gave_up.labels(fp).set(1)
        for orphan in self.orphans:
            if orphan.fp in self.specs:
                # held (busy) until the orphan is ended and the point re-checked
                self.policy.move(orphan.fp, "queued", time.time())
                self.queued.labels(orphan.fp).set(1)
                self.queue.put(orphan)
        # what a stopped receiver acknowledged and never decided: decided now, before anything new
        self.replay_journal()
        self.workers = [threading.Thread(target=self._worker, name=f"heal-worker-{i}", daemon=True)
                        for i in range(int(config["healer"]["max_concurrent"]))]
        self.dispatcher = threading.Thread(target=self._dispatch_loop, name="heal-dispatcher", daemon=True)
        if start_workers:
            for w in self.workers:
                w.start()
            self.dispatcher.start()
            threading.Thread(target=self._summariser, name="heal-log-summary", daemon=True).start()

    # requests --------------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if self._bearer is None:
            return True
        given = (header or "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._bearer)

    def handle_post(self, auth: str | None, body: bytes, reply: Answer) -> tuple[int, dict[str, Any]] | None:
        """One webhook delivery: 401 without the bearer token, else ``accept`` (answered once on
        disk; the decisions are the dispatcher's, ``/api/heals?delivery=N``). Never raises for bad
        input; a journal that cannot be written is a 5xx, and Alertmanager sends it again."""
        if not self.authorized(auth):
            return 401, {"error": "missing or wrong bearer token"}
        return self.accept(body, reply)

    def decide(self, batch: list[Delivery]) -> None:
        """Every alert of the batch decided; the records written for it synced once; the accepted
        actions queued only then (their start is on disk); the journal told what is decided. An
        alert whose start record cannot be written stays undecided and is tried again later."""
        ready: list[tuple[Delivery, int, HealerSpec, Alert]] = []
        self._held.batch = True
        deadline = time.monotonic() + COLLECT_SECONDS
        try:
            for d in batch:
                self.yield_to_intake(deadline)  # answers before decisions
                time.sleep(0)  # and the GIL to the event loop if it waits
                for i, a in enumerate(d.alerts):
                    if d.decisions[i] is not None:
                        continue

                    def hand(spec: HealerSpec, alert: Alert, d: Delivery = d, i: int = i) -> None:
                        ready.append((d, i, spec, alert))

                    try:
                        d.decisions[i] = self.dispatch(a, hand)
                    except Exception as exc:
                        self._log_error(f"heal {self._label(a.fp)}: cannot decide an alert, trying again in "
                                        f"{RETRY_SECONDS:g} s: {type(exc).__name__}: {exc}")
        finally:
            self._held.batch = False
        try:
            self.audit.sync()
        except Exception as exc:
            self._log_error(f"heal: cannot sync the audit, trying again in {RETRY_SECONDS:g} s: {exc}")
            for d, i, spec, _alert in ready:  # nothing runs without its start on disk
                d.decisions[i] = None
                self.policy.abort(spec.fp)
                with contextlib.suppress(Exception):
                    self.lease.release(spec.fp, time.time(), ran=False)
            ready = []
        for _d, _i, spec, alert in ready:
            self.queued.labels(spec.fp).set(1)
            self.queue.put((spec, alert))
        self.journal.done([d.seq for d in batch if d.decided()])
        self._retry += [d for d in batch if not d.decided() and d not in self._retry]

    def _label(self, fp: str | None) -> str:
        if fp is None:
            return ""
        return fp if fp in self.config.catalog.points else OTHER_FP

    def _skip(self, fp: str | None, reason: str, alert: Alert) -> str:
        """A deliberate skip is a counter and a share of the periodic summary, never a line each:
        a payload of a thousand alerts must not write a thousand lines."""
        label = self._label(fp)
        self.skipped.labels(label, reason).inc()
        if reason not in ("duplicate", "unknown_fp", "no_healer", "dry_run", "other_bot"):
            with self.log_lock:
                key = (label, reason)
                if key in self._skip_counts or len(self._skip_counts) < 256:
                    self._skip_counts[key] = self._skip_counts.get(key, 0) + 1
        return reason

    def dispatch(self, alert: Alert, ready: Callable[[HealerSpec, Alert], None] | None = None) -> str:
        """Decide one alert: 'accepted' or the skip reason. Exact-match lookup only. An accepted
        action is queued at once (its start record synced), or, with ``ready``, handed to it
        (``ready(spec, alert)``) to queue once the batch's records are synced."""
        fp = alert.fp
        match: dict[str, str] = self.config["healer"]["match_labels"] or {}
        if match:
            labels = dict(alert.labels)
            if any(labels.get(name) != value for name, value in match.items()):
                # another bot's alert (one Alertmanager, several bots): neither heal nor reset
                return self._skip(fp, "other_bot", alert)
        if fp is None or fp not in self.config.catalog.points:
            return self._skip(fp, "unknown_fp" if fp is not None else "no_healer", alert)
        spec = self.specs.get(fp)
        if spec is None:
            return self._skip(fp, "no_healer", alert)
        if alert.status == "resolved":
            if self.policy.reset(fp, time.time()):
                self.given_up.discard(fp)
                self.gave_up.labels(fp).set(0)
                self._record({"event": "resolved", "fp": fp, "fingerprint": alert.fingerprint,
                              "starts_at": alert.starts_at})
            return self._skip(fp, "resolved", alert)
        if not spec.enabled:
            return self._skip(fp, "disabled", alert)
        now = time.time()
        reason = self.policy.admit(fp, (alert.fingerprint, alert.starts_at), now, self.dry_run)
        if reason == "gave_up" and fp not in self.given_up:
            self._gave_up(spec)
        if reason == "dry_run":
            rec = self._attempt_record(spec, alert, now, None, 0.0, "dry_run",
                                       "dry run: would run " + " ".join(spec.argv), None)
            self._record(rec)
            self.attempts.labels(fp, "dry_run").inc()
            self.log(f"heal {fp}: dry run, would run {' '.join(spec.argv)} (alert {alert.fingerprint[:32]!r} "
                     f"started {alert.starts_at[:40]!r})")
        if reason is not None:
            return self._skip(fp, reason, alert)
        # this receiver would act; a peer receiver of the same bot may hold the point or have just healed it
        try:
            takeover = self.lease.acquire(fp, spec.argv, now, self.policy.stuck_after(fp), spec.cooldown_seconds)
        except LeaseRefused as refused:
            self.policy.abort(fp)
            return self._skip(fp, refused.reason, alert)
        except BaseException:
            self.policy.abort(fp)  # the lease cannot be read or written: never act without it
            raise
        if takeover:
            self.log(f"heal {fp}: {takeover}")
        # queued, not running: with every worker busy it waits; "running" is set when its process starts
        try:
            self._record({"event": "started", "fp": fp, "healer": spec.name, "fingerprint": alert.fingerprint,
                          "starts_at": alert.starts_at, "argv": list(spec.argv), "owner": self.owner}, at=now)
        except BaseException:
            # without its start record a restart would not know the action ran: run nothing, undo
            # the reservation; the alert is decided again later, once the fault (a full disk) is gone
            self.policy.abort(fp)
            with contextlib.suppress(Exception):
                self.lease.release(fp, time.time(), ran=False)
            raise
        if ready is not None:
            ready(spec, alert)
            return "accepted"
        self.queued.labels(fp).set(1)
        self.queue.put((spec, alert))
        return "accepted"

    # work ------------------------------------------------------------------------------------
    def _record(self, rec: dict[str, Any], at: float | None = None) -> None:
        at = time.time() if at is None else at
        rec = {"time": audit.iso(at), "epoch": round(at, 3), **rec}
        rec = self.redact_record(rec)  # the audit and /api/heals
        self.audit.append(rec, sync=not self._held.batch)
        if rec["event"] == "attempt":
            self.recent.appendleft(rec)

    def _attempt_record(self, spec: HealerSpec, alert: Alert, at: float, exit_status: int | None, duration: float,
                        outcome: str, detail: str | None, verification: str | None) -> dict[str, Any]:
        return {"event": "attempt", "time": audit.iso(at), "epoch": round(at, 3), "fp": spec.fp,
                "healer": spec.name, "fingerprint": alert.fingerprint, "starts_at": alert.starts_at,
                "argv": list(spec.argv), "exit_status": exit_status, "duration_seconds": round(duration, 3),
                "outcome": outcome, "detail": detail, "verification": verification, "dry_run": outcome == "dry_run"}

    def _gave_up(self, spec: HealerSpec) -> None:
        self.given_up.add(spec.fp)
        self.gave_up.labels(spec.fp).set(1)
        self._record({"event": "gave_up", "fp": spec.fp, "max_attempts": spec.max_attempts,
                      "window_seconds": spec.window_seconds})
        self.log(f"heal {spec.fp}: gave up after {spec.max_attempts} attempt(s) within {spec.window_seconds:g} s;"
                 " a human is needed")

    def _worker(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, Orphan):
                spec = self.specs[item.fp]
            else:
                spec, alert = item
            self.queued.labels(spec.fp).set(0)
            self._held.gen = self.policy.generation(spec.fp)
            outcome = "failed"
            try:
                if isinstance(item, Orphan):
                    outcome = self._recover(spec, item)
                else:
                    outcome = self._heal(spec, alert)
            except Exception as exc:  # a bug or a full disk here must not leave the point reserved
                self._log_error(f"heal {spec.fp}: internal error {type(exc).__name__}: {exc}")
            finally:
                self.running.labels(spec.fp).set(0)
                try:  # only an entry this receiver owns is touched (a recovered orphan's is not)
                    if self.policy.generation(spec.fp) == self._held.gen:  # not a newer reservation's
                        self.lease.release(spec.fp, time.time(), ran=True)
                except Exception as exc:  # it expires by itself; peers then take over
                    self._log_error(f"heal {spec.fp}: cannot release the lease: {type(exc).__name__}: {exc}")
                # every exit leads back to idle; the give-up is recorded once, by whoever sees it first
                if self.policy.finished(spec.fp, outcome == "success", self._held.gen):
                    try:
                        self._gave_up(spec)
                    except Exception as exc:
                        self._log_error(f"heal {spec.fp}: cannot record the give-up: {type(exc).__name__}: {exc}")

    def _move(self, fp: str, phase: str) -> None:
        """A transition made by this worker for the reservation it holds; nothing when that
        reservation was released as stuck meanwhile (the point is no longer this worker's)."""
        self.policy.move(fp, phase, gen=self._held.gen)

    def _started(self, spec: HealerSpec, alert: Alert, pid: int) -> None:
        """The action's process exists: only now does the point read as running. Its pid (the
        leader of its own process group) and start time are recorded, so a receiver restarted
        after a crash finds the orphan and ends it."""
        try:
            self._move(spec.fp, "running")
            self.running.labels(spec.fp).set(1)
            self.lease.update(spec.fp, time.time(), pgid=pid, proc_start=actions.proc_start_time(pid))
            self._record({"event": "spawned", "fp": spec.fp, "fingerprint": alert.fingerprint,
                          "starts_at": alert.starts_at, "pid": pid, "pgid": pid,
                          "proc_start": actions.proc_start_time(pid), "timeout_seconds": spec.timeout_seconds,
                          "owner": self.owner})
            self.log(f"heal {spec.fp}: running {' '.join(spec.argv)} (timeout {spec.timeout_seconds:g} s)")
        except Exception as exc:  # the action runs and ends at its timeout either way
            self._log_error(f"heal {spec.fp}: cannot record the action's process: {type(exc).__name__}: {exc}")

    def _heal(self, spec: HealerSpec, alert: Alert) -> str:
        started = time.time()
        # it may have waited for a worker: the lease runs from now (and a peer may have taken it over)
        if not self.lease.update(spec.fp, started, self.policy.stuck_after(spec.fp)):
            lost = "not run: it waited for a worker past its lease, and another receiver took the point over"
            self._record(self._attempt_record(spec, alert, started, None, 0.0, "failed", lost, None), at=started)
            self.attempts.labels(spec.fp, "failed").inc()
            self.log(f"heal {spec.fp}: {lost}")
            return "failed"
        try:
            res = actions.run_action(spec.argv, spec.timeout_seconds, self.config.bot_root, groups=self.groups,
                                     on_start=lambda pid: self._started(spec, alert, pid),
                                     marker=attempt_marker(self.owner, spec.fp, alert.fingerprint, alert.starts_at))
        finally:
            self.running.labels(spec.fp).set(0)  # the process is gone; verification is not the action
        if self.policy.snapshot()[spec.fp]["phase"] == "running":
            self._move(spec.fp, "verifying")
        verification = None
        if res.timed_out:
            outcome = "timeout"
        elif res.exit_status != 0:
            outcome = "failed"
        else:
            hcfg = self.config["healer"]
            ok, verification = verify_point(self.config, spec.fp, spec.verify_timeout_seconds,
                                            float(hcfg["verify_interval_seconds"]), self.stopping)
            outcome = "success" if ok else "unverified"
        detail = res.error
        if res.output_tail:
            detail = f"{detail + '; ' if detail else ''}output: {res.output_tail}"
        rec = self._attempt_record(spec, alert, started, res.exit_status, res.duration, outcome, detail, verification)
        self._record(rec, at=started)
        self.attempts.labels(spec.fp, outcome).inc()
        self.log(f"heal {spec.fp}: {outcome} ({res.error or 'exit 0'}, {res.duration:.1f} s)"
                 + (f"; {verification}" if verification else ""))
        return outcome

    def _recover(self, spec: HealerSpec, orphan: Orphan) -> str:
        """A start recorded by a receiver that died before the outcome: wait for the orphaned
        action until its own timeout, end its process group, re-check the point and record the
        outcome as ``interrupted`` (verified or not). Returns "success" when the point is OK."""
        pgid = orphan.pgid
        if pgid is None:
            # no process was recorded: its environment still names the attempt
            pgid = orphan.pgid = actions.find_marked(
                attempt_marker(orphan.owner, spec.fp, orphan.fingerprint, orphan.starts_at))
            orphan.proc_start = None
        if pgid is None:
            return self._replay(spec, orphan)
        self._move(spec.fp, "running")
        if not actions.group_alive(pgid) or not orphan.same_leader():
            how = f"its process group {pgid} had already ended"
        else:
            self.running.labels(spec.fp).set(1)
            deadline = (orphan.spawned_at or orphan.at) + spec.timeout_seconds
            self.log(f"heal {spec.fp}: found the action a stopped receiver started (process group {pgid}); "
                     f"waiting for it until its timeout")
            while actions.group_alive(pgid) and time.time() < deadline and not self.stopping.is_set():
                time.sleep(0.1)
            if actions.group_alive(pgid):
                actions.end_group(pgid)
                how = f"its process group {pgid} was still running at its timeout and was killed"
            else:
                how = f"its process group {pgid} ended by itself"
            self.running.labels(spec.fp).set(0)
        self._move(spec.fp, "verifying")
        ok, verification = verify_point(self.config, spec.fp, spec.verify_timeout_seconds,
                                        float(self.config["healer"]["verify_interval_seconds"]), self.stopping)
        rec = {"event": "attempt", "fp": spec.fp, "healer": spec.name, "fingerprint": orphan.fingerprint,
               "starts_at": orphan.starts_at, "argv": list(spec.argv), "exit_status": None,
               "duration_seconds": round(time.time() - orphan.at, 3), "outcome": "interrupted",
               "detail": f"the receiver stopped while the action ran; {how}", "verification": verification,
               "verified": ok, "dry_run": False}
        self._record(rec, at=orphan.at)
        self.attempts.labels(spec.fp, "interrupted").inc()
        self.log(f"heal {spec.fp}: interrupted ({how}); {'healed' if ok else 'not healed'}: {verification}")
        return "success" if ok else "interrupted"

    def _replay(self, spec: HealerSpec, orphan: Orphan) -> str:
        """An accepted alert whose action never started (the receiver died while it was queued):
        its start record is the journal entry. The point is checked once; when it is still not
        OK the action runs now, as it would have, and its outcome closes the entry."""
        self._move(spec.fp, "verifying")
        ok, verification = verify_point(self.config, spec.fp, 0.0, 0.0, self.stopping)
        alert = Alert("firing", spec.fp, orphan.fingerprint, orphan.starts_at)
        if ok:
            rec = self._attempt_record(spec, alert, orphan.at, None, 0.0, "interrupted",
                                       "the receiver stopped before the action ran; the point is OK again, "
                                       "so it was not run", verification)
            self._record({**rec, "verified": True}, at=orphan.at)
            self.attempts.labels(spec.fp, "interrupted").inc()
            self.log(f"heal {spec.fp}: interrupted before its action ran; OK again, not run")
            return "success"
        self.log(f"heal {spec.fp}: the receiver stopped before this accepted action ran; running it now")
        self.policy.finished(spec.fp, True, self._held.gen)  # verifying -> idle, then as if just queued
        self.policy.move(spec.fp, "queued", time.time())
        self._held.gen = self.policy.generation(spec.fp)
        try:
            self.lease.acquire(spec.fp, spec.argv, time.time(), self.policy.stuck_after(spec.fp), 0.0)
        except LeaseRefused as refused:  # a peer receiver is healing it, or just did
            rec = self._attempt_record(spec, alert, orphan.at, None, 0.0, "interrupted",
                                       f"the receiver stopped before the action ran; not run here: {refused}",
                                       verification)
            self._record({**rec, "verified": False}, at=orphan.at)
            self.attempts.labels(spec.fp, "interrupted").inc()
            return "interrupted"
        return self._heal(spec, alert)

    def refresh(self, now: float | None = None) -> None:
        """Gauges computed at scrape time: trading_healer_stuck."""
        for fp, stuck in self.policy.stuck(time.time() if now is None else now).items():
            self.stuck.labels(fp).set(1 if stuck else 0)

    def lease_view(self) -> dict[str, Any] | str:
        try:
            return {fp: self.redact_record(e) for fp, e in self.lease.entries().items() if isinstance(e, dict)}
        except OSError as exc:
            return f"cannot read {self.lease.path}: {exc.strerror or exc}"

    def heals(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.recent)[:max(0, limit)]

    def stop(self) -> None:
        """Stop workers and kill what is still running (its record says so)."""
        self.stopping.set()
        with contextlib.suppress(Exception):
            self.summarise()
        for pgid in list(self.groups):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for _ in self.workers:
            self.queue.put(None)
        self.inbox.put(None)
        if self.dispatcher.is_alive():
            self.dispatcher.join(timeout=5)
        self.journal.close()


