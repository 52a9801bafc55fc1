"""A fleet end to end, from ``generate --fleet`` output: six sandboxed bots (each with its exporter
and healer), two Prometheus collection shards, a central VictoriaMetrics and a clustered
Alertmanager pair, every process real and on loopback.

Each shard scrapes the bots hashmod deals it; the fleet dashboard's queries against VictoriaMetrics
return every bot. Then VictoriaMetrics is stopped and one bot's UW daemon killed: the alert fires
on that bot's shard labelled with its ``bot``, reaches both Alertmanagers, heals that bot only and
once (every healer's audit is read), and every other bot stays READY throughout -- alerting and
healing never touch the central store. VictoriaMetrics comes back on the same storage and the
shards' remote_write queues backfill the outage: it holds every bot's samples from inside the gap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sandbox.stack import Timings, find_binary, matches

from .conftest import REPO, STACKS, wait_for
from .fleetstack import FleetStack, dashboard_queries

pytestmark = [STACKS, pytest.mark.skipif(
    find_binary("prometheus") is None or find_binary("prometheus-alertmanager", "alertmanager") is None
    or find_binary("victoria-metrics") is None,
    reason="needs Debian's prometheus, prometheus-alertmanager and victoria-metrics (make system-deps)")]

BOTS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
BROKEN = "charlie"
#: the fast test timings, scraped every 2 s: six exporters checking every point each second share two
#: cores with the rest of the suite, and a 0.8 s scrape timeout would report a busy one as down
TIMINGS = Timings(scrape="2s", evaluation="1s", alert_for="0s", notify="1s", heal_cooldown=120)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetStack]:
    st = FleetStack(tmp_path, bots=BOTS, shards=2, alertmanagers=2, timings=TIMINGS)
    try:
        st.start(timeout=90)
        wait_for(lambda: all(b.readiness() == "READY" for b in st.running) and st.live(), timeout=60,
                 every=0.5, what="every bot READY, recorded on its shard, the Watchdog in both Alertmanagers")
        yield st
    finally:
        st.stop()


def alert_in_every_alertmanager(st: FleetStack, bot: str) -> bool:
    return all(any(matches(a, alertname="TradingFailurePoint", fp="FP-1.1", bot=bot) for a in st.alertmanager_alerts(i))
               for i in range(2))


def test_fleet_shards_alert_and_heal_one_bot_without_the_central_store_and_backfill_it(fleet: FleetStack) -> None:
    st = fleet
    assert st.fleet is not None
    # each shard scrapes exactly the share hashmod gives it, of the exporters and of the healers
    for shard, names in st.fleet.assignment().items():
        assert names, f"shard {shard} has no bot"
        wait_for(lambda shard=shard, names=names: st.shard_targets(shard, "trading-readiness") == set(names),
                 timeout=20, what=f"shard {shard} scraping {names}")
    healers = set().union(*(st.shard_targets(i, "trading-healer") for i in range(2)))
    assert healers == set(BOTS)
    for url in st.alertmanager_urls:  # the pair is one cluster
        wait_for(lambda url=url: len(requests.get(f"{url}/api/v2/status", timeout=3).json()["cluster"]["peers"]) == 2,
                 timeout=30, what=f"{url} clustered with its peer")

    # the fleet dashboard reads the central store: every bot is there, with the shard that sent it
    def answered(expr: str) -> bool:
        result = st.vm_query(expr)
        bots = {r["metric"].get("bot") for r in result} - {None}
        if bots:
            return bots == set(BOTS)
        # a fleet-wide count has no bot label; the last-heal column is empty until a bot heals
        return bool(result) or "timestamp(" in expr

    for expr in dashboard_queries(REPO):
        wait_for(lambda expr=expr: answered(expr), timeout=30, what=f"every bot in VictoriaMetrics for {expr}")
    ready = next(e for e in dashboard_queries(REPO) if "== bool 0" in e and e.startswith("sum("))
    wait_for(lambda: [float(r["value"][1]) for r in st.vm_query(ready)] == [len(BOTS)], timeout=30,
             what=f"{len(BOTS)} bots READY in the fleet dashboard")

    def bot_variable() -> list[str]:  # the dashboard's bot variable: label_values(trading_exporter_build_info, bot)
        return sorted(requests.get(f"{st.vm_url}/api/v1/label/bot/values", timeout=5, params={
            "match[]": 'trading_exporter_build_info{job="trading-readiness"}'}).json()["data"])

    wait_for(lambda: bot_variable() == sorted(BOTS), timeout=30, what="every bot in the dashboard's bot variable")
    # each shard's recorded series reaches the central store with that shard's own rule evaluation
    # and remote_write, which need not have happened yet for both when the raw series are there
    wait_for(lambda: {r["metric"].get("shard") for r in st.vm_query("trading:readiness:status")} == {"0", "1"},
             timeout=30, what="both shards' recorded readiness in VictoriaMetrics")

    broken = st.bot(BROKEN)
    others = [b for b in st.running if b.name != BROKEN]
    seen: dict[str, set[str | None]] = {b.name: set() for b in others}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.3):
            for b in others:
                seen[b.name].add(b.readiness())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        st.stop_vm()
        outage_start = time.time()
        assert not st.vm_up()
        broken.sandbox.fault("daemon-kill")
        wait_for(lambda: any(matches(a, alertname="TradingFailurePoint", fp="FP-1.1", bot=BROKEN, env="live")
                             for a in st.prometheus_alerts()), timeout=30, what=f"FP-1.1 firing for {BROKEN}")
        blocked = wait_for(lambda: [a for a in st.prometheus_alerts() if matches(a, alertname="TradingBlocked")],
                           timeout=30, what="TradingBlocked firing")
        assert {(a["labels"].get("bot"), a["labels"].get("env")) for a in blocked} == {(BROKEN, "live")}
        wait_for(lambda: alert_in_every_alertmanager(st, BROKEN), timeout=20,
                 what="the FP-1.1 alert in both Alertmanagers")
        wait_for(lambda: broken.readiness() == "READY" and broken.heals(), timeout=60, what=f"{BROKEN} healed, READY")
        assert st.sink is not None
        assert any(matches(a, fp="FP-1.1", bot=BROKEN) for a in st.sink.alerts("/pager"))
        # a late copy from the second peer can only come while a peer still holds the alert
        wait_for(lambda: not any(matches(a, fp="FP-1.1", bot=BROKEN) for i in range(2)
                                 for a in st.alertmanager_alerts(i)),
                 timeout=40, what="the alert resolved in both Alertmanagers")
        time.sleep(2)  # the outage spans several scrapes and remote_write retries after the heal
        outage_end = time.time()
        assert not st.vm_up()
    finally:
        stop.set()
        watcher.join(timeout=5)

    attempts = {b.name: [(r["fp"], r["outcome"]) for r in b.audit() if r.get("event") == "attempt"]
                for b in st.running}
    assert attempts == {b: ([("FP-1.1", "success")] if b == BROKEN else []) for b in BOTS}
    assert all(s == {"READY"} for s in seen.values()), seen
    about_bots = ("TradingFailurePoint", "TradingBlocked", "TradingDegraded")
    assert not [a for a in st.sink.alerts("/pager")
                if a["labels"].get("alertname") in about_bots and a["labels"].get("bot") != BROKEN]

    # the shards' remote_write queues replay the outage into VictoriaMetrics once it is back
    st.start_vm()
    inside = (outage_start + 1, outage_end - 1)

    def backfilled() -> dict[str, list[float]]:
        # scraped every 2 s: the whole gap, from its start to its end, not a sample or two
        samples = st.vm_samples("trading_readiness_status", *inside)
        whole = all(len(samples.get(b, [])) >= (inside[1] - inside[0]) / 4 and
                    min(samples[b]) <= inside[0] + 3 and max(samples[b]) >= inside[1] - 3 for b in BOTS)
        return samples if whole else {}

    samples = wait_for(backfilled, timeout=60, every=1.0, what="every bot's samples from the outage in VictoriaMetrics")
    assert all(inside[0] <= t <= inside[1] for ts in samples.values() for t in ts)
