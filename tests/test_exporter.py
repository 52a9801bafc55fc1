"""`trading-readiness serve` as a real subprocess on loopback against a sandbox bot root.

Everything is real: the exporter process, files in a temporary bot root, the loopback Alpaca
and UW servers, promtool, openssl. Nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import generate, readme
from exporter.core.catalog import load as load_catalog
from exporter.core.config import load as load_config
from exporter.core.model import Outcome, Status
from exporter.serve import affinity
from exporter.serve.metrics import CORE, MAX_LABEL_VALUE_CHARS, MAX_SERIES_PER_OBSERVATION
from exporter.serve.scheduler import Scheduler
from exporter.serve.server import hash_password, make_server, verify_password
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot

from .conftest import REPO, Procs, clean_env, run_cli, wait_for
from .prom import free_port, stop_process

SECRETS = ("PKTEST", "SECRETTEST", "uw-test-token")


class Exporter:
    """A `serve` subprocess; its stderr goes to a file the test can read."""

    def __init__(self, root: Path, log: Path, config: Path | None = None, scheme: str = "http",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.root, self.log = root, log
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.ssl_context = ssl_context
        argv = [sys.executable, "-m", "exporter", "--bot-root", str(root)]
        if config is not None:
            argv += ["--config", str(config)]
        argv += ["serve", "--listen", f"127.0.0.1:{self.port}"]
        self._err = open(log, "wb")  # noqa: SIM115 (lives as long as the process; closed in stop())
        self.proc = subprocess.Popen(argv, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=self._err,
                                     start_new_session=True)

    def get(self, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, str]:
        # self.url is always http(s)://127.0.0.1:<port>, built above
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as r:  # noqa: S310
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def up(self) -> bool:
        try:
            return self.get("/-/healthy", timeout=1)[0] == 200
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr()}") from None
            return False

    def ready(self) -> bool:
        try:
            return self.get("/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def api(self) -> dict[str, Any]:
        code, body = self.get("/api/failure_points")
        assert code == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def metrics(self) -> str:
        code, body = self.get("/metrics")
        assert code == 200, body
        return body

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._err.close()


def sample(metrics: str, metric: str, **labels: str) -> float | None:
    """The value of one series in an exposition, or None when absent."""
    for line in metrics.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def fast_config(root: Path, **exporter: Any) -> Path:
    """A config with a 1 s default interval so state changes show within a second or two."""
    lines = ["exporter:", "  default_interval_seconds: 1"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in exporter.items()]
    path = root / "trading-readiness.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def serve(bot: BotRoot, tmp_path: Path) -> Iterator[Exporter]:
    fast_config(bot.path)
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        wait_for(exp.up, timeout=30, what="exporter up")
        yield exp
    finally:
        exp.stop()


def test_every_point_is_exported_and_the_api_matches_the_contract(serve: Exporter, bot: BotRoot) -> None:
    wait_for(serve.ready, timeout=30, what="/-/ready")
    cfg = load_config(None, str(bot.path))
    enabled = cfg.enabled_ids()
    m = serve.metrics()
    for fp in enabled:
        point = cfg.catalog[fp]
        assert sample(m, "trading_failure_point_status", fp=fp, category=point.category) is not None, fp
        assert sample(m, "trading_failure_point_info", fp=fp, name=point.name) == 1, fp
        assert sample(m, "trading_failure_point_interval_seconds", fp=fp) is not None, fp
        assert sample(m, "trading_failure_point_last_check_timestamp_seconds", fp=fp) is not None, fp
        assert sample(m, "trading_exporter_check_errors_total", fp=fp) == 0, fp
    # the UW auth probe keeps its catalog interval; the rest follow the configured default
    assert sample(m, "trading_failure_point_interval_seconds", fp="FP-1.5") == 900
    assert sample(m, "trading_failure_point_interval_seconds", fp="FP-1.2") == 1
    # no daemon and no bot process run in this root: BLOCKED by exactly those two
    assert sample(m, "trading_readiness_status") == 2
    assert sample(m, "trading_failure_point_status", fp="FP-1.1") == Status.ERROR.value
    assert sample(m, "trading_exporter_ready") == 1
    assert sample(m, "trading_exporter_config_reload_success") == 1
    assert sample(m, "trading_exporter_build_info") == 1
    assert sample(m, "trading_readiness_max_warnings") == 2
    assert sample(m, "trading_uw_cache_symbols") == 12  # an observation gauge with its catalog help
    assert "# HELP trading_uw_cache_symbols Ticker keys in the UW cache" in m

    data = serve.api()
    assert data["readiness"] == "BLOCKED" and data["color"] == "red"
    assert set(data["failure_points"]) == set(enabled)
    assert "FP-1.1" in data["critical_fps"] and data["critical_count"] == len(data["critical_fps"])
    fp = data["failure_points"]["FP-1.1"]
    assert set(fp) >= {"id", "name", "category", "status", "last_check", "last_error", "self_healing_attempted",
                       "self_healing_success", "details"}
    assert fp["status"] == "ERROR" and fp["last_error"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["timestamp"])
    assert data["pending_fps"] == [] and data["ready"] is True

    code, page = serve.get("/")
    assert code == 200 and "<title>Trading readiness</title>" in page and "http" not in page.split("<script>")[1]
    assert serve.get("/-/healthy")[0] == 200
    assert serve.get("/nope")[0] == 404
    assert serve.get("/metrics", method="POST")[0] == 405

    # the readiness log has the first evaluation, in the contract format
    lines = (bot.path / "logs/failure_points.log").read_text().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \| BLOCKED \| Critical: \d+, Warnings: \d+ \| "
                        r"Critical FPs: FP-\d+\.\d+(, FP-\d+\.\d+)*", lines[0]), lines[0]

    # no secret of the bot's .env anywhere a person or Prometheus can see
    for text in (m, json.dumps(data), page, serve.stderr()):
        for secret in SECRETS:
            assert secret not in text


def test_promtool_accepts_the_exposition(serve: Exporter, tmp_path: Path) -> None:
    wait_for(serve.ready, timeout=30, what="/-/ready")
    r = subprocess.run(["promtool", "check", "metrics"], input=serve.metrics(), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_readiness_log_appends_one_line_per_change(bot: BotRoot, running: Procs, tmp_path: Path) -> None:
    fast_config(bot.path)
    log = bot.path / "logs/failure_points.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("2026-01-05T14:40:00Z | READY | Critical: 0, Warnings: 0 | Critical FPs: none\n")
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        wait_for(exp.ready, timeout=30, what="/-/ready")
        wait_for(lambda: len(log.read_text().splitlines()) == 2, what="first evaluation logged")
        first = exp.api()["readiness"]
        assert first != "BLOCKED", exp.api()["critical_fps"]
        bot.freeze()
        wait_for(lambda: exp.api()["readiness"] == "BLOCKED", timeout=20, what="freeze seen")
        wait_for(lambda: len(log.read_text().splitlines()) == 3, what="change logged")
        lines = log.read_text().splitlines()
        assert lines[0].startswith("2026-01-05T14:40:00Z")  # appended, never rewritten
        assert f"| {first} |" in lines[1]
        assert "| BLOCKED | Critical: 1," in lines[2] and lines[2].endswith("Critical FPs: FP-3.1")
        # two more evaluations of the freeze point with no change: no new line
        seen = exp.api()["failure_points"]["FP-3.1"]["last_check"]
        for _ in range(2):
            wait_for(lambda seen=seen: exp.api()["failure_points"]["FP-3.1"]["last_check"] > seen,
                     what="another evaluation of FP-3.1")
            seen = exp.api()["failure_points"]["FP-3.1"]["last_check"]
        assert exp.api()["readiness"] == "BLOCKED"
        assert len(log.read_text().splitlines()) == 3
    finally:
        exp.stop()


def test_a_hung_broker_never_slows_a_scrape(bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    cfg = fast_config(bot.path)
    cfg.write_text(cfg.read_text() + "alpaca: {timeout_seconds: 6, cache_seconds: 0.5}\n"
                   "checks: {FP-4.1: {timeout_seconds: 8}, FP-4.2: {timeout_seconds: 8}, "
                   "FP-4.3: {timeout_seconds: 8}, FP-3.2: {timeout_seconds: 8}}\n")
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        wait_for(exp.ready, timeout=30, what="/-/ready")
        alpaca.set_mode("hang")
        hung_since = time.monotonic()
        slowest = 0.0
        # scrape while the broker calls hang (6 s each) until the exporter reports the broker down
        while True:
            for path in ("/metrics", "/api/failure_points"):
                t0 = time.monotonic()
                code, body = exp.get(path, timeout=1.0)  # the deadline: a slower answer raises
                slowest = max(slowest, time.monotonic() - t0)
                assert code == 200
            if json.loads(exp.get("/api/failure_points", timeout=1.0)[1])["failure_points"]["FP-4.1"]["status"] \
                    == "ERROR":
                break
            assert time.monotonic() - hung_since < 40, "FP-4.1 never turned ERROR while the broker hangs"
            time.sleep(0.1)
        assert time.monotonic() - hung_since >= 5  # we really scraped through a hanging call
        data = exp.api()
        assert data["readiness"] == "BLOCKED" and "FP-4.1" in data["critical_fps"]
        assert sample(exp.metrics(), "trading_failure_point_status", fp="FP-4.1") == 2
    finally:
        alpaca.set_mode("ok")
        exp.stop()


def test_reload_keeps_the_running_config_when_the_new_one_is_bad(bot: BotRoot, tmp_path: Path) -> None:
    cfg = fast_config(bot.path)
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        wait_for(exp.ready, timeout=30, what="/-/ready")
        good = cfg.read_text()
        cfg.write_text(good + "readiness: {max_warnigns: 5}\n")
        code, body = exp.get("/-/reload", method="POST")
        assert code == 500 and "kept" in body
        m = exp.metrics()
        assert sample(m, "trading_exporter_config_reload_success") == 0
        assert sample(m, "trading_readiness_max_warnings") == 2
        assert "config reload failed, keeping the running config: unknown key 'readiness.max_warnigns'" in exp.stderr()
        assert exp.get("/-/healthy")[0] == 200

        cfg.write_text(good + "readiness: {max_warnings: 5}\n")
        os.kill(exp.proc.pid, signal.SIGHUP)
        wait_for(lambda: sample(exp.metrics(), "trading_exporter_config_reload_success") == 1, what="SIGHUP reload")
        assert sample(exp.metrics(), "trading_readiness_max_warnings") == 5
        assert "config reloaded" in exp.stderr()
    finally:
        exp.stop()


def test_an_edited_dotenv_is_judged_without_a_reload(bot: BotRoot, tmp_path: Path) -> None:
    """The bot reads .env when it starts: a key removed or a limit broken there must show at
    once, not after the exporter's next restart, and so must the fix."""
    fast_config(bot.path)
    exp = Exporter(bot.path, tmp_path / "serve.log")

    def status(fp: str) -> str | None:
        return json.loads(exp.get("/api/failure_points")[1])["failure_points"][fp]["status"]

    try:
        wait_for(exp.ready, timeout=30, what="/-/ready")
        assert status("FP-5.2") == "OK"
        bot.set_env(MAX_CONCURRENT_POSITIONS="sixteen")
        wait_for(lambda: status("FP-5.2") == "ERROR", timeout=20, what="FP-5.2 ERROR after editing .env")
        assert ".env changed: re-reading the bot's environment" in exp.stderr()
        assert "MAX_CONCURRENT_POSITIONS" in json.loads(exp.get("/api/failure_points")[1])[
            "failure_points"]["FP-5.2"]["last_error"]
        bot.set_env(MAX_CONCURRENT_POSITIONS="16")
        wait_for(lambda: status("FP-5.2") == "OK", timeout=20, what="FP-5.2 OK after fixing .env")
    finally:
        exp.stop()


def test_garbage_requests_never_crash_the_exporter(serve: Exporter) -> None:
    for junk in (b"\x16\x03\x01\x00garbage\r\n\r\n", b"GET\r\n\r\n", b"POST /-/reload HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                 b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b""):
        with socket.create_connection(("127.0.0.1", serve.port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                s.recv(4096)
    assert serve.get("/-/healthy")[0] == 200
    assert serve.proc.poll() is None


def test_tls_and_basic_auth(bot: BotRoot, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    fast_config(bot.path, tls_cert_file=str(cert), tls_key_file=str(key),
                basic_auth_users={"prometheus": hash_password("s3cret-pass")})
    tls = ssl.create_default_context(cafile=str(cert))
    exp = Exporter(bot.path, tmp_path / "serve.log", scheme="https", ssl_context=tls)
    try:
        def up() -> bool:
            try:
                return exp.get("/-/healthy", timeout=1)[0] in (200, 401)
            except OSError:
                assert exp.proc.poll() is None, exp.stderr()
                return False

        wait_for(up, timeout=30, what="https exporter up")
        assert exp.get("/metrics")[0] == 401
        bad = base64.b64encode(b"prometheus:wrong").decode()
        assert exp.get("/metrics", headers={"Authorization": f"Basic {bad}"})[0] == 401
        good = base64.b64encode(b"prometheus:s3cret-pass").decode()
        code, body = exp.get("/metrics", headers={"Authorization": f"Basic {good}"})
        assert code == 200 and "trading_failure_point_info" in body
        # a built exposition is answered on the event loop, but only after the credentials pass
        assert exp.get("/metrics")[0] == 401
        assert exp.get("/metrics", headers={"Authorization": f"Basic {bad}"})[0] == 401
        # plain HTTP is not answered on the TLS port: the handshake fails and the connection is
        # closed (RemoteDisconnected or a reset; both are OSError, as is URLError)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/-/healthy", timeout=2).read()
        # ...and the exporter keeps serving TLS clients afterwards
        assert exp.get("/-/healthy", headers={"Authorization": f"Basic {good}"})[0] == 200
        assert exp.proc.poll() is None
    finally:
        exp.stop()


def test_password_hashes() -> None:
    h = hash_password("pw", iterations=1000)
    assert h.startswith("pbkdf2_sha256$1000$") and verify_password("pw", h)
    assert not verify_password("pW", h)
    assert not verify_password("pw", "garbage") and not verify_password("pw", "bcrypt$1$zz$yy")
    r = subprocess.run([sys.executable, "-m", "exporter.serve.server", "hash-password"], input="pw\n", capture_output=True,
                       text=True, cwd=REPO, timeout=120)  # default iterations on a loaded 2-core machine
    assert r.returncode == 0 and verify_password("pw", r.stdout.strip())


def test_the_first_scrape_of_a_fresh_serve_has_every_series(bot: BotRoot, running: Procs, tmp_path: Path) -> None:
    """`serve` listens only after every enabled point was evaluated once, so the very first request
    it answers already has a status for every point and the readiness verdict (issue 4)."""
    fast_config(bot.path)
    enabled = load_config(None, str(bot.path)).enabled_ids()
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        # no request before the "serving" line: the first one below is the first scrape
        wait_for(lambda: "msg=\"serving http://" in exp.stderr() or exp.proc.poll() is not None, timeout=60,
                 what="serve listening")
        assert exp.proc.poll() is None, exp.stderr()
        m = exp.metrics()
        for fp in enabled:
            assert sample(m, "trading_failure_point_status", fp=fp) is not None, fp
            assert sample(m, "trading_failure_point_last_check_timestamp_seconds", fp=fp) is not None, fp
            assert sample(m, "trading_failure_point_check_duration_seconds", fp=fp) is not None, fp
        assert sample(m, "trading_readiness_status") in (0, 1, 2)
        assert sample(m, "trading_exporter_ready") == 1
        assert sample(m, "trading_exporter_cycle_duration_seconds") is not None
        assert exp.get("/-/ready")[0] == 200
        assert exp.api()["pending_fps"] == []

        # heartbeats are times, not ages (the sandbox writes both files and the daemon log at bot.now)
        assert sample(m, "trading_bot_last_cycle_timestamp_seconds") == pytest.approx(bot.now, abs=1e-3)
        assert sample(m, "trading_bot_heartbeat_timestamp_seconds") == pytest.approx(bot.now, abs=1e-3)
        # the daemon stamps its cycle lines with whole seconds, as stock-bot's does
        assert sample(m, "trading_uw_daemon_last_cycle_timestamp_seconds") == pytest.approx(bot.now, abs=1)
        # no series is an age (a HELP text may name a config key such as max_age_seconds)
        names = {line.split("{")[0].split(" ")[0] for line in m.splitlines() if line and not line.startswith("#")}
        assert not [n for n in names if n.endswith("_age_seconds")]

        # the log says what it waits for, the first verdict comes before listening
        err = exp.stderr()
        waiting = err.index(f"evaluating {len(enabled)} checks once before listening on 127.0.0.1:{exp.port}")
        verdict = err.index('msg="readiness ')
        serving = err.index(f'msg="serving http://127.0.0.1:{exp.port} for bot root')
        assert waiting < verdict < serving, err
        assert "still pending" not in err
    finally:
        exp.stop()


def test_a_point_without_a_result_is_absent_and_not_ready(bot: BotRoot) -> None:
    """In-process, scheduler not started: what a scrape sees of points that have no result yet.

    `serve` never listens in this state at start; a reload that enables a new point puts that
    point in it until its first run. Nothing is guessed: no status, no readiness, 503 on /-/ready.
    """
    sched = Scheduler(load_config(None, str(bot.path)))
    server = make_server(sched, "127.0.0.1:0")
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(url + "/-/ready", timeout=5)  # noqa: S310 (loopback http)
        assert exc.value.code == 503
        m = server.metrics_body().decode()
        assert sample(m, "trading_failure_point_info", fp="FP-1.2") == 1
        assert sample(m, "trading_failure_point_interval_seconds", fp="FP-1.2") == 15
        assert sample(m, "trading_failure_point_status", fp="FP-1.2") is None
        assert sample(m, "trading_readiness_status") is None and sample(m, "trading_exporter_ready") == 0
        data = json.loads(urllib.request.urlopen(url + "/api/failure_points", timeout=5).read())  # noqa: S310
        assert data["readiness"] == "UNKNOWN" and data["failure_points"] == {}
        assert data["pending_fps"] == sched.enabled
        sched.start()
        assert sched.wait_evaluated(60) == []
        assert urllib.request.urlopen(url + "/-/ready", timeout=5).status == 200  # noqa: S310
    finally:
        sched.stop()
        server.shutdown()
        server.server_close()


def test_observation_series_and_label_values_are_bounded(bot: BotRoot) -> None:
    """A check that records more label sets than MAX_SERIES_PER_OBSERVATION, and a label value far
    longer than MAX_LABEL_VALUE_CHARS, cannot blow up the series count: the exposition keeps the
    first label sets, cuts the value, and the scrape of every other family still succeeds.

    The check is a test check run by the real engine in FP-6.4's slot (checks are plugins);
    everything from there on (scheduler, collector, HTTP server, promtool) is the product's.
    """
    limit, cut = MAX_SERIES_PER_OBSERVATION, MAX_LABEL_VALUE_CHARS

    def noisy(ctx: Any, params: dict[str, Any]) -> Outcome:
        out = Outcome.ok("records far too many label sets")
        for i in range(limit + 36):
            out.observe("trading_test_items", i, item=f"item-{i:03d}")
        return out.observe("trading_test_long_label", 1, detail="x" * (cut + 500) + "END")

    sched = Scheduler(load_config(None, str(bot.path)))
    sched.engine.checks = {**sched.engine.checks, "FP-6.4": noisy}
    server = make_server(sched, "127.0.0.1:0")
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    sched.start()
    try:
        assert sched.wait_evaluated(60) == []
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback http)
            assert r.status == 200
            m = r.read().decode()
        items = [ln for ln in m.splitlines() if ln.startswith("trading_test_items{")]
        assert len(items) == limit
        assert [sample(m, "trading_test_items", item=f"item-{i:03d}") for i in range(limit)] == list(range(limit))
        assert sample(m, "trading_test_items", item=f"item-{limit:03d}") is None
        assert sample(m, "trading_test_long_label", detail="x" * cut) == 1
        assert "END" not in m and "x" * (cut + 1) not in m
        # every other family is intact
        assert sample(m, "trading_failure_point_status", fp="FP-6.4") == Status.OK.value
        for fp in sched.enabled:
            assert sample(m, "trading_failure_point_status", fp=fp) is not None, fp
        assert sample(m, "trading_readiness_status") is not None
        r2 = subprocess.run(["promtool", "check", "metrics"], input=m, capture_output=True, text=True, timeout=30)
        assert r2.returncode == 0, r2.stdout + r2.stderr
    finally:
        sched.stop()
        server.shutdown()
        server.server_close()


def test_committed_generated_doc_tables_match_the_source() -> None:
    """Drift: the metrics, runbook and config-key tables in docs/ are generated (UPDATE_GOLDEN=1
    rewrites them)."""
    generated = readme.artefacts()
    assert set(generated) == {readme.METRICS_DOC, readme.RUNBOOKS_DOC, readme.CONFIG_DOC}
    for rel, fresh in generated.items():
        path = REPO / rel
        if os.environ.get("UPDATE_GOLDEN"):
            path.write_text(fresh)
        assert path.read_text() == fresh, f"{rel}'s generated table drifted from the source: run `make generate`"
    fresh = generated[readme.METRICS_DOC]
    table = fresh.split(readme.BEGIN, 1)[1].split(readme.END, 1)[0]
    for name in CORE:
        assert f"| `{name}" in table, name
    for point in load_catalog():
        for obs in point.observations:
            assert f"| `{obs['name']}` |" in table, obs["name"]


def test_a_missing_generator_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "GENERATORS", [*generate.GENERATORS, "exporter.no_such_generator:artefacts"])
    with pytest.raises(generate.GeneratorMissing, match="exporter.no_such_generator does not exist"):
        generate.all_artefacts()
    monkeypatch.setattr(generate, "GENERATORS", ["exporter.generate:no_such_function"])
    with pytest.raises(generate.GeneratorMissing, match="has no function 'no_such_function'"):
        generate.all_artefacts()
    with pytest.raises(readme.MarkersMissing):
        readme.render("# a README without the block\n", load_catalog())


def test_self_healing_columns_come_from_the_healer_audit(bot: BotRoot) -> None:
    """The healer's audit record (exporter.core.audit) feeds self_healing_attempted/success in the API."""
    audit = pytest.importorskip("exporter.core.audit")
    cfg = load_config(None, str(bot.path))
    log = audit.AuditLog(cfg.resolve(cfg["healer"]["audit_file"]))
    now = time.time()
    log.append({"event": "attempt", "fp": "FP-1.1", "outcome": "failed", "epoch": now - 60})
    log.append({"event": "attempt", "fp": "FP-6.1", "outcome": "success", "epoch": now - 30})
    log.append({"event": "attempt", "fp": "FP-3.1", "outcome": "dry_run", "epoch": now - 10})
    sched = Scheduler(cfg).start()
    try:
        wait_for(lambda: sched.snapshot().ready, timeout=30, what="first run")
        fps = sched.api_json()["failure_points"]
        assert (fps["FP-1.1"]["self_healing_attempted"], fps["FP-1.1"]["self_healing_success"]) == (True, False)
        assert (fps["FP-6.1"]["self_healing_attempted"], fps["FP-6.1"]["self_healing_success"]) == (True, True)
        # a dry run is not an attempt; a point nobody healed says so
        assert (fps["FP-3.1"]["self_healing_attempted"], fps["FP-3.1"]["self_healing_success"]) == (False, False)
        assert (fps["FP-1.2"]["self_healing_attempted"], fps["FP-1.2"]["self_healing_success"]) == (False, False)
    finally:
        sched.stop()


def test_a_collector_registered_on_the_server_is_fresh_on_every_scrape_and_fails_alone(bot: BotRoot) -> None:
    """The core exposition is cached per scheduler state; collectors added by others are not,
    and one that raises is left out instead of failing the whole scrape."""
    from prometheus_client.core import GaugeMetricFamily

    class Counter:
        value = 0.0

        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            yield GaugeMetricFamily("trading_test_extra", "A value that changes between scrapes.", value=self.value)

    class Broken:
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            raise RuntimeError("bug in an add-on")

    sched = Scheduler(load_config(None, str(bot.path)))
    server = make_server(sched, "127.0.0.1:0")
    try:
        extra = Counter()
        server.registry.register(extra)  # type: ignore[arg-type]
        server.registry.register(Broken())  # type: ignore[arg-type]
        generation = sched.generation
        first = server.metrics_body().decode()
        extra.value = 7
        second = server.metrics_body().decode()
        assert sched.generation == generation  # the core came from the cache both times
        assert sample(first, "trading_test_extra") == 0 and sample(second, "trading_test_extra") == 7
        assert sample(second, "trading_failure_point_info", fp="FP-1.2") == 1
        r = subprocess.run(["promtool", "check", "metrics"], input=second, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        server.server_close()


def test_a_built_exposition_is_served_until_anything_it_depends_on_changes(bot: BotRoot) -> None:
    """Over HTTP: a scrape answers from the built exposition (on the event loop, no hand-over) only
    while the scheduler's generation and every collector's ``state_key`` are what it was built
    for; a collector without ``state_key`` is rendered on every scrape; HEAD gets the same head."""
    from prometheus_client.core import GaugeMetricFamily

    class Keyed:
        value = 1.0

        def state_key(self) -> float:
            return self.value

        def collect(self) -> Iterator[Any]:
            yield GaugeMetricFamily("trading_test_keyed", "Changes with its state key.", value=self.value)

    sched = Scheduler(load_config(None, str(bot.path)))
    server = make_server(sched, "127.0.0.1:0")
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"

    def scrape(method: str = "GET") -> tuple[str, str]:
        req = urllib.request.Request(url, method=method)  # noqa: S310 (loopback http)
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
            return r.headers["Content-Length"], r.read().decode()

    try:
        keyed = Keyed()
        server.registry.register(keyed)  # type: ignore[arg-type]
        length, first = scrape()
        assert sample(first, "trading_test_keyed") == 1
        assert server._body_cache is not None and server._body_cache[1].decode() == first
        assert scrape("HEAD") == (length, "")
        keyed.value = 2  # its state changed: the next scrape renders again
        assert sample(scrape()[1], "trading_test_keyed") == 2
        sched.generation += 1  # the scheduler's state changed: the core is rebuilt
        before = server._metrics_cache
        assert sample(scrape()[1], "trading_test_keyed") == 2
        assert server._metrics_cache is not before

        class Unkeyed:  # cannot say when it changes: rendered on every scrape, never cached
            value = 0.0

            def collect(self) -> Iterator[Any]:
                yield GaugeMetricFamily("trading_test_unkeyed", "No state key.", value=self.value)

        unkeyed = Unkeyed()
        server.registry.register(unkeyed)  # type: ignore[arg-type]
        assert sample(scrape()[1], "trading_test_unkeyed") == 0
        unkeyed.value = 5
        assert sample(scrape()[1], "trading_test_unkeyed") == 5
        server.registry.unregister(unkeyed)  # type: ignore[arg-type]
        assert sample(scrape()[1], "trading_test_unkeyed") is None
    finally:
        server.shutdown()
        server.server_close()


def test_a_foreign_password_hash_is_refused_in_one_line(bot: BotRoot) -> None:
    cfg = fast_config(bot.path, basic_auth_users={"prometheus": "$2y$10$abcdefghijklmnopqrstuv"})
    r = run_cli("--bot-root", str(bot.path), "serve", "--listen", f"127.0.0.1:{free_port()}", timeout=30)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"exporter.basic_auth_users.prometheus in {cfg} is not a pbkdf2_sha256 hash" in lines[0]
    assert "Traceback" not in r.stderr and "$2y$10$" not in r.stderr


def test_a_reload_to_a_foreign_hash_keeps_the_running_config(bot: BotRoot, tmp_path: Path) -> None:
    """A reload that would lock every scraper out is refused like any other bad config."""
    cfg = fast_config(bot.path)
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        wait_for(exp.up, timeout=30, what="exporter up")
        good = cfg.read_text()
        cfg.write_text(good.replace("exporter:\n", 'exporter:\n  basic_auth_users: {prometheus: "$2y$10$x"}\n'))
        code, body = exp.get("/-/reload", method="POST")
        assert code == 500, body
        assert exp.get("/metrics")[0] == 200  # still open: the running config has no users
        assert "not a pbkdf2_sha256 hash" in exp.stderr()
    finally:
        exp.stop()


def _thread_cpus(pid: int) -> list[str]:
    """Each thread's ``Cpus_allowed_list`` (threads that ended while they were read are left out)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        out += [line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list:")]
    return out


def test_the_exporters_threads_keep_to_one_cpu_unless_configured_otherwise(bot: BotRoot, tmp_path: Path) -> None:
    """By default every thread of `serve` (event loop, scheduler, check workers, request and cache
    threads) runs on one CPU of those it is allowed; `exporter.one_cpu: false` gives them all of
    those back, also by a reload, and the log says which."""
    allowed = os.sched_getaffinity(0)  # what the exporter inherits from this test
    cfg = fast_config(bot.path)
    exp = Exporter(bot.path, tmp_path / "serve.log")
    try:
        wait_for(exp.ready, timeout=30, what="/-/ready")
        cpus = _thread_cpus(exp.proc.pid)
        assert len(cpus) >= 4 and len(set(cpus)) == 1, cpus
        one = int(cpus[0])  # a single CPU, of those allowed
        assert one in allowed
        if len(allowed) > 1:
            assert f"keeping the exporter's threads on CPU {one} of {affinity.cpu_list(allowed)} (exporter.one_cpu)" in exp.stderr()
        cfg.write_text(cfg.read_text() + "  one_cpu: false\n")
        os.kill(exp.proc.pid, signal.SIGHUP)
        wait_for(lambda: set(_thread_cpus(exp.proc.pid)) == {affinity.cpu_list(allowed)}, what="threads released")
        assert f"the exporter's threads may run on CPUs {affinity.cpu_list(allowed)}" in exp.stderr()
    finally:
        exp.stop()
    fast_config(bot.path, one_cpu=False)
    exp = Exporter(bot.path, tmp_path / "serve2.log")
    try:
        wait_for(exp.ready, timeout=30, what="/-/ready")
        assert set(_thread_cpus(exp.proc.pid)) == {affinity.cpu_list(allowed)}
    finally:
        exp.stop()
