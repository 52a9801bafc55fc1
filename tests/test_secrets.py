"""Secrets never leave: not in output, logs, metrics, the API, record files or an action's environment.

Distinctive canaries sit under every alias BOT.md lists, in ``.env`` and in the process
environment at once, and every command runs against loopback fakes that fail the ways the real
services fail. Any canary found anywhere the tool writes or answers is a leak.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from exporter.bot.context import Context
from exporter.checks import registry
from exporter.core.config import load as load_config
from exporter.core.engine import Engine
from exporter.core.model import Outcome
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from sandbox.uw import FakeUW

from .conftest import REPO, clean_env, run_cli, wait_for
from .prom import free_port, stop_process
from .test_healer_helpers import HealBot, alert, payload, script, start_heal_cli

KEY, SECRET, UW_TOKEN, HEAL_TOKEN = "PKLEAKCANARY1", "LEAKCANARYSECRET2", "LEAKCANARYUW3", "LEAKCANARYTOKEN4"
URL_LOGIN = "leakuser:leakpass9"
CANARIES = (KEY, SECRET, UW_TOKEN, HEAL_TOKEN, URL_LOGIN, "leakpass9")
ALIASES = {"ALPACA_KEY": KEY, "ALPACA_API_KEY": KEY, "APCA_API_KEY_ID": KEY,
           "ALPACA_SECRET": SECRET, "ALPACA_API_SECRET": SECRET, "APCA_API_SECRET_KEY": SECRET,
           "UW_API_KEY": UW_TOKEN, "TRADING_READINESS_HEALER_TOKEN": HEAL_TOKEN}


def assert_clean(text: str, where: str) -> None:
    leaked = [c for c in CANARIES if c in text]
    assert not leaked, f"{where} shows {leaked}: " + next(
        line for line in text.splitlines() if any(c in line for c in leaked))[:300]


def assert_root_clean(root: Path) -> None:
    """Every file the tool wrote into the bot root (records, logs, audit) except the bot's .env."""
    for path in root.rglob("*"):
        if path.is_file() and path.name != ".env":
            assert_clean(path.read_text(errors="replace"), str(path.relative_to(root)))


@dataclass
class Canary:
    root: Path
    bot: BotRoot
    alpaca: FakeAlpaca
    uw: FakeUW
    env: dict[str, str]

    def cli(self, *args: str, **env: str) -> str:
        r = run_cli("--bot-root", str(self.root), *args, env={**self.env, **env})
        assert "Traceback" not in r.stderr, r.stderr
        return r.stdout + r.stderr


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Canary]:
    alpaca, uw = FakeAlpaca(key=KEY, secret=SECRET).start(), FakeUW(token=UW_TOKEN).start()
    try:
        bot = BotRoot(tmp_path / "bot").healthy(alpaca.url, uw.url, key=KEY, secret=SECRET, uw_token=UW_TOKEN)
        bot.set_env(**ALIASES)
        # short broker/UW timeouts so the hang cases stay quick
        (bot.path / "trading-readiness.yaml").write_text(yaml.safe_dump(
            {"alpaca": {"timeout_seconds": 1}, "uw": {"timeout_seconds": 1}}))
        yield Canary(bot.path, bot, alpaca, uw, clean_env(**ALIASES))
    finally:
        alpaca.stop()
        uw.stop()


@pytest.mark.parametrize("mode", ["401", "403", "500", "nonjson", "hang"])
def test_check_and_probe_hide_secrets_when_the_broker_fails(canary: Canary, mode: str) -> None:
    canary.alpaca.set_mode(mode)
    assert_clean(canary.cli("check", "--json"), f"check --json (broker {mode})")
    if mode in ("401", "hang"):  # the probe's broker stages meet the same errors; two modes suffice
        assert_clean(canary.cli("probe"), f"probe (broker {mode})")


@pytest.mark.parametrize("mode", ["401", "429"])
def test_check_probe_and_verify_hide_secrets_when_uw_fails(canary: Canary, mode: str) -> None:
    canary.uw.set_mode(mode)
    assert_clean(canary.cli("check"), f"check (UW {mode})")
    assert_clean(canary.cli("probe", "--json"), f"probe --json (UW {mode})")
    # verify runs every check and the probe again, then writes its record files
    assert_clean(canary.cli("verify", "--json") if mode == "401" else canary.cli("verify"), f"verify (UW {mode})")
    assert_root_clean(canary.root)


def test_a_login_inside_a_base_url_is_redacted(canary: Canary) -> None:
    """Connection errors echo the base URL; ``https://user:pass@gateway`` must not leave whole."""
    dead = f"http://{URL_LOGIN}@127.0.0.1:{free_port()}"
    host = canary.alpaca.url.split("//", 1)[1]
    for env, args in (({"UW_BASE_URL": dead, "ALPACA_BASE_URL": f"http://{URL_LOGIN}@[::1"}, ("check", "--json")),
                      ({"UW_BASE_URL": dead, "ALPACA_BASE_URL": dead}, ("probe", "--json")),
                      ({"ALPACA_BASE_URL": f"http://{URL_LOGIN}@{host}"}, ("check", "--json"))):
        canary.bot.set_env(**env)
        assert_clean(canary.cli(*args, **env), f"{' '.join(args)} with {env} holding a login")


class _EchoHeaders(BaseHTTPRequestHandler):
    """A gateway that answers every request with an error quoting the request's headers."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = 403 if "/v2/" in self.path else 401
        h = self.headers
        body = json.dumps({"message": f"denied: {h['APCA-API-KEY-ID']} {h['APCA-API-SECRET-KEY']} "
                                      f"{h['Authorization']} {dict(h)}", "code": 40310000}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_error_body_that_echoes_the_request_headers_is_redacted(canary: Canary) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        canary.bot.set_env(ALPACA_BASE_URL=url, UW_BASE_URL=url)
        env = {"ALPACA_BASE_URL": url, "UW_BASE_URL": url}
        out = canary.cli("check", "--json", **env)
        assert "denied: ***" in out, "the echoing gateway was not reached"
        assert_clean(out, "check --json against a gateway echoing headers")
        assert_clean(canary.cli("probe", "--json", **env), "probe --json against a gateway echoing headers")
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_login_in_a_configured_url_is_redacted(canary: Canary) -> None:
    """FP-6.6 names extra targets by their URL; a proxy login in one stays out of message and details."""
    (canary.root / "trading-readiness.yaml").write_text(yaml.safe_dump({
        "checks": {"FP-6.6": {"params": {"extra_urls": [f"http://{URL_LOGIN}@127.0.0.1:{free_port()}/"]}}}}))
    assert_clean(canary.cli("check", "--json", "--only", "FP-6.6"), "FP-6.6 with a login in extra_urls")


def test_config_errors_and_the_catalog_hide_secrets(canary: Canary) -> None:
    bad = canary.root / "bad.yaml"
    bad.write_text("alpaca: {timeout_seconds: forever}\nnot_a_section: 1\n")
    for args in (("--config", str(bad), "check"), ("--config", str(bad), "verify", "--json"), ("catalog",)):
        r = run_cli("--bot-root", str(canary.root), *args, env=canary.env)
        assert "Traceback" not in r.stderr
        assert_clean(r.stdout + r.stderr, " ".join(args))


def test_a_check_that_crashes_on_a_secret_does_not_show_it(canary: Canary) -> None:
    """A bug that formats a credential into an exception or a detail is still redacted."""
    ctx = Context(load_config(None, str(canary.root)), environ=canary.env)
    engine = Engine(ctx, registry())

    def crash(ctx: Context, params: dict[str, object]) -> Outcome:
        raise RuntimeError(f"bad header APCA-API-SECRET-KEY: {ctx.env.alpaca_secret} for {ctx.env.alpaca_key}")

    def chatty(ctx: Context, params: dict[str, object]) -> Outcome:
        return Outcome.warn("looked at the token", token=ctx.env.uw_key, headers={"Authorization": f"Bearer {UW_TOKEN}"})

    engine.checks = {**engine.checks, "FP-2.1": crash, "FP-1.5": chatty}
    report = engine.report(["FP-2.1", "FP-1.5"])
    assert report.results["FP-2.1"].outcome.message.startswith("check raised RuntimeError")
    assert report.results["FP-1.5"].outcome.message == "looked at the token"
    assert_clean(json.dumps(report.to_json()), "a crashing check's result")


LEAKY_ADAPTER = """
from exporter.tools.pipeline import StageResult

class Leaky:
    def cache_read(self, ctx, s):
        return StageResult.passed("cache_read", "read", headers={"APCA-API-SECRET-KEY": ctx.env.alpaca_secret})
    def cluster(self, ctx, s):
        raise RuntimeError(f"Authorization: Bearer {ctx.env.uw_key}")
    def score(self, ctx, s): return StageResult.passed("score", "x")
    def threshold(self, ctx, s): return StageResult.passed("threshold", "x")
    def gates(self, ctx, s): return StageResult.passed("gates", "x")
    def execution(self, ctx, s): return StageResult.passed("execution", "x")
"""


def test_a_probe_adapter_that_handles_secrets_does_not_show_them(canary: Canary, tmp_path: Path) -> None:
    (tmp_path / "leaky_adapter.py").write_text(LEAKY_ADAPTER)
    (canary.root / "trading-readiness.yaml").write_text("probe:\n  adapter: leaky_adapter:Leaky\n")
    out = canary.cli("probe", "--json", PYTHONPATH=str(tmp_path))
    assert '"cluster"' in out and "RuntimeError" in out, out
    assert_clean(out, "probe --json with an adapter that puts a secret in a stage")


class Serve:
    def __init__(self, root: Path, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._err = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter", "--bot-root", str(root), "serve",
                                      "--listen", f"127.0.0.1:{self.port}"], cwd=REPO, env=env,
                                     stdout=self._err, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str) -> str:
        return requests.get(self.url + path, timeout=5).text

    def ready(self) -> bool:
        try:
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            assert self.proc.poll() is None, self.log.read_text()
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        self._err.close()


def test_serve_hides_secrets_in_metrics_api_page_and_logs(canary: Canary, tmp_path: Path) -> None:
    (canary.root / "trading-readiness.yaml").write_text(yaml.safe_dump(
        {"alpaca": {"timeout_seconds": 1}, "uw": {"timeout_seconds": 1},
         "exporter": {"default_interval_seconds": 1}}))
    srv = Serve(canary.root, tmp_path / "serve.log", canary.env)
    try:
        wait_for(srv.ready, timeout=30, what="exporter ready")
        for mode, shown in (("401", "HTTP 401"), ("nonjson", "not JSON")):
            canary.alpaca.set_mode(mode)
            canary.uw.set_mode("401" if mode == "401" else "ok")
            wait_for(lambda shown=shown: shown in srv.get("/api/failure_points"),  # type: ignore[misc]
                     timeout=20, what=f"broker {mode} reported")
            for path in ("/metrics", "/api/failure_points", "/"):
                assert_clean(srv.get(path), f"serve {path} (broker {mode})")
    finally:
        srv.stop()
    assert_clean((tmp_path / "serve.log").read_text(errors="replace"), "serve stderr")
    assert_root_clean(canary.root)


def test_heal_keeps_the_token_out_of_api_metrics_logs_audit_and_the_action(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    hb.bot.set_env(**ALIASES)
    dump = tmp_path / "action.env"
    # an action that echoes credentials (a `set -x` restart script, a tool printing its config)
    action = script(tmp_path / "dump_env.sh", f"env > {dump}\ngrep -h SECRET .env\necho \"$HOME\"\n")
    # and an operator who wrote a credential into the argv itself
    cfg = hb.config({"FP-1.1": {"run": [str(action), f"--token={UW_TOKEN}"]}}, verify_timeout_seconds=0.5)
    port = free_port()
    proc = start_heal_cli(hb, cfg, port, token=HEAL_TOKEN)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), timeout=20, what="healer up")
        body = json.dumps(payload(alert("FP-1.1")))
        wrong = requests.post(url + "/alertmanager", data=body, timeout=5,
                              headers={"Authorization": f"Bearer {HEAL_TOKEN}x"})
        assert wrong.status_code == 401
        assert_clean(wrong.text, "a refused webhook's answer")
        ok = requests.post(url + "/alertmanager", data=body, timeout=5,
                           headers={"Authorization": f"Bearer {HEAL_TOKEN}", "Content-Type": "application/json"})
        assert ok.status_code == 200, ok.text
        wait_for(dump.exists, timeout=20, what="the action ran")
        heals = wait_for(lambda: requests.get(url + "/api/heals", timeout=5).json()["heals"], what="heal recorded")
        assert "output: " in heals[0]["detail"], heals[0]
        for path in ("/api/heals", "/metrics"):
            assert_clean(requests.get(url + path, timeout=5).text, f"heal {path}")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert_clean(dump.read_text(), "the action's environment")
    assert HEAL_TOKEN not in dump.read_text()
    assert_clean(out + err, "heal stdout/stderr")
    assert_clean((hb.root / "logs/trading_readiness_heals.jsonl").read_text(), "the heal audit")


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/metrics", timeout=1).status_code == 200
    except requests.RequestException:
        return False
