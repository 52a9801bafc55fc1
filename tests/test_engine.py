"""The check engine: registration, isolation, timeouts, dependencies and the verdict."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from exporter.bot.context import Context
from exporter.checks import registry
from exporter.core import engine as engine_mod
from exporter.core.catalog import load as load_catalog
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.faults import AlpacaCredentialsMissing, RunLogUnreadable
from exporter.core.model import CheckFault, Outcome, Readiness, Status, verdict

from .conftest import wait_for


def test_registered_ids_match_the_catalog() -> None:
    cat = load_catalog()
    implemented = {p.id for p in cat if p.detection == "implemented"}
    assert set(registry()) == implemented
    # a catalog entry without a check is allowed only while it is marked planned
    for p in cat:
        assert (p.id in registry()) == (p.detection == "implemented"), p.id


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """An engine whose FP-1.2/FP-1.3/FP-1.4 checks are replaced by controllable functions."""
    cfg = load_config(None, str(tmp_path))
    return Engine(Context(cfg, environ={}), registry())


def _swap(monkeypatch: pytest.MonkeyPatch, eng: Engine, fp: str, fn) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(eng.checks, fp, fn)


def test_a_raising_check_is_an_error_with_the_reason(scratch: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx, p):  # type: ignore[no-untyped-def]
        raise KeyError("entry_weights")

    _swap(monkeypatch, scratch, "FP-2.1", boom)
    r = scratch.run(["FP-2.1"])["FP-2.1"]
    assert r.status is Status.ERROR
    assert "KeyError" in r.outcome.message and "entry_weights" in r.outcome.message


def test_a_check_fault_carries_its_kind_and_a_judgement_carries_none(scratch: Engine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter tells its own faults from the bot's by type, never by the message's wording."""
    def boom(ctx, p):  # type: ignore[no-untyped-def]
        raise ValueError("check timed out")  # a message that reads like another fault

    def garbage(ctx, p):  # type: ignore[no-untyped-def]
        return "fine"

    def judged(ctx, p):  # type: ignore[no-untyped-def]
        return Outcome.error("check raised by the bot's own words")

    _swap(monkeypatch, scratch, "FP-2.1", boom)
    _swap(monkeypatch, scratch, "FP-3.1", garbage)
    _swap(monkeypatch, scratch, "FP-3.2", judged)
    monkeypatch.delitem(scratch.checks, "FP-5.4")
    res = scratch.run(["FP-2.1", "FP-3.1", "FP-3.2", "FP-5.4"])
    assert res["FP-2.1"].outcome.fault is CheckFault.RAISED
    assert res["FP-3.1"].outcome.fault is CheckFault.BAD_RETURN
    assert res["FP-5.4"].outcome.fault is CheckFault.UNREGISTERED
    assert res["FP-3.2"].status is Status.ERROR and res["FP-3.2"].outcome.fault is None


def test_a_hanging_check_times_out_and_never_blocks_others(scratch: Engine, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    release = threading.Event()
    hang_started = threading.Event()
    quick_ran_during_hang: list[bool] = []

    def hang(ctx, p):  # type: ignore[no-untyped-def]
        hang_started.set()
        release.wait(30)
        return Outcome.ok("late")

    def quick(ctx, p):  # type: ignore[no-untyped-def]
        # waits until the other check is stuck, so it can only finish if the engine runs it alongside
        quick_ran_during_hang.append(hang_started.wait(30) and not release.is_set())
        return Outcome.ok("quick")

    cfg = tmp_path / "c.yaml"
    cfg.write_text("checks:\n  FP-2.1: {timeout_seconds: 0.5}\n")
    eng = Engine(Context(load_config(str(cfg), str(tmp_path)), environ={}), registry())
    _swap(monkeypatch, eng, "FP-2.1", hang)
    _swap(monkeypatch, eng, "FP-3.1", quick)
    res = eng.run(["FP-2.1", "FP-3.1"])
    hung, other = res["FP-2.1"], res["FP-3.1"]
    assert hung.status is Status.ERROR and hung.outcome.message == "check timed out after 0.5 s"
    assert hung.outcome.fault is CheckFault.TIMED_OUT
    # the other check started after the hung one, finished while it was still stuck, and before
    # the engine gave up on it: ordering, not speed
    assert other.status is Status.OK and other.outcome.message == "quick"
    assert quick_ran_during_hang == [True]
    assert other.last_check + other.duration_seconds <= hung.last_check
    assert not release.is_set()  # run() returned while the hung check still had not
    # the hung thread is still alive: the next run says so instead of stacking another thread
    again = eng.run(["FP-2.1"])["FP-2.1"]
    assert again.status is Status.ERROR and "has not returned" in again.outcome.message
    release.set()
    wait_for(lambda: eng.run(["FP-2.1"])["FP-2.1"].status is Status.OK, what="the released check to run again")
    # and the late result never replaced the timeout: a fresh run is needed to see OK
    assert eng.run(["FP-2.1"])["FP-2.1"].outcome.message == "late"


def test_more_hung_checks_than_workers_never_hold_back_the_others(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """The checks share a few long-lived workers: when every one of them is stuck in a hung check,
    the remaining checks still run (another worker is started), in this run and the next."""
    release = threading.Event()
    hung_ids = ["FP-2.1", "FP-2.3", "FP-2.7", "FP-3.3", "FP-3.4", "FP-3.5", "FP-3.6", "FP-3.7"]  # none depends on another
    assert len(hung_ids) > engine_mod.WORKERS
    started: list[str] = []

    def hang(ctx, p):  # type: ignore[no-untyped-def]
        started.append("hung")
        release.wait(60)
        return Outcome.ok("late")

    cfg = tmp_path / "c.yaml"
    cfg.write_text("checks:\n" + "".join(f"  {fp}: {{timeout_seconds: 1}}\n" for fp in hung_ids))
    eng = Engine(Context(load_config(str(cfg), str(tmp_path)), environ={}), registry())
    for fp in hung_ids:
        _swap(monkeypatch, eng, fp, hang)
    _swap(monkeypatch, eng, "FP-3.1", lambda ctx, p: Outcome.ok("quick"))
    try:
        res = eng.run([*hung_ids, "FP-3.1"])
        assert res["FP-3.1"].outcome.message == "quick"
        assert not release.is_set() and len(started) == len(hung_ids)
        for fp in hung_ids:
            assert res[fp].outcome.fault is CheckFault.TIMED_OUT, fp
        # the next cycle: the hung checks are reported, not started again, and the rest runs
        again = eng.run([*hung_ids, "FP-3.1"])
        assert again["FP-3.1"].outcome.message == "quick"
        for fp in hung_ids:
            assert again[fp].outcome.fault is CheckFault.HUNG, fp
        assert len(started) == len(hung_ids)
    finally:
        release.set()
    wait_for(lambda: eng.run(hung_ids)["FP-2.1"].outcome.message == "late", what="the released checks to run again")


def test_a_run_shares_per_cycle_values_and_the_next_run_computes_them_again(scratch: Engine,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``ctx.per_cycle`` (one process-table scan per cycle): one computation for all the checks of
    a run, a fresh one in the next run; a check called outside a run computes its own."""
    computed: list[int] = []

    def value() -> int:
        computed.append(1)
        return len(computed)

    seen: list[int] = []

    def reader(ctx, p):  # type: ignore[no-untyped-def]
        seen.append(ctx.per_cycle("answer", value))
        return Outcome.ok()

    for fp in ("FP-2.1", "FP-3.1", "FP-3.3"):
        _swap(monkeypatch, scratch, fp, reader)
    scratch.run(["FP-2.1", "FP-3.1", "FP-3.3"])
    assert seen == [1, 1, 1]
    scratch.run(["FP-2.1", "FP-3.1", "FP-3.3"])
    assert seen[3:] == [2, 2, 2]
    assert scratch.ctx.per_cycle("answer", value) == 3 and scratch.ctx.per_cycle("answer", value) == 4


def test_dependencies_skip_with_the_root_cause(scratch: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []

    def mark(fp: str, out: Outcome):  # type: ignore[no-untyped-def]
        def fn(ctx, p):  # type: ignore[no-untyped-def]
            called.append(fp)
            return out
        return fn

    _swap(monkeypatch, scratch, "FP-4.1", mark("FP-4.1", Outcome.error("down")))
    for fp in ("FP-4.2", "FP-4.3", "FP-3.2"):
        _swap(monkeypatch, scratch, fp, mark(fp, Outcome.ok()))
    res = scratch.run(["FP-4.1", "FP-4.2", "FP-4.3", "FP-3.2"])
    assert called == ["FP-4.1"]
    for fp in ("FP-4.2", "FP-4.3", "FP-3.2"):
        assert res[fp].status is Status.SKIPPED
        assert res[fp].outcome.message == "depends on FP-4.1"
    # a WARN dependency does not skip its dependents
    _swap(monkeypatch, scratch, "FP-4.1", mark("FP-4.1", Outcome.warn("429")))
    res = scratch.run(["FP-4.1", "FP-4.2"])
    assert res["FP-4.2"].status is Status.OK
    # dependencies not run this time come from `known`
    res = scratch.run(["FP-4.3"], known={"FP-4.2": res["FP-4.2"]})
    assert res["FP-4.3"].status is Status.OK


def test_a_fault_skips_for_the_point_the_catalog_names(scratch: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Who reports an unreadable fact is catalog data: the check raises a typed fault, never names a point."""
    def run_log_gone(ctx, p):  # type: ignore[no-untyped-def]
        raise RunLogUnreadable("cannot read the run log (run.jsonl does not exist)", cycles=0)

    def credentials_gone(ctx, p):  # type: ignore[no-untyped-def]
        raise AlpacaCredentialsMissing("Alpaca credentials are not set")

    assert scratch.catalog["FP-3.4"].reported_by["run_log_unreadable"] == "FP-1.8"
    _swap(monkeypatch, scratch, "FP-3.4", run_log_gone)
    _swap(monkeypatch, scratch, "FP-4.9", credentials_gone)
    _swap(monkeypatch, scratch, "FP-4.1", lambda ctx, p: Outcome.ok())
    _swap(monkeypatch, scratch, "FP-1.8", lambda ctx, p: Outcome.warn("run log missing"))
    _swap(monkeypatch, scratch, "FP-4.2", lambda ctx, p: Outcome.error("key not set"))
    res = scratch.run(["FP-3.4", "FP-4.9", "FP-4.1", "FP-1.8", "FP-4.2"])
    gate, skew = res["FP-3.4"], res["FP-4.9"]
    assert gate.status is Status.SKIPPED and gate.outcome.message.endswith("; FP-1.8 reports it")
    assert gate.outcome.details == {"cycles": 0}
    # FP-1.8 only warns about the run log: it is named, not made the root cause of a skip
    assert gate.outcome.skipped_by is None
    assert skew.status is Status.SKIPPED and skew.outcome.skipped_by == "FP-4.2"
    # a fault the point's entry does not declare is the point's own ERROR: never unreported
    _swap(monkeypatch, scratch, "FP-5.4", run_log_gone)
    assert scratch.run(["FP-5.4"])["FP-5.4"].status is Status.ERROR
    # and `--only` runs the point that reports the fact with it
    assert "FP-1.8" in scratch.with_dependencies(["FP-3.4"])


def test_check_returning_garbage_is_an_error(scratch: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, scratch, "FP-3.1", lambda ctx, p: "fine")
    r = scratch.run(["FP-3.1"])["FP-3.1"]
    assert r.status is Status.ERROR and "not an Outcome" in r.outcome.message


@pytest.mark.parametrize("statuses, max_warnings, expected", [
    ([], 2, Readiness.READY),
    ([Status.OK, Status.SKIPPED], 2, Readiness.READY),
    ([Status.WARN, Status.WARN], 2, Readiness.READY),
    ([Status.WARN] * 3, 2, Readiness.DEGRADED),
    ([Status.WARN], 0, Readiness.DEGRADED),
    ([Status.ERROR, Status.OK], 2, Readiness.BLOCKED),
    ([Status.ERROR] + [Status.WARN] * 5, 2, Readiness.BLOCKED),
    ([Status.SKIPPED] * 4, 0, Readiness.READY),
])
def test_verdict(statuses: list[Status], max_warnings: int, expected: Readiness) -> None:
    assert verdict(statuses, max_warnings) is expected


def test_registering_twice_is_refused() -> None:
    with pytest.raises(RuntimeError):
        engine_mod.check("FP-1.1")(lambda ctx, p: Outcome.ok())


def test_shared_lookups_expire_when_the_clock_steps_back(tmp_path: Path) -> None:
    """A cached broker answer is fresh for ttl seconds of the clock; a clock stepped back (NTP)
    must not keep it fresh until the clock catches up again."""
    now = [1_000_000.0]
    ctx = Context(load_config(None, str(tmp_path)), environ={}, clock=lambda: now[0])
    calls: list[float] = []

    def fetch() -> float:
        calls.append(now[0])
        return now[0]

    assert ctx.shared("k", 5, fetch) == 1_000_000.0
    now[0] += 4
    assert ctx.shared("k", 5, fetch) == 1_000_000.0 and len(calls) == 1  # still fresh
    now[0] -= 3600
    assert ctx.shared("k", 5, fetch) == now[0] and len(calls) == 2  # stepped back: asked again
    now[0] += 1
    assert ctx.shared("k", 5, fetch) == now[0] - 1 and len(calls) == 2
