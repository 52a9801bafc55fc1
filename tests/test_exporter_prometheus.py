"""A real Prometheus (Debian package) scrapes a real `serve` subprocess on loopback.

Proves what the operator relies on: the target is up under the documented job name, and every
enabled failure point's status series is in Prometheus's TSDB and queryable over its HTTP API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.core.config import load as load_config
from sandbox.botroot import BotRoot

from .conftest import wait_for
from .prom import PROMETHEUS, Prometheus
from .test_exporter import Exporter, fast_config

pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="Debian prometheus not installed (make system-deps)")


@pytest.fixture
def scraped(bot: BotRoot, tmp_path: Path) -> Iterator[tuple[Exporter, Prometheus]]:
    fast_config(bot.path)
    exp = Exporter(bot.path, tmp_path / "serve.log")
    prom: Prometheus | None = None
    try:
        wait_for(exp.up, timeout=30, what="exporter up")
        prom = Prometheus(tmp_path, f"127.0.0.1:{exp.port}")
        wait_for(prom.ready, timeout=30, what="prometheus ready")
        yield exp, prom
    finally:
        if prom is not None:
            prom.stop()
        exp.stop()


def test_prometheus_scrapes_every_failure_point(scraped: tuple[Exporter, Prometheus], bot: BotRoot) -> None:
    exp, prom = scraped
    enabled = load_config(None, str(bot.path)).enabled_ids()
    wait_for(exp.ready, timeout=30, what="every check ran once")

    def target_up() -> bool:
        targets = prom.api("/api/v1/targets")["activeTargets"]
        return any(t["labels"]["job"] == "trading-readiness" and t["health"] == "up" for t in targets)

    wait_for(target_up, timeout=30, what="target up", every=0.2)
    # the targets API reports a scrape's health a moment before its samples are committed
    up = wait_for(lambda: prom.query('up{job="trading-readiness"}'), timeout=30, what="the up series", every=0.2)
    assert [s["value"][1] for s in up] == ["1"]

    def all_status_series() -> bool:
        got = {s["metric"]["fp"] for s in prom.query('trading_failure_point_status{job="trading-readiness"}')}
        return got == set(enabled)

    wait_for(all_status_series, timeout=30, what="every FP's status series in Prometheus", every=0.2)
    series = prom.query("trading_failure_point_status")
    by_fp = {s["metric"]["fp"]: s for s in series}
    assert len(series) == len(enabled)  # one series per point, no duplicates
    for fp, s in by_fp.items():
        assert s["metric"]["category"], fp
        assert s["value"][1] in ("0", "1", "2", "-1"), (fp, s["value"])
    # the points no daemon/bot process can satisfy are ERROR in Prometheus too, as on the exporter
    assert by_fp["FP-1.1"]["value"][1] == "2"
    # the other per-FP families are there for every point as well
    for family in ("trading_failure_point_info", "trading_failure_point_interval_seconds",
                   "trading_failure_point_last_check_timestamp_seconds"):
        got = {s["metric"]["fp"] for s in prom.query(family)}
        assert got == set(enabled), family
    assert [s["value"][1] for s in prom.query("trading_readiness_status")] == ["2"]
    assert [s["value"][1] for s in prom.query("trading_exporter_ready")] == ["1"]

    # every scrape Prometheus ever took, the first one included, had every point's status and the
    # verdict: per series, as many raw samples as there were scrapes (all evaluated at one instant)
    def at(expr: str, t: str) -> dict[str, str]:
        result = prom.api("/api/v1/query", query=expr, time=t)["result"]
        return {s["metric"].get("fp", ""): s["value"][1] for s in result}

    wait_for(lambda: int(at('count_over_time(up{job="trading-readiness"}[1h])', f"{time.time():.3f}")[""]) >= 3,
             timeout=30, what="three scrapes", every=0.2)
    t = f"{time.time():.3f}"
    scrapes = at('count_over_time(up{job="trading-readiness"}[1h])', t)[""]
    assert at('min_over_time(up{job="trading-readiness"}[1h])', t)[""] == "1"  # never down once started
    per_fp = at('count_over_time(trading_failure_point_status{job="trading-readiness"}[1h])', t)
    assert per_fp == {fp: scrapes for fp in enabled}
    assert at('count_over_time(trading_readiness_status{job="trading-readiness"}[1h])', t) == {"": scrapes}
