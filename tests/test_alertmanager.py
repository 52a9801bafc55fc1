"""The generated Alertmanager configuration: amtool validation, the routing tree, and a real
Alertmanager delivering to loopback receivers.

What the operator relies on: critical pages, warning tickets, a healable point also reaches the
healer with its bearer token, a root cause silences the points that depend on it, BLOCKED
silences DEGRADED, and the Watchdog reaches the heartbeat receiver only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.core.catalog import load
from rules import generate as rulegen

from .conftest import wait_for
from .prom import stop_process
from .test_exporter import free_port

REPO = Path(__file__).resolve().parent.parent
AM_CONFIG = REPO / rulegen.ALERTMANAGER_PATH
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
AM_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or "/usr/bin/prometheus-alertmanager"

pytestmark = pytest.mark.skipif(not Path(AMTOOL).exists(), reason="amtool not installed (make system-deps)")


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config_passes(tmp_path: Path) -> None:
    r = amtool("check-config", str(AM_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    # the test/demo variant is valid too
    rulegen.render_stack(scrape_interval="1s", alert_for="1s", webhook_base_url="http://127.0.0.1:1",
                         healer_token_file=tmp_path / "t", notify_interval="1s", out_dir=tmp_path)
    r = amtool("check-config", str(tmp_path / rulegen.ALERTMANAGER_FILE))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("labels, receivers", [
    ({"alertname": "TradingBlocked", "severity": "critical"}, "pager"),
    ({"alertname": "TradingDegraded", "severity": "warning"}, "ticket"),
    ({"alertname": "TradingFailurePoint", "fp": "FP-1.1", "severity": "critical", "healer": "restart-uw-daemon"},
     "healer,pager"),
    ({"alertname": "TradingFailurePoint", "fp": "FP-1.3", "severity": "warning", "healer": "restart-uw-daemon"},
     "healer,ticket"),
    ({"alertname": "TradingFailurePoint", "fp": "FP-4.1", "severity": "critical"}, "pager"),
    ({"alertname": "TradingFailurePoint", "fp": "FP-4.1", "severity": "warning", "healer": ""}, "ticket"),
    ({"alertname": "TradingReadinessExporterDown", "severity": "critical"}, "pager"),
    ({"alertname": "TradingFailurePointStale", "fp": "FP-4.1", "severity": "warning"}, "ticket"),
    ({"alertname": "TradingHealerGaveUp", "fp": "FP-1.1", "severity": "warning"}, "ticket"),
    # the heartbeat goes to its receiver only, never to people
    ({"alertname": "Watchdog", "severity": "info"}, "heartbeat"),
])
def test_routing_tree(labels: dict[str, str], receivers: str) -> None:
    r = amtool("config", "routes", "test", f"--config.file={AM_CONFIG}", f"--verify.receivers={receivers}",
               *(f"{k}={v}" for k, v in labels.items()))
    assert r.returncode == 0, (labels, r.stdout, r.stderr)


def test_every_dependency_in_the_catalog_is_an_inhibit_rule() -> None:
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    pairs = set()
    for rule in cfg["inhibit_rules"]:
        assert rule["equal"] == ["job", "instance", "bot", "env"]
        src = dict(m.split("=", 1) for m in rule["source_matchers"] if "=~" not in m)
        if src.get("alertname") != '"TradingFailurePoint"':
            continue
        assert src["severity"] == '"critical"'
        (target,) = [m for m in rule["target_matchers"] if m.startswith("fp=~")]
        for dep in target[len('fp=~"'):-1].split("|"):
            pairs.add((src["fp"].strip('"'), dep.replace("\\", "")))
    assert pairs == {(dep, p.id) for p in load() for dep in p.depends_on}
    assert {"source_matchers": ['alertname="TradingBlocked"'], "target_matchers": ['alertname="TradingDegraded"'],
            "equal": ["job", "instance", "bot", "env"]} in cfg["inhibit_rules"]


# --- a real Alertmanager ------------------------------------------------------------------------
class Receiver:
    """Loopback webhook receiver recording (path, Authorization header, alert labels)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, list[dict[str, str]]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.got.append((self.path, self.headers.get("Authorization", ""),
                                  [a["labels"] for a in body["alerts"] if a["status"] == "firing"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alertnames(self, path: str) -> set[tuple[str, str]]:
        return {(a["alertname"], a.get("fp", "")) for p, _, alerts in list(self.got) if p == path for a in alerts}


@pytest.fixture
def am(tmp_path: Path) -> Iterator[tuple[str, Receiver, str]]:
    if not Path(AM_BIN).exists():
        pytest.skip("Alertmanager is not installed (make system-deps)")
    rcv = Receiver()
    token = "s3cret-healer-token"  # noqa: S105 (a test token for a loopback receiver)
    (tmp_path / "token").write_text(token)
    rulegen.render_stack(scrape_interval="1s", alert_for="1s", webhook_base_url=rcv.url,
                         healer_url=f"{rcv.url}/alertmanager", healer_token_file=tmp_path / "token",
                         notify_interval="1s", out_dir=tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    err = open(tmp_path / "am.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([AM_BIN, f"--config.file={tmp_path / rulegen.ALERTMANAGER_FILE}",
                             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"alertmanager exited: {(tmp_path / 'am.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:  # noqa: S310 (loopback)
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="alertmanager ready", every=0.1)
        yield url, rcv, token
    finally:
        stop_process(proc, timeout=10)
        err.close()
        rcv.server.shutdown()
        rcv.server.server_close()


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = [{"labels": {"job": "trading-readiness", "instance": "bot:9870", **a},
             "annotations": {"summary": a["alertname"]},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()} for a in alerts]
    req = urllib.request.Request(url + "/api/v2/alerts", data=json.dumps(body).encode(),  # noqa: S310 (loopback)
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
        assert r.status == 200


def test_real_alertmanager_routes_inhibits_and_authorises_the_healer(am: tuple[str, Receiver, str]) -> None:
    url, rcv, token = am
    # the sources first: the inhibitor must know them before the targets arrive (as in real life,
    # where the root cause fails first)
    post_alerts(url, [
        {"alertname": "TradingBlocked", "severity": "critical"},
        # a root cause that is critical and healable (FP-1.3 depends on FP-1.2)
        {"alertname": "TradingFailurePoint", "fp": "FP-1.2", "severity": "critical", "healer": "restart-uw-daemon"},
        # no dependency, no healer: pages or tickets, never reaches the healer
        {"alertname": "TradingFailurePoint", "fp": "FP-4.1", "severity": "critical"},
        {"alertname": "TradingFailurePoint", "fp": "FP-6.2", "severity": "warning"},
        {"alertname": "Watchdog", "severity": "info"},
    ])
    want_pager = {("TradingBlocked", ""), ("TradingFailurePoint", "FP-1.2"), ("TradingFailurePoint", "FP-4.1")}
    wait_for(lambda: rcv.alertnames("/pager") >= want_pager and rcv.alertnames("/alertmanager")
             and rcv.alertnames("/ticket") and rcv.alertnames("/heartbeat"), timeout=30,
             what="notifications on every receiver", every=0.1)

    post_alerts(url, [
        {"alertname": "TradingDegraded", "severity": "warning"},
        {"alertname": "TradingFailurePoint", "fp": "FP-1.3", "severity": "critical", "healer": "restart-uw-daemon"},
    ])

    def inhibited() -> set[tuple[str, str]]:
        with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as r:  # noqa: S310 (loopback)
            alerts = json.loads(r.read())
        return {(a["labels"]["alertname"], a["labels"].get("fp", "")) for a in alerts if a["status"]["inhibitedBy"]}

    wait_for(lambda: inhibited() == {("TradingDegraded", ""), ("TradingFailurePoint", "FP-1.3")}, timeout=30,
             what="Degraded and FP-1.3 inhibited", every=0.1)
    # two more heartbeats (every second) mark time: anything not inhibited would have gone out by now
    beats = sum(p == "/heartbeat" for p, _, _ in list(rcv.got))
    wait_for(lambda: sum(p == "/heartbeat" for p, _, _ in list(rcv.got)) >= beats + 2, timeout=30,
             what="two more heartbeats", every=0.1)

    assert rcv.alertnames("/pager") == want_pager  # FP-1.3 is critical but its root cause pages alone
    assert rcv.alertnames("/ticket") == {("TradingFailurePoint", "FP-6.2")}  # Degraded is inhibited by Blocked
    assert rcv.alertnames("/alertmanager") == {("TradingFailurePoint", "FP-1.2")}  # the healer heals the root
    assert rcv.alertnames("/heartbeat") == {("Watchdog", "")}
    auth = {(p, a) for p, a, _ in rcv.got}
    assert ("/alertmanager", f"Bearer {token}") in auth
    assert all(a == "" for p, a in auth if p != "/alertmanager")  # the token goes to the healer only
