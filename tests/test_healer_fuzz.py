"""Hostile and malformed deliveries: over 10,000 generated payloads through the receiver's request
handling in-process, and a smaller set over real HTTP. Every answer is a 4xx or a deliberate skip
(never a 5xx or an exception), no label value is ever executed, and only an exact configured fp
runs the configured argv."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_healer_helpers import TOKEN, HealBot, alert, payload, receiver, script, wait_idle

N_INPROCESS = 10_000
N_HTTP = 300
BATCH = 25
BASE = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


def hostile(marker: Path) -> list[str]:
    """Label values that would do damage if they ever reached a shell, an argv or a path."""
    m = str(marker)
    return [f"FP-1.1; touch {m}", f"FP-1.1 && touch {m}", f"$(touch {m})", f"`touch {m}`", f"FP-1.1|touch {m}",
            "../../etc/passwd", "../../../../bin/sh", "/bin/sh", "FP-1.1\n", " FP-1.1", "fp-1.1", "FP-1.1\x00",
            "FP-1.1/../FP-2.1", "FP-1.1\u200b", "%2e%2e/etc/passwd", "FP-*", "FP-1.?", "-rf", "--config=/etc/shadow",
            f"FP-1.1\ntouch {m}", "${IFS}touch${IFS}" + m]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def payloads(marker: Path) -> st.SearchStrategy[bytes]:
    evil = st.sampled_from(hostile(marker))
    fps = st.one_of(evil, st.sampled_from(["FP-1.1", "FP-1.3", "FP-2.1", "FP-3.1", "FP-9.9"]), st.text(max_size=30))
    strs = st.one_of(evil, st.text(max_size=40))
    labels = st.dictionaries(st.one_of(st.sampled_from(["fp", "alertname", "healer", "job"]), st.text(max_size=8)),
                             strs, max_size=4)
    one_alert = st.fixed_dictionaries(
        {"status": st.sampled_from(["firing", "firing", "resolved"]),
         "labels": st.builds(lambda fp, extra: {**extra, "fp": fp}, fps, labels),
         "annotations": st.dictionaries(st.text(max_size=8), strs, max_size=3),
         "startsAt": st.one_of(st.sampled_from(["2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123456789+01:00"]),
                               strs),
         "fingerprint": st.one_of(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), strs)})
    good = st.builds(lambda alerts, status: payload(*alerts, status=status),
                     st.lists(one_alert, max_size=4), st.sampled_from(["firing", "resolved"]))

    def corrupt(p: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
        out = dict(p)
        if key.startswith("alerts.") and out["alerts"]:
            out["alerts"] = [{**out["alerts"][0], key[7:]: value}, *out["alerts"][1:]]
        else:
            out[key] = value
        return out

    keys = st.sampled_from(["version", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations",
                            "alerts.status", "alerts.labels", "alerts.annotations", "alerts.startsAt",
                            "alerts.fingerprint", "alerts.generatorURL"])
    wrong_types = st.builds(corrupt, good, keys, JSON)
    as_bytes = st.one_of(good, wrong_types, JSON).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_bytes, as_bytes, st.binary(max_size=200),
                     st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))


def recording_action(hb: HealBot) -> Path:
    """An action that writes down its argv and environment, so a leaked label value would show."""
    return script(hb.tmp / "record.sh", f"""
        echo "run $$" >> {hb.runs}
        {{ echo "argc $#"; env; }} > {hb.tmp}/action_env.$$
    """)


def assert_nothing_leaked(hb: HealBot, marker: Path) -> None:
    assert not marker.exists()
    for f in hb.tmp.glob("action_env.*"):
        text = f.read_text()
        assert "touch" not in text and "passwd" not in text and str(marker) not in text
        assert text.startswith("argc 0\n")  # the configured argv has no arguments; nothing was appended
        assert TOKEN not in text  # the webhook token is the receiver's, never the action's


def test_ten_thousand_generated_payloads_in_process(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    marker = tmp_path / "pwned"
    action = recording_action(hb)
    cfg = hb.config({"FP-1.1": {"run": [str(action)], "cooldown_seconds": 300},
                     "FP-1.3": {"run": [str(action)], "cooldown_seconds": 300, "enabled": False}},
                    verify_timeout_seconds=0.2)
    seen = {"n": 0, "accepted": 0}
    statuses: set[int] = set()
    lock = threading.Lock()
    with receiver(hb, cfg) as r:
        healer = r.healer

        def check(body: bytes) -> None:
            status, obj = healer.handle_post(f"Bearer {TOKEN}", body)  # raises nothing, or the test fails
            assert status in (200, 400), (status, obj, body[:300])
            with lock:
                seen["n"] += 1
                statuses.add(status)
            if status == 200:
                parsed = json.loads(body)
                for a, decision in zip(parsed["alerts"], obj["decisions"], strict=True):
                    fp = a["labels"].get("fp")
                    if decision == "accepted":
                        assert fp == "FP-1.1" and a["status"] == "firing"
                        seen["accepted"] += 1
                    elif fp not in healer.config.catalog.points:
                        assert decision in ("unknown_fp", "no_healer"), (fp, decision)
            else:
                assert isinstance(obj["error"], str) and "\n" not in obj["error"]

        # batches of BATCH per example: the same coverage at a fraction of the generation overhead
        @settings(BASE, max_examples=N_INPROCESS // BATCH)
        @given(st.lists(payloads(marker), min_size=BATCH, max_size=BATCH))
        def run(bodies: list[bytes]) -> None:
            for body in bodies:
                check(body)

        run()
        wait_idle(r)
        assert seen["n"] >= N_INPROCESS and statuses == {200, 400}
        assert seen["accepted"] >= 1  # the exact configured fp was exercised, not only rejects
        assert hb.run_count() == seen["accepted"]
        assert {h["argv"][0] for h in r.heals()} <= {str(action)} and all(len(h["argv"]) == 1 for h in r.heals())
        # the fp label of a refused alert is not even a metric label value: unknown ones collapse to "other"
        metrics = requests.get(r.url + "/metrics", timeout=5).text
        assert "touch" not in metrics and "passwd" not in metrics
    assert_nothing_leaked(hb, marker)


def test_generated_payloads_and_tokens_over_real_http(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    marker = tmp_path / "pwned"
    action = recording_action(hb)
    cfg = hb.config({"FP-1.1": {"run": [str(action)], "cooldown_seconds": 300}}, verify_timeout_seconds=0.2)
    with receiver(hb, cfg) as r, requests.Session() as s:
        url = r.url + "/alertmanager"

        @settings(BASE, max_examples=N_HTTP)
        @given(payloads(marker), st.one_of(st.just(TOKEN), st.just(TOKEN), st.none(),
                                             st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)))
        def run(body: bytes, token: str | None) -> None:
            headers = {} if token is None else {"Authorization": f"Bearer {token}".encode("utf-8", "surrogatepass")}
            resp = s.post(url, data=body, headers=headers, timeout=10)
            if token != TOKEN:
                assert resp.status_code == 401
            else:
                assert resp.status_code in (200, 400), resp.text
            assert resp.headers["Content-Type"] == "application/json"

        run()
        # huge, lying and missing lengths: refused before the body is read
        big = json.dumps(payload(alert("FP-1.1", summary="x" * (2 * 1024 * 1024)))).encode()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(url, data=big, headers=auth, timeout=10).status_code == 413
        assert requests.post(url, data=big, timeout=10).status_code == 401
        assert requests.post(url, data=iter([b"{}"]), headers=auth, timeout=10).status_code == 400  # chunked
        for length in ("-5", "abc", str(10**12)):
            conn = http.client.HTTPConnection("127.0.0.1", r.server.server_address[1], timeout=10)
            try:
                conn.putrequest("POST", "/alertmanager")
                conn.putheader("Authorization", f"Bearer {TOKEN}")
                conn.putheader("Content-Length", length)
                conn.endheaders(b"{}")
                assert conn.getresponse().status in (400, 413), length
            finally:
                conn.close()
        evil = payload(*(alert(fp) for fp in hostile(marker)))
        resp = requests.post(url, json=evil, headers=auth, timeout=10)
        assert resp.status_code == 200 and set(resp.json()["decisions"]) == {"unknown_fp"}
        assert requests.get(r.url + "/-/healthy", timeout=5).status_code == 200
        wait_idle(r)
    assert_nothing_leaked(hb, marker)
