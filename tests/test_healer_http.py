"""The receiver's HTTP side under load it must shrug off: thousands of slow or silent clients
(the thread count stays flat and a real delivery is still answered), a payload of a thousand
alerts (a bounded number of log lines), keep-alive, and repeated identical log lines."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest
import requests

from .conftest import flood_slow_clients, wait_for
from .test_healer_helpers import TOKEN, HealBot, alert, deliver, free_port, payload, receiver, start_heal_cli, wait_idle
from .test_healer_helpers import decisions as delivered


def test_3000_slow_clients_do_not_grow_threads_and_a_real_delivery_is_answered(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    port = free_port()
    proc = start_heal_cli(hb, cfg, port)
    url = f"http://127.0.0.1:{port}"
    socks: list[socket.socket] = []
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return requests.get(url + "/-/healthy", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=20, what="the receiver")
        before, most = flood_slow_clients(port, proc.pid, b"POST /alertmanager HTTP/1.1\r\nHost: x\r\n", socks)
        # the acceptor, the fixed handler pool (one already started), the dispatcher, the action
        # workers and the log summariser: nothing per client
        assert most <= before + 3, (before, most)
        # a real delivery in the middle of it all is answered
        assert deliver(url, payload(alert("FP-1.1"))) == ["accepted"]
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def test_a_thousand_alert_payload_writes_a_bounded_number_of_log_lines(tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    hb = HealBot(tmp_path)
    cfg = hb.config({"FP-1.1": {"run": [str(hb.ok)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.3)
    with receiver(hb, cfg) as r:
        capfd.readouterr()
        alerts = [alert("FP-1.1", fingerprint=f"{i:016x}", starts_at=f"2026-11-25T10:{i % 60:02d}:00Z")
                  for i in range(1000)]
        resp = r.post(payload(*alerts))  # one answer for the thousand, before any of them is decided
        assert resp.status_code == 200 and resp.json() == {"delivery": resp.json()["delivery"], "alerts": 1000,
                                                           "state": "queued"}
        decisions = delivered(r.url, resp.json()["delivery"])
        assert decisions[0] == "accepted" and set(decisions[1:]) <= {"busy", "cooldown"}
        wait_idle(r)
        lines = capfd.readouterr().err.splitlines()
        assert 1 <= len(lines) <= 5, lines  # the action's start and outcome, not a line per alert
        r.healer.summarise()
        [summary] = capfd.readouterr().err.splitlines()
        assert "heal: skipped since the last summary: FP-1.1 " in summary
        for reason in ("busy", "cooldown"):
            n = decisions.count(reason)
            assert (f"FP-1.1 {reason} {n}" in summary) == (n > 0)
            assert r.metric("trading_healer_skipped_total", fp="FP-1.1", reason=reason) == n
    assert hb.run_count() == 1


def test_identical_lines_are_written_once_then_counted(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    hb = HealBot(tmp_path)
    with receiver(hb, hb.config({})) as r:
        capfd.readouterr()
        for _ in range(100):
            r.healer.log("internal error handling a delivery: OSError: [Errno 28] No space left on device")
        r.healer.log("something else")
        assert len(capfd.readouterr().err.splitlines()) == 2
        r.healer.summarise()
        [summary] = capfd.readouterr().err.splitlines()
        assert "repeated lines not written again: 99x internal error handling a delivery" in summary


def test_keep_alive_and_refusals_before_the_body(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    with receiver(hb, hb.config({})) as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.server.server_address[1], timeout=10)
        try:
            body = json.dumps(payload(alert("FP-9.9"))).encode()
            for _ in range(3):  # one connection, three deliveries
                conn.request("POST", "/alertmanager", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                assert resp.status == 200
                assert delivered(r.url, json.loads(resp.read())["delivery"]) == ["unknown_fp"]
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200 and b"trading_healer_stuck" in resp.read()
            # a wrong token is refused from the head: the body is never read and the connection ends
            conn.request("POST", "/alertmanager", body=body, headers={"Authorization": "Bearer nope"})
            resp = conn.getresponse()
            assert resp.status == 401 and resp.getheader("Connection") == "close"
            resp.read()
        finally:
            conn.close()
