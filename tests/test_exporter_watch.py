"""Event-driven re-checks: a watched process's exit and a finished heal re-check their point at
once. The interval is an hour here, so only the event can be what re-checked it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from exporter.core.config import load as load_config
from exporter.core.model import Status
from exporter.serve.scheduler import Scheduler
from sandbox.botroot import BotRoot

from .conftest import Procs, wait_for


def hourly(root: Path) -> None:
    (root / "trading-readiness.yaml").write_text("exporter:\n  default_interval_seconds: 3600\n")


def status(sched: Scheduler, fp: str) -> Status | None:
    r = sched.snapshot().results.get(fp)
    return r.status if r is not None else None


def test_a_dead_daemon_is_an_error_at_once_and_its_restart_is_followed(bot: BotRoot, procs: Procs) -> None:
    hourly(bot.path)
    daemon = procs.daemon()
    sched = Scheduler(load_config(None, str(bot.path))).start()
    try:
        assert sched.wait_evaluated(60) == []
        assert status(sched, "FP-1.1") is Status.OK
        wait_for(lambda: sched.watcher._fds, timeout=10, what="the daemon watched")
        daemon.kill()
        daemon.wait(timeout=10)
        wait_for(lambda: status(sched, "FP-1.1") is Status.ERROR, timeout=30, what="FP-1.1 ERROR after the kill")
        assert sched.watcher.exits >= 1
        # what depends on the daemon was re-checked with it (SKIPPED, naming FP-1.1)
        dependents = [fp for fp in sched.config.catalog.dependents("FP-1.1") if fp in sched.enabled]
        assert dependents and all(status(sched, fp) is Status.SKIPPED for fp in dependents)
        # a restart (by a supervisor, by the healer) is followed until the point is OK again
        procs.daemon()
        wait_for(lambda: status(sched, "FP-1.1") is Status.OK, timeout=30, what="FP-1.1 OK after the restart")
    finally:
        sched.stop()


def test_a_finished_heal_re_checks_its_point(bot: BotRoot, procs: Procs) -> None:
    hourly(bot.path)
    sched = Scheduler(load_config(None, str(bot.path))).start()
    try:
        assert sched.wait_evaluated(60) == []
        assert status(sched, "FP-1.1") is Status.ERROR  # no daemon yet
        procs.daemon()
        time.sleep(0.5)
        assert status(sched, "FP-1.1") is Status.ERROR  # nothing re-checks it by itself within the hour
        audit = sched.config.resolve(sched.config["healer"]["audit_file"])
        audit.parent.mkdir(parents=True, exist_ok=True)
        with audit.open("a") as fh:
            fh.write(json.dumps({"event": "attempt", "fp": "FP-1.1", "outcome": "success",
                                 "epoch": time.time()}) + "\n")
        wait_for(lambda: status(sched, "FP-1.1") is Status.OK, timeout=30, what="FP-1.1 re-checked after the heal")
        assert sched.watcher.heals >= 1
    finally:
        sched.stop()
