"""A point's verdict does not depend on which other points ran before it, or with it.

For each bot root (healthy, broken in several ways, and the real bot's recordings) every enabled
point is evaluated three ways, against the same loopback servers:

(a) the whole cycle at once: ``Engine(ctx, registry()).run()``, the points concurrently, dependencies honoured;
(b) one point at a time on one shared Context (``Engine.report([fp])``, which runs the point's
    dependencies with it, as `check --only` does), in a shuffled order and then in the reverse of
    that order (so every pair of points runs in both relative orders), with the same clock as (a);
(c) ``check --json --only FP-x`` for every x on its own, each in a fresh process. Starting 51
    interpreters per root would take minutes (imports and the catalog's YAML cost ~0.5-2 s each),
    so one helper process imports the CLI and parses the catalog once, then forks a child per
    point that calls the CLI's ``main``: each child starts from the freshly imported state a new
    ``python -m exporter`` has, and no check has run in it.

Compared: the status always. Messages are compared with numbers masked (ages, timings, byte
counts and the live clock of (c) differ between runs; a changed number that matters changes the
status too). Every point of every root must agree in all three ways, with no exemption: a point
skipped for a failing dependency in the cycle is skipped for it alone too, because `--only` runs
the dependencies; and (a)'s skip must name a dependency that failed in (a).

The shuffle seed is printed with every failure; set ORDER_SEED to replay one.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.bot.context import Context
from exporter.checks import registry
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Result, Status
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

from .conftest import REPO, Procs, clean_env
from .realbot import DAEMON_BEFORE_429, DAEMON_DURING_429, MAIN_END, Moment, RecordedAlpaca, build_root, force_open

SEED = int(os.environ.get("ORDER_SEED", "20261206"))
#: `check --only` processes alive at once in (c): they mostly wait (loopback I/O, retry delays)
CLI_WIDTH = 4

#: imports the CLI once; then, per request line {"root", "out", "ids"} on stdin, forks one child per
#: point that runs `check --json --only <fp>` into <out>/<fp>.json, and answers "done"
RUNNER = r"""
import json, os, sys
import exporter.cli as cli, exporter.checks, exporter.core.catalog, exporter.bot.context, exporter.core.engine, exporter.tools.render
exporter.checks.registry()  # the imports `check` does first
exporter.core.catalog.load()     # the catalog is parsed once per process anyway (functools.cache)
width = int(sys.argv[1])
for line in sys.stdin:
    req = json.loads(line)
    running = set()
    for fp in req["ids"]:
        if len(running) >= width:
            running.discard(os.wait()[0])
        pid = os.fork()
        if pid == 0:
            fd = os.open(os.path.join(req["out"], fp + ".json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            try:
                code = cli.main(["--bot-root", req["root"], "check", "--json", "--only", fp])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 3
            sys.stdout.flush()
            os._exit(code)
        running.add(pid)
    while running:
        running.discard(os.wait()[0])
    sys.stdout.write("done\n")
    sys.stdout.flush()
"""


@dataclass
class Case:
    name: str
    root: Path
    now: float
    procs: Procs | None = None
    uw: FakeUW | None = None


@dataclass
class Verdict:
    status: str
    message: str
    skipped_by: str | None = None


@dataclass
class Servers:
    alpaca: RecordedAlpaca
    uw: FakeUW
    extra: list[FakeUW] = field(default_factory=list)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    alpaca, uw = RecordedAlpaca().start(), FakeUW().start()
    force_open(alpaca)
    s = Servers(alpaca, uw)
    yield s
    for srv in (alpaca, uw, *s.extra):
        srv.stop()


# --- the roots ----------------------------------------------------------------------------------
def _bot(tmp: Path, s: Servers, now: float, uw_url: str | None = None) -> BotRoot:
    return BotRoot(tmp, now=now).healthy(s.alpaca.url, uw_url or s.uw.url)


def healthy(tmp: Path, s: Servers, now: float) -> Case:
    return Case("healthy", _bot(tmp, s, now).path, now)


def freeze_and_torn_weights(tmp: Path, s: Servers, now: float) -> Case:
    b = _bot(tmp, s, now)
    b.freeze()
    b.torn("state/signal_weights.json")
    # a torn file is re-read `retries` times `retry_delay_seconds` apart before it counts as torn, and
    # (b) reads it again for every point that runs FP-2.1 with it: the same retries, 20 ms apart
    (b.path / "trading-readiness.yaml").write_text("checks:\n" + "".join(
        f"  {fp}: {{params: {{retry_delay_seconds: 0.02}}}}\n" for fp in ("FP-2.1", "FP-2.6", "FP-5.3")))
    return Case("freeze+torn-weights", b.path, now)


def stale_cache_kill_switch_run_errors(tmp: Path, s: Servers, now: float) -> Case:
    b = _bot(tmp, s, now)
    b.write_cache(last_update=now - 2400)
    b.quota_requests(3, end=now - 60, status=429)
    b.kill_switch()
    b.safe_mode()
    for k in range(3):
        b.run_error("cluster build failed: KeyError 'flow_trades'", at=now - 20 * k)
    b.self_healing(activated_at=now - 600)
    return Case("stale-cache+quota-429+kill-switch+run-errors", b.path, now)


def uw_429_daemon_stale(tmp: Path, s: Servers, now: float) -> Case:
    """UW answers 429 to our probe (FP-1.5 keeps that for FP-1.6/FP-1.10) and the daemon's last
    cycle is 20 min old."""
    uw = FakeUW().start()
    s.extra.append(uw)
    uw.set_mode("429")
    b = BotRoot(tmp, now=now)
    b.healthy(s.alpaca.url, uw.url)
    b.p("logs/uw_daemon.jsonl").unlink()
    b.daemon_cycles(3, end=now - 1200)
    return Case("uw-429+daemon-stale", b.path, now, uw=uw)


def realbot(moment: Moment) -> Callable[[Path, Servers, float], Case]:
    def build(tmp: Path, s: Servers, now: float) -> Case:
        root, sh = build_root(moment, tmp, now, s.alpaca.url, s.uw.url)
        return Case(f"realbot-{moment.name}", root, sh.now)

    build.__name__ = f"realbot_{moment.name}"
    return build


BUILDERS: list[tuple[Callable[[Path, Servers, float], Case], bool]] = [
    (healthy, True),
    (freeze_and_torn_weights, True),
    (stale_cache_kill_switch_run_errors, True),
    (uw_429_daemon_stale, True),
    (realbot(DAEMON_BEFORE_429), False),
    (realbot(DAEMON_DURING_429), False),
    (realbot(MAIN_END), False),
]


# --- the three ways -----------------------------------------------------------------------------
def _verdict(r: Result) -> Verdict:
    return Verdict(r.status.name, r.outcome.message, r.outcome.skipped_by)


def whole_cycle(case: Case) -> dict[str, Verdict]:
    ctx = Context(load_config(None, str(case.root)), environ=clean_env(), clock=lambda: case.now)
    return {fp: _verdict(r) for fp, r in Engine(ctx, registry()).run().items()}


def one_at_a_time(case: Case, order: list[str]) -> dict[str, Verdict]:
    ctx = Context(load_config(None, str(case.root)), environ=clean_env(), clock=lambda: case.now)
    engine = Engine(ctx, registry())
    out = {}
    for fp in order:
        out[fp] = _verdict(engine.report([fp]).results[fp])
    return out


@pytest.fixture(scope="module")
def cli_runner() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(CLI_WIDTH)], cwd=REPO, env=clean_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def each_through_cli(runner: subprocess.Popen[str], case: Case, ids: list[str], out: Path) -> dict[str, Verdict]:
    out.mkdir(parents=True, exist_ok=True)
    assert runner.stdin is not None and runner.stdout is not None
    runner.stdin.write(json.dumps({"root": str(case.root), "out": str(out), "ids": ids}) + "\n")
    runner.stdin.flush()
    assert runner.stdout.readline() == "done\n", f"the check --only helper died (exit {runner.poll()})"
    verdicts = {}
    for fp in ids:
        text = (out / f"{fp}.json").read_text()
        assert text, f"check --json --only {fp} printed nothing on {case.root}"
        res = json.loads(text)["failure_points"][fp]
        verdicts[fp] = Verdict(res["status"], res["message"])
    return verdicts


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def masked(message: str) -> str:
    return NUMBER.sub("#", message)


def differences(label: str, x: dict[str, Verdict], y: dict[str, Verdict], ids: list[str]) -> list[str]:
    out = []
    for fp in ids:
        a, b = x.get(fp), y.get(fp)
        if a is None or b is None:
            out.append(f"{fp}: missing in {label}")
        elif a.status != b.status or masked(a.message) != masked(b.message):
            out.append(f"{fp} [{label}]: {a.status} {a.message!r}  vs  {b.status} {b.message!r}")
    return out


@pytest.mark.parametrize("builder, processes", BUILDERS, ids=[b.__name__ for b, _ in BUILDERS])
def test_verdicts_do_not_depend_on_order(builder: Callable[[Path, Servers, float], Case], processes: bool,
                                         servers: Servers, cli_runner: subprocess.Popen[str],
                                         tmp_path: Path) -> None:
    started = time.monotonic()
    now = float(int(time.time()))
    case = builder(tmp_path / "bot", servers, now)
    if processes:
        case.procs = Procs(case.root)
        case.procs.daemon()
        case.procs.bot()
    try:
        ids = load_config(None, str(case.root)).enabled_ids()
        order = list(ids)
        random.Random(SEED).shuffle(order)
        t0 = time.monotonic()
        # (a) and (b) run on the fixed clock: the broker's clock stands still with it, so the
        # clock-skew points (FP-4.9, FP-6.8) compare like with like; (c) runs on the live clock
        frozen = datetime.fromtimestamp(case.now, UTC)
        servers.alpaca.time_source = lambda: frozen
        try:
            a = whole_cycle(case)
            t1 = time.monotonic()
            b1 = one_at_a_time(case, order)
            b2 = one_at_a_time(case, order[::-1])
        finally:
            servers.alpaca.time_source = lambda: datetime.now(UTC)
        t2 = time.monotonic()
        c = each_through_cli(cli_runner, case, ids, tmp_path / "cli")
        t3 = time.monotonic()
        timing = f"(a) {t1 - t0:.1f} s, (b) {t2 - t1:.1f} s, (c) {t3 - t2:.1f} s"
    finally:
        if case.procs is not None:
            case.procs.stop_all()
    # a skip for a dependency must name one that failed in the cycle
    problems = [f"{fp}: (a) skipped it for {a[fp].skipped_by}, which is {a[a[fp].skipped_by].status} in (a)"
                for fp in ids if a[fp].skipped_by
                if a[fp].skipped_by in a and a[a[fp].skipped_by].status not in (Status.ERROR.name, Status.SKIPPED.name)]
    problems += differences("(a) whole cycle vs (b) shuffled", a, b1, ids)
    problems += differences("(a) whole cycle vs (b) reversed", a, b2, ids)
    problems += differences("(b) shuffled vs (c) --only each", b1, c, ids)
    elapsed = time.monotonic() - started
    assert not problems, (f"{case.name}: verdicts depend on the order or company of points "
                          f"(ORDER_SEED={SEED}, order {order}; {elapsed:.1f} s: {timing}):\n" + "\n".join(problems))
