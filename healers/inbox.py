"""Acknowledged deliveries, decided later by the receiver's dispatcher.

A delivery is validated here and is in the journal (``healers.journal``) before it is answered; the synced ones
are kept by number for ``/api/heals`` and queued in order for the dispatcher thread, which decides
them in batches once a burst of deliveries has passed, and a receiver's start replays what a
stopped one acknowledged and never decided.
"""

from __future__ import annotations

import functools
import queue
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from exporter.core.config import Config
from healers.alerts import MAX_BODY_BYTES, BadRequest, check_payload, parse_payload
from healers.journal import Delivery, InboxFull, Journal, Synced, one_line
from healers.logbook import Logbook

#: decided deliveries kept for ``/api/heals`` (their per-alert decisions)
RECENT_DELIVERIES = 100
#: deliveries decided together: their audit records share one fsync
BATCH = 256
#: deciding waits for a pause in the deliveries this long, and for no longer than COLLECT_SECONDS
#: (per batch, and again for each of its deliveries while new ones keep arriving)
QUIET_SECONDS = 0.02
COLLECT_SECONDS = 0.5
#: a delivery whose decision failed (its start record could not be written) is tried again after this
RETRY_SECONDS = 5.0
#: Alertmanagers (externalURL) whose deliveries are counted, at most
MAX_SOURCES = 16
#: how an accepted delivery is answered once it is on disk: (status, JSON body)
Answer = Callable[[int, dict[str, Any]], None]


class _Inbox(queue.Queue[Delivery | None]):
    """The dispatcher's queue, which also takes a synced batch in one call (one lock, one wake-up)."""

    def put_many(self, items: list[Delivery]) -> None:
        if not items:
            return
        with self.not_full:
            self.queue.extend(items)
            self.unfinished_tasks += len(items)
            self.not_empty.notify()


class Intake(Logbook):
    """The acknowledged deliveries: journaled, queued in order for the dispatcher thread (which
    calls ``decide`` with batches), and the recent ones kept by number for ``/api/heals``."""

    def __init__(self, config: Config, token: str | None) -> None:
        super().__init__(config, token)
        self.journal = Journal(config.resolve(config["healer"]["audit_file"]))
        #: the labels an alert keeps (healer.match_labels' names): all deciding compares, all the journal holds
        self.keep_labels: frozenset[str] = frozenset(config["healer"]["match_labels"] or {})
        self.journal.keep_labels = self.keep_labels
        #: deliveries per Alertmanager (its externalURL): shows that every HA peer reaches us
        self.sources: dict[str, int] = {}
        self.inbox: _Inbox = _Inbox()
        self.journal.synced = self._track
        self.journal.answered = self.inbox.put_many
        self.journal.on_error = self._log_error
        self.deliveries: OrderedDict[int, Delivery] = OrderedDict()
        self._retry: list[Delivery] = []
        self.last_arrival = 0.0  # monotonic

    def replay_journal(self) -> None:
        """Take this receiver's journal and queue what a stopped receiver left undecided in it."""
        replayed = self.journal.recover()
        self._track(replayed)
        for delivery in replayed:
            self.inbox.put(delivery)
        if replayed:
            self.log(f"heal: deciding {len(replayed)} acknowledged deliver{'y' if len(replayed) == 1 else 'ies'} "
                     f"({sum(len(d.alerts) for d in replayed)} alerts) a stopped receiver left in {self.journal.path}")

    def accept(self, body: bytes, reply: Answer, told: Synced | None = None) -> tuple[int, dict[str, Any]] | None:
        """Validate and journal one delivery whose bearer token was already checked (the
        receiver's ``handle_post``). A refusal is returned at once; an accepted delivery is
        answered through ``reply(status, body)`` once it is on disk, and None is returned. A
        connection that writes the answer itself passes ``told``: it is called instead, with
        ``(seq, alerts, failed)``, and must answer through ``journaled`` when ``failed``."""
        if len(body) > MAX_BODY_BYTES:
            return 413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"}
        if told is None:
            told = functools.partial(self.journaled, reply)
        if one_line(body) and (payload := check_payload(body)) is not None:
            # well-formed (what Alertmanager sends): journaled as it came and answered; its alerts
            # are made by the dispatcher
            try:
                self.journal.submit_checked(payload, body, told)
            except InboxFull as exc:
                return 503, {"error": f"too busy: {exc}"}
            return None
        try:
            alerts, source = parse_payload(body, self.keep_labels)
        except BadRequest as exc:
            return 400, {"error": str(exc)}
        try:
            self.journal.submit(Delivery(time.time(), source, alerts), told)
        except InboxFull as exc:
            return 503, {"error": f"too busy: {exc}"}
        return None

    def journaled(self, reply: Answer, seq: int, alerts: int, failed: OSError | None) -> None:
        """A delivery is on disk (``failed`` None): acknowledged; or it could not be written: 5xx,
        and Alertmanager sends it again."""
        if failed is not None:
            self._log_error(f"cannot journal a delivery: {failed}")
            reply(500, {"error": "internal error: the delivery could not be journaled"})
            return
        reply(200, {"delivery": seq, "alerts": alerts, "state": "queued"})

    def decide(self, batch: list[Delivery]) -> None:
        raise NotImplementedError

    def yield_to_intake(self, deadline: float) -> None:
        """Deciding gives way while deliveries are arriving (their answers come first), until
        ``deadline`` (monotonic): under a steady stream decisions are delayed, never starved."""
        while (quiet := time.monotonic() - self.last_arrival) < QUIET_SECONDS and time.monotonic() < deadline:
            time.sleep(QUIET_SECONDS - quiet)

    def _track(self, deliveries: list[Delivery]) -> None:
        """Deliveries on disk: kept for ``/api/heals`` and counted by the Alertmanager that sent
        them (the journal's synced batch, once answered; it is queued for the dispatcher next,
        in one hand-over)."""
        self.last_arrival = time.monotonic()
        with self.log_lock:
            for delivery in deliveries:
                self.deliveries[delivery.seq] = delivery
                source = delivery.source
                if not delivery.replayed and (source in self.sources or len(self.sources) < MAX_SOURCES):
                    self.sources[source] = self.sources.get(source, 0) + 1
            while len(self.deliveries) > RECENT_DELIVERIES:
                self.deliveries.popitem(last=False)

    def delivery_views(self, seq: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Recent deliveries, newest first (counts by decision), or the one numbered ``seq`` with
        every alert's decision."""
        with self.log_lock:
            items = list(self.deliveries.values())
        if seq is not None:
            return [d.view(full=True) for d in items if d.seq == seq]
        return [d.view() for d in reversed(items[-limit:])]

    # deciding --------------------------------------------------------------------------------
    def _alerts_made(self, delivery: Delivery) -> bool:
        """A delivery journaled as its body gets its alerts here, on the dispatcher's thread (the
        event loop only answered it). One that cannot be made into alerts stays pending in the
        journal (a restart replays it) and is not decided now."""
        try:
            delivery.make_alerts(self.keep_labels)
        except Exception as exc:
            self._log_error(f"heal: cannot make the alerts of delivery {delivery.seq}: {type(exc).__name__}: {exc}")
            return False
        return True

    def _dispatch_loop(self) -> None:
        """Decide acknowledged deliveries in order, up to BATCH at a time; what could not be
        decided is tried again after RETRY_SECONDS without new deliveries. Ends at a None."""
        while True:
            try:
                first = self.inbox.get(timeout=RETRY_SECONDS if self._retry else None)
            except queue.Empty:
                batch, self._retry = self._retry, []
            else:
                if first is None:
                    return
                batch = [first]
                # a burst is acknowledged first and decided after: deciding starts once no
                # delivery came for QUIET_SECONDS (at most COLLECT_SECONDS after the first). The
                # dispatcher sleeps through the burst and takes what arrived when it wakes: a
                # wake-up per delivery would take the GIL from the event loop answering them
                deadline = time.monotonic() + COLLECT_SECONDS
                while len(batch) < BATCH:
                    now = time.monotonic()
                    quiet = now - self.last_arrival
                    if quiet < QUIET_SECONDS and now < deadline:
                        time.sleep(min(QUIET_SECONDS - quiet, deadline - now))
                        continue
                    try:
                        while len(batch) < BATCH:
                            nxt = self.inbox.get_nowait()
                            if nxt is None:
                                self.inbox.put(None)
                                break
                            batch.append(nxt)
                    except queue.Empty:
                        pass
                    break
            batch = [d for d in batch if self._alerts_made(d)]
            try:
                self.decide(batch)
            except Exception as exc:  # never a dead dispatcher: what is undecided is tried again
                self._log_error(f"heal: internal error deciding deliveries: {type(exc).__name__}: {exc}")
                self._retry += [d for d in batch if not d.decided() and d not in self._retry]
            self.collect_garbage()  # between bursts: deciding waited for a pause in the deliveries
