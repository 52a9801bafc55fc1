"""Hostile and malformed deliveries, generated two ways: hypothesis strategies (a failure prints
its generating call) and a seeded fuzzer that mutates real payloads in bulk. Together well over
10,000 cases through the receiver's request handling in-process, thousands of them over real
HTTP: large bodies just under, at and over the 1 MiB limit, JSON nested deeper than the parser
allows, labels with shell metacharacters and path traversal, invalid UTF-8 and other encodings.
Every answer is a 4xx or a 200 with one decision per alert (never a 5xx or an exception), the
receiver keeps serving, no label value is ever executed or reaches the action's argv, and only
an exact configured fp runs the configured argv."""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exporter.core.config import Config
from healers import inbox
from healers.alerts import MAX_ALERTS, MAX_BODY_BYTES
from healers.receiver import Healer

from .conftest import wait_for
from .test_healer_helpers import TOKEN, HealBot, alert, decisions, payload, receiver, script, wait_idle

N_HYPOTHESIS = 500  # in-process, hypothesis (the seeded fuzzer's N_FUZZ cases go the same way)
N_FUZZ = 10_000  # in-process, the seeded fuzzer (every kind below)
N_HTTP_FUZZ = 3_000  # the seeded fuzzer over real HTTP
N_HTTP = 300  # hypothesis over real HTTP, with right, wrong and missing tokens
N_DECODE = 500  # hypothesis bodies through both decoders (plus N_DECODE_FUZZ of the seeded fuzzer's)
N_DECODE_FUZZ = 5_000
BATCH = 25
SENDERS = 4  # in-process deliveries at once
# no shrink phase: shrinking megabyte and deeply nested bodies takes minutes; a failure already
# names its body (the first 300 bytes) and hypothesis prints the generating call
BASE = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.reuse, Phase.generate])
FPS = ["FP-1.1", "FP-1.3", "FP-2.1", "FP-3.1", "FP-9.9"]
STARTS = ["2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123456789+01:00", "0001-01-01T00:00:00Z"]


def hostile(marker: Path) -> list[str]:
    """Label values that would do damage if they ever reached a shell, an argv or a path."""
    m = str(marker)
    return [f"FP-1.1; touch {m}", f"FP-1.1 && touch {m}", f"$(touch {m})", f"`touch {m}`", f"FP-1.1|touch {m}",
            "../../etc/passwd", "../../../../bin/sh", "/bin/sh", "FP-1.1\n", " FP-1.1", "fp-1.1", "FP-1.1\x00",
            "FP-1.1/../FP-2.1", "FP-1.1\u200b", "%2e%2e/etc/passwd", "FP-*", "FP-1.?", "-rf", "--config=/etc/shadow",
            f"FP-1.1\ntouch {m}", "${IFS}touch${IFS}" + m, f"FP-1.1' ; touch {m} ; '", f'"; touch {m}; "',
            f"FP-1.1 > {m}", f"FP-1.1&touch {m}", f"<(touch {m})", f"FP-1.1\ttouch {m}", "../" * 12 + "etc/passwd",
            "..\\..\\..\\windows\\system32", "/proc/self/environ", "file:///etc/passwd", "FP-1.1\r\nX-Evil: 1",
            "FP-1.1%00", "~root/.ssh/id_rsa", "*", m, f"{m}/../../etc/passwd", "\u202eFP-1.1", "FP\u20131.1"]


# -- hypothesis ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"a":' * (depth // 2) + b"0" + b"}]" * (depth // 2)


def splice(p: dict[str, Any], where: str, raw: bytes) -> bytes:
    """``p`` as JSON with ``raw`` (bytes that need not be JSON, or UTF-8) at ``where``."""
    slot = "@@SLOT@@"
    out: dict[str, Any] = json.loads(json.dumps(p))
    if where.startswith("alert.") and out["alerts"]:
        a = out["alerts"][0]
        key = where[6:]
        if key.startswith("label."):
            a.setdefault("labels", {})[key[6:]] = slot
        else:
            a[key] = slot
    else:
        out[where.split(".")[-1]] = slot
    return json.dumps(out).encode().replace(f'"{slot}"'.encode(), raw, 1)


SLOTS = ["alerts", "version", "groupLabels", "x-extra", "alert.labels", "alert.annotations", "alert.label.fp",
         "alert.label.job", "alert.fingerprint", "alert.startsAt", "alert.extra"]
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xe9", b"FP-1.1\xff",
            b"..\xc0\xaf..\xc0\xafetc\xc0\xafpasswd", b"\xf8\x88\x80\x80\x80", b"FP-1.1\xed\xbf\xbf"]


def payloads(marker: Path) -> st.SearchStrategy[bytes]:
    evil = st.sampled_from(hostile(marker))
    fps = st.one_of(evil, st.sampled_from(FPS), st.text(max_size=30))
    strs = st.one_of(evil, st.text(max_size=40))
    labels = st.dictionaries(st.one_of(st.sampled_from(["fp", "alertname", "healer", "job"]), st.text(max_size=8)),
                             strs, max_size=4)
    one_alert = st.fixed_dictionaries(
        {"status": st.sampled_from(["firing", "firing", "resolved"]),
         "labels": st.builds(lambda fp, extra: {**extra, "fp": fp}, fps, labels),
         "annotations": st.dictionaries(st.text(max_size=8), strs, max_size=3),
         "startsAt": st.one_of(st.sampled_from(STARTS), strs),
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
    deep = st.builds(lambda p, where, depth, kind: splice(p, where, nested(depth, kind)), good, st.sampled_from(SLOTS),
                     st.sampled_from([50, 998, 999, 1000, 1001, 5000, 150_000]), st.sampled_from(["list", "dict", "mix"]))
    bad_utf8 = st.builds(splice, good, st.sampled_from(SLOTS),
                         st.sampled_from(BAD_UTF8).map(lambda b: b'"' + b + b'"'))

    def padded(p: dict[str, Any], delta: int) -> bytes:  # a body of exactly MAX_BODY_BYTES + delta bytes
        base = json.dumps({**p, "commonAnnotations": {"description": ""}}).encode()
        return base.replace(b'"description": ""', b'"description": "' + b"x" * (MAX_BODY_BYTES + delta - len(base)) + b'"')

    large = st.builds(padded, good, st.sampled_from([-4096, -2, -1, 0, 1, 2, 4096]))
    return st.one_of(as_bytes, as_bytes, as_bytes, deep, bad_utf8, large, st.binary(max_size=200),
                     st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))


# -- the seeded fuzzer ---------------------------------------------------------------------------

PIECES = ["\x00", "\ud800", "\udfff", "\u202e", "\u200b", "\ufeff", "\n", "\r\n", "\t", "\\", '"', "'", "`", "$(",
          ";", "|", "&", ">", "<", "*", "?", "~", "/", "../", "%2e", "\x1b[31m", "é", "中", "\U0001f600", "\U0010ffff"]
KINDS = {"payload": 24, "wrong_type": 12, "mutated": 18, "deep": 9, "bad_utf8": 10, "encoding": 5, "large": 4,
         "huge": 1, "random": 5, "json": 6, "many_alerts": 0.4, "empty": 0.6}


class Fuzzer:
    """Deterministic (seeded) generator of delivery bodies; ``max_over`` bounds how far over the
    body limit a large body may go (over HTTP the receiver closes such a connection unread)."""

    def __init__(self, seed: int, marker: Path, max_over: int) -> None:
        self.rng = random.Random(seed)
        self.evil = hostile(marker)
        self.max_over = max_over
        self.kinds = list(KINDS)
        self.weights = list(KINDS.values())

    def text(self, n: int = 12) -> str:
        r = self.rng
        k = r.random()
        if k < 0.3:
            return r.choice(self.evil)
        if k < 0.4:
            return r.choice(FPS)
        # one draw a character: below 0.25 one of PIECES, else a code point in [32, 0x2FFF], both uniform
        draws = [r.random() for _ in range(r.randint(0, n))]
        return "".join(PIECES[int(x * 4 * len(PIECES))] if x < 0.25 else chr(32 + int((x - 0.25) * 4 / 3 * (0x2FFF - 31)))
                       for x in draws)

    def fp(self) -> str:
        r = self.rng.random()
        return "FP-1.1" if r < 0.15 else self.rng.choice(FPS) if r < 0.4 else self.text(20)

    def key(self) -> str:
        return self.rng.choice(["alertname", "healer", "job", "instance", "severity", self.text(6)])

    def alert(self) -> dict[str, Any]:
        r = self.rng
        labels = {self.key(): self.text() for _ in range(r.randint(0, 4))}
        if r.random() < 0.9:
            labels["fp"] = self.fp()
        a: dict[str, Any] = {
            "status": r.choice(["firing", "firing", "resolved"]), "labels": labels,
            "annotations": {self.key(): self.text(40) for _ in range(r.randint(0, 3))},
            "startsAt": r.choice([*STARTS, self.text()]), "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": r.choice(["http://127.0.0.1:9090/graph", self.text()]),
            "fingerprint": r.choice([f"{r.getrandbits(64):016x}", self.text()])}
        for k in r.sample(list(a), r.choice([0, 0, 0, 0, 1])):
            del a[k]  # a missing key: only labels and status are required
        return a

    def payload(self) -> dict[str, Any]:
        r = self.rng
        return payload(*(self.alert() for _ in range(r.randint(0, 4))), status=r.choice(["firing", "resolved"]))

    def json_value(self, depth: int = 0) -> Any:
        r = self.rng
        k = r.randrange(8 if depth < 3 else 5)
        if k == 5:
            return [self.json_value(depth + 1) for _ in range(r.randint(0, 3))]
        if k == 6:
            return {self.text(6): self.json_value(depth + 1) for _ in range(r.randint(0, 3))}
        if k == 7:
            return {"fp": self.fp()}
        return [None, True, r.randint(-2**70, 2**70), r.random() * 1e300, self.text()][k]

    def dumps(self, value: Any) -> bytes:
        # both spellings of non-ASCII: \\u escapes, and raw UTF-8 (lone surrogates as their bytes)
        return json.dumps(value, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def case(self) -> tuple[str, bytes]:
        r = self.rng
        kind = r.choices(self.kinds, self.weights)[0]
        if kind == "payload":
            return kind, self.dumps(self.payload())
        if kind == "wrong_type":
            p = self.payload()
            path = r.choice(["version", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations",
                             "externalURL", "alerts.status", "alerts.labels", "alerts.annotations", "alerts.startsAt",
                             "alerts.fingerprint", "alerts.generatorURL", "alerts.labels.fp", "alerts"])
            value = self.json_value()
            if path.startswith("alerts.") and p["alerts"]:
                a = p["alerts"][0]
                if path == "alerts.labels.fp" and isinstance(a.get("labels"), dict):
                    a["labels"]["fp"] = value
                else:
                    a[path[7:]] = value
            else:
                p[path] = value
            return kind, self.dumps(p)
        if kind == "mutated":
            return kind, self.mutate(self.dumps(self.payload()))
        if kind == "deep":
            depth = r.choice([2, 64, 500, 990, 999, 1000, 1001, 1500, 5000, 50_000, 150_000])
            raw = nested(depth, r.choice(["list", "dict", "mix"]))
            return kind, raw if r.random() < 0.2 else splice(self.payload(), r.choice(SLOTS), raw)
        if kind == "bad_utf8":
            return kind, splice(self.payload(), r.choice(SLOTS), b'"' + r.choice(BAD_UTF8) + b'"')
        if kind == "encoding":
            text = json.dumps(self.payload())  # ASCII: every codec below can carry it
            return kind, text.encode(r.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "utf-8-sig"]))
        if kind in ("large", "huge"):
            delta = (r.choice([-1, 0, 1, 2, r.randint(-4096, 4096), r.randint(-200_000, -4096)]) if kind == "large"
                     else r.randint(1, 3 * MAX_BODY_BYTES))
            return kind, self.large(min(delta, self.max_over))
        if kind == "random":
            return kind, r.randbytes(r.randint(0, 3000))
        if kind == "json":
            return kind, self.dumps(self.json_value())
        if kind == "many_alerts":
            n = r.choice([MAX_ALERTS - 1, MAX_ALERTS, MAX_ALERTS + 1, 3 * MAX_ALERTS])
            alerts = [{"status": "firing", "labels": {"fp": self.fp()}} for _ in range(n)]
            return kind, json.dumps(payload(*alerts)).encode()
        return kind, r.choice([b"", b" ", b"\n" * 10, b"null", b"{}", b"[]", b'""', b"\xef\xbb\xbf"])

    def large(self, delta: int) -> bytes:
        """A payload of exactly MAX_BODY_BYTES + delta bytes, the bulk in a label, an annotation,
        the fingerprint, startsAt, an unknown key or whitespace."""
        r = self.rng
        p = self.payload()
        if not p["alerts"]:
            p["alerts"] = [alert(self.fp())]
        where = r.choice(["alert.label.fp", "alert.label.job", "alert.annotations", "alert.fingerprint",
                          "alert.startsAt", "x-extra", "groupKey", "whitespace"])
        base = json.dumps(p).encode() if where == "whitespace" else splice(p, where, b'"@@FILL@@"')
        n = MAX_BODY_BYTES + delta - len(base) + (0 if where == "whitespace" else len(b"@@FILL@@"))
        if where == "whitespace":
            return b" " * n + base if r.random() < 0.5 else base + b"\n" * n
        unit = r.choice([b"x", b"FP-1.1;touch ", b"../", b"2026-11-25T10:00:00Z"])
        return base.replace(b"@@FILL@@", (unit * (n // len(unit) + 1))[:n], 1)

    def mutate(self, body: bytes) -> bytes:
        r = self.rng
        b = bytearray(body)
        for _ in range(r.randint(1, 4)):
            i = r.randrange(len(b) + 1)
            op = r.randrange(6)
            if op == 0 and b:
                b[i % len(b)] ^= 1 << r.randrange(8)
            elif op == 1:
                b[i:i] = r.randbytes(r.randint(1, 8))
            elif op == 2:
                del b[i:i + r.randint(1, 16)]
            elif op == 3:
                b[i:i] = b[i:i + r.randint(1, 64)]
            elif op == 4:
                del b[i:]
            else:
                b[i:i] = r.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\\u", b"\\ud800"])
        return bytes(b)


@pytest.fixture(autouse=True)
def decide_without_waiting_for_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests send one delivery and wait for its decisions, thousands of times: the receiver's
    wait for a pause in arrivals (which lets a burst's answers go first) would be most of their
    run time; it only orders answers before decisions under load (bench/bench_healer.py measures it)."""
    monkeypatch.setattr(inbox, "QUIET_SECONDS", 0.0)


# -- checks --------------------------------------------------------------------------------------

def check_answer(config: Config, body: bytes, status: int, obj: Any,
                 decided: Callable[[int], list[str]]) -> list[str]:
    """The one rule for every generated body, in-process or over HTTP; ``decided(seq)`` waits for
    the receiver's decisions on an acknowledged delivery. Returns them ([] when not acknowledged)."""
    if len(body) > MAX_BODY_BYTES:
        assert status == 413, (status, obj, len(body))
    else:
        assert status in (200, 400), (status, obj, body[:300])
    assert isinstance(obj, dict)
    if status != 200:
        assert isinstance(obj["error"], str) and "\n" not in obj["error"]
        return []
    parsed = json.loads(body)
    assert len(parsed["alerts"]) <= MAX_ALERTS
    assert obj["alerts"] == len(parsed["alerts"]) and obj["state"] == "queued"
    got = decided(obj["delivery"])
    for a, decision in zip(parsed["alerts"], got, strict=True):
        fp = a["labels"].get("fp")
        if decision == "accepted":
            assert fp == "FP-1.1" and a["status"] == "firing", (fp, a["status"])
        elif fp not in config.catalog.points:
            assert decision in ("unknown_fp", "no_healer"), (fp, decision)
    return got


def in_process(healer: Healer) -> Callable[[int], list[str]]:
    """Delivery ``seq``'s decisions, read from the receiver once its dispatcher has made them."""
    def decided(seq: int) -> list[str]:
        def done() -> tuple[list[str]] | None:
            [view] = healer.delivery_views(seq)
            return (view["decisions"],) if view["state"] == "decided" else None
        return wait_for(done, timeout=15, what=f"delivery {seq} decided", every=0.001)[0]  # type: ignore[no-any-return]
    return decided


def over_http(session: requests.Session, url: str) -> Callable[[int], list[str]]:
    """Delivery ``seq``'s decisions from ``/api/heals?delivery=seq``, asked on ``session``'s connection."""
    def decided(seq: int) -> list[str]:
        def done() -> tuple[list[str]] | None:
            view = session.get(f"{url}/api/heals", params={"delivery": seq}, timeout=5).json()
            return (view["decisions"],) if view["state"] == "decided" else None
        return wait_for(done, timeout=15, what=f"delivery {seq} decided", every=0.005)[0]  # type: ignore[no-any-return]
    return decided


def recording_action(hb: HealBot) -> Path:
    """An action that writes down its argv and environment, so a leaked label value would show."""
    return script(hb.tmp / "record.sh", f"""
        echo "run $$" >> {hb.runs}
        {{ echo "argc $#"; env; }} > {hb.tmp}/action_env.$$
    """)


def assert_nothing_leaked(hb: HealBot, marker: Path, action: Path) -> None:
    assert not marker.exists()
    for f in hb.tmp.glob("action_env.*"):
        text = f.read_text()
        assert "touch" not in text and "passwd" not in text and str(marker) not in text
        assert text.startswith("argc 0\n")  # the configured argv has no arguments; nothing was appended
        assert TOKEN not in text  # the webhook token is the receiver's, never the action's
    # a traversal value created nothing next to the audit or the bot root either
    assert {p.name for p in hb.tmp.iterdir()} <= {"bot", "runs.log", "trading-readiness.yaml", "weights.good.json",
                                                  *(p.name for p in hb.tmp.glob("*.sh")), action.name,
                                                  *(p.name for p in hb.tmp.glob("action_env.*"))}


def assert_still_serving(r: Any, action: Path) -> None:
    assert requests.get(r.url + "/-/healthy", timeout=5).status_code == 200
    assert {h["argv"][0] for h in r.heals()} <= {str(action)} and all(len(h["argv"]) == 1 for h in r.heals())
    # the fp label of a refused alert is not even a metric label value: unknown ones collapse to "other"
    metrics = requests.get(r.url + "/metrics", timeout=5).text
    assert "touch" not in metrics and "passwd" not in metrics


def fuzz_config(hb: HealBot, action: Path) -> Path:
    return hb.config({"FP-1.1": {"run": [str(action)], "cooldown_seconds": 300},
                      "FP-1.3": {"run": [str(action)], "cooldown_seconds": 300, "enabled": False}},
                     verify_timeout_seconds=0.2)


def test_generated_payloads_in_process(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    hb = HealBot(tmp_path)
    marker = tmp_path / "pwned"
    action = recording_action(hb)
    seen: Counter[str] = Counter()  # cases by kind
    statuses: Counter[int] = Counter()
    accepted = near_limit = 0
    lock = threading.Lock()
    with receiver(hb, fuzz_config(hb, action)) as r:
        healer = r.healer

        def check(body: bytes, kind: str) -> None:
            nonlocal accepted, near_limit
            answered: Future[tuple[int, dict[str, Any]]] = Future()
            answer = healer.handle_post(f"Bearer {TOKEN}", body,  # raises nothing, or the test fails
                                        lambda status, obj: answered.set_result((status, obj)))
            status, obj = answer if answer is not None else answered.result(timeout=10)
            got = check_answer(healer.config, body, status, obj, in_process(healer))
            with lock:
                seen[kind] += 1
                statuses[status] += 1
                accepted += got.count("accepted")
                near_limit += MAX_BODY_BYTES - 4096 <= len(body) <= MAX_BODY_BYTES + 4096

        # batches of BATCH per example: the same coverage at a fraction of the generation overhead;
        # a batch's deliveries arrive SENDERS at a time, as from several connections
        @settings(BASE, max_examples=N_HYPOTHESIS // BATCH)
        @given(st.lists(payloads(marker), min_size=BATCH, max_size=BATCH))
        def run(bodies: list[bytes]) -> None:
            list(senders.map(check, bodies, ["hypothesis"] * len(bodies)))

        with ThreadPoolExecutor(SENDERS) as senders:
            run()
            fuzz = Fuzzer(7, marker, max_over=3 * MAX_BODY_BYTES)
            for _ in range(N_FUZZ // BATCH):  # generated in order (seeded), sent BATCH at a time
                kinds, bodies = zip(*(fuzz.case() for _ in range(BATCH)), strict=True)
                list(senders.map(check, bodies, kinds))
        wait_idle(r)
        assert seen["hypothesis"] >= N_HYPOTHESIS and sum(seen.values()) >= N_HYPOTHESIS + N_FUZZ
        assert set(statuses) == {200, 400, 413}
        # every kind was exercised, and the big ones on both sides of the limit
        assert all(seen[k] >= 10 for k in KINDS if k != "many_alerts") and seen["many_alerts"] >= 5
        assert near_limit >= 200 and statuses[413] >= 100
        assert accepted >= 1  # the exact configured fp was exercised, not only rejects
        assert hb.run_count() == accepted
        assert_still_serving(r, action)
    assert "internal error" not in capfd.readouterr().err
    assert_nothing_leaked(hb, marker, action)


def test_generated_payloads_and_tokens_over_real_http(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    hb = HealBot(tmp_path)
    marker = tmp_path / "pwned"
    action = recording_action(hb)
    statuses: Counter[int] = Counter()
    with receiver(hb, fuzz_config(hb, action)) as r, requests.Session() as s:
        s.trust_env = False  # loopback: no proxy settings to look up in the environment on each request
        url = r.url + "/alertmanager"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        @settings(BASE, max_examples=N_HTTP)
        @given(payloads(marker), st.one_of(st.just(TOKEN), st.just(TOKEN), st.none(),
                                             st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)))
        def run(body: bytes, token: str | None) -> None:
            headers = {} if token is None else {"Authorization": f"Bearer {token}".encode("utf-8", "surrogatepass")}
            resp = s.post(url, data=body, headers=headers, timeout=10)
            if token != TOKEN:
                assert resp.status_code == 401
            else:
                check_answer(r.healer.config, body, resp.status_code, resp.json(), over_http(s, r.url))
            assert resp.headers["Content-Type"] == "application/json"

        run()
        # the fuzzer's bodies over the wire, up to 4 KiB past the limit (larger ones are below)
        fuzz = Fuzzer(11, marker, max_over=4096)
        for _ in range(N_HTTP_FUZZ):
            kind, body = fuzz.case()
            resp = s.post(url, data=body, headers=auth, timeout=10)
            assert resp.headers["Content-Type"] == "application/json"
            check_answer(r.healer.config, body, resp.status_code, resp.json(), over_http(s, r.url))
            statuses[resp.status_code] += 1
        assert set(statuses) == {200, 400, 413} and statuses[413] >= 10
        # huge, lying and missing lengths: refused before the body is read
        big = json.dumps(payload(alert("FP-1.1", summary="x" * (2 * 1024 * 1024)))).encode()
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
        assert resp.status_code == 200 and set(decisions(r.url, resp.json()["delivery"])) == {"unknown_fp"}
        wait_idle(r)
        assert_still_serving(r, action)
    assert "internal error" not in capfd.readouterr().err
    assert_nothing_leaked(hb, marker, action)


def _fast(body: bytes) -> tuple[Any, ...] | None:
    """The alerts of ``body`` as the one-pass decoder reads them, or None where it refuses."""
    from healers.alerts import check_payload, payload_alerts

    data = check_payload(body)
    return None if data is None else payload_alerts(data)


def decoders_agree(body: bytes) -> bool:
    """Whatever the one-pass decoder accepts, the field-by-field check accepts with the same alerts.
    Returns whether the fast pass accepted ``body``."""
    from healers.alerts import BadRequest, _parse_checked

    fast = _fast(body)
    try:
        checked: tuple[Any, ...] | None = _parse_checked(body)
    except BadRequest:
        checked = None
    if fast is not None:
        assert fast == checked, body[:300]
    return fast is not None


@settings(BASE, max_examples=N_DECODE)
@given(body=st.one_of(payloads(Path("/nonexistent/marker")),
                      st.builds(lambda alerts: json.dumps(payload(*alerts)).encode(),
                                st.lists(st.builds(alert, st.sampled_from(FPS), st.sampled_from(["firing", "resolved"]),
                                                   st.text(max_size=20), st.sampled_from(STARTS)), max_size=5))))
def test_the_fast_decoder_agrees_with_the_field_by_field_check(body: bytes) -> None:
    """A delivery is decoded in one typed pass when it looks like Alertmanager's; whatever that
    pass accepts, the field-by-field check accepts with the same alerts, and whatever it rejects
    goes to that check (which names the problem)."""
    decoders_agree(body)


def test_the_fast_decoder_agrees_with_the_field_by_field_check_on_the_seeded_fuzzer() -> None:
    """The same agreement on the seeded fuzzer's bodies (every kind, up to 3 MiB over the limit),
    hundreds of them taken by the fast pass."""
    fuzz = Fuzzer(13, Path("/nonexistent/marker"), max_over=3 * MAX_BODY_BYTES)
    fast = sum(decoders_agree(fuzz.case()[1]) for _ in range(N_DECODE_FUZZ))
    assert fast >= N_DECODE_FUZZ // 20


def test_a_real_alertmanager_payload_takes_the_fast_path() -> None:
    from healers.alerts import _parse_checked

    body = json.dumps(payload(alert("FP-1.1"), alert("FP-2.1"))).encode()
    assert _fast(body) is not None and _fast(body) == _parse_checked(body)


def test_the_one_pass_check_refuses_what_its_types_refuse_and_the_field_check_names_it() -> None:
    """The one-pass check's requirements (version "4", a firing or resolved status on the payload
    and on every alert, a list of at most MAX_ALERTS alerts) are in its types: a body that misses
    one is left to the field-by-field check, which refuses it with the reason; one just within the
    limit is taken by both, with the same alerts."""
    from healers.alerts import BadRequest, check_payload, parse_payload

    good = payload(alert("FP-1.1"))
    assert check_payload(json.dumps(good).encode()) is not None
    bad = {"version 3": ({**good, "version": "3"}, "version"),
           "no version": ({k: v for k, v in good.items() if k != "version"}, "version"),
           "payload status": ({**good, "status": "pending"}, "status"),
           "alert status": ({**good, "alerts": [{**good["alerts"][0], "status": "active"}]}, "status"),
           "alerts null": ({**good, "alerts": None}, "alerts"),
           "too many": ({**good, "alerts": good["alerts"] * (MAX_ALERTS + 1)}, f"more than {MAX_ALERTS} alerts")}
    for name, (body, reason) in bad.items():
        raw = json.dumps(body).encode()
        assert check_payload(raw) is None, name
        with pytest.raises(BadRequest, match=reason):
            parse_payload(raw)
    full = json.dumps({**good, "alerts": good["alerts"] * MAX_ALERTS}).encode()
    assert decoders_agree(full)
    assert len(parse_payload(full)[0]) == MAX_ALERTS
