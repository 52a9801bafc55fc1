"""CONTRACT.md "CLI": a usage, config or start-up problem is one line and exit 3 (UNKNOWN), never a
traceback and never Python's default exit 1, which a Nagios-style caller reads as DEGRADED."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.core.model import Outcome, Report, Result
from sandbox.alpaca import FakeAlpaca
from sandbox.botroot import BotRoot
from tests.conftest import Procs, clean_env, run_cli


def _bot_like(path: Path) -> Path:
    """A directory the CLI accepts as a bot root (one that has run: it has ``state/``)."""
    (path / "state").mkdir(exist_ok=True)
    return path


def _one_line_exit_3(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 3, r
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_config_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "tr.yaml"
    cfg.write_bytes(b"readiness: {max_warnings: 2}\n# \xff\xfe latin-1 comment\n")
    for command in ("check", "verify", "probe"):
        err = _one_line_exit_3(run_cli("--config", str(cfg), "--bot-root", str(tmp_path), command))
        assert err.startswith("config error:") and str(cfg) in err and "UTF-8" in err, err


def test_sandbox_dir_that_is_a_file_is_one_line_exit_3(tmp_path: Path) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    err = _one_line_exit_3(run_cli("sandbox", "--dir", str(f), timeout=30))
    assert str(f) in err, err


@pytest.mark.usefixtures("uw")
def test_verify_that_cannot_write_its_record_prints_the_verdict_it_exits_with(
        running: Procs, bot: BotRoot, alpaca: FakeAlpaca, tmp_path: Path) -> None:
    now = time.time()
    alpaca.clock = {"is_open": True, "next_close": datetime.fromtimestamp(now + 3 * 3600, UTC).isoformat(),
                    "next_open": datetime.fromtimestamp(now + 86400, UTC).isoformat()}
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = tmp_path / "tr.yaml"
    cfg.write_text(f"paths: {{verification_dir: {blocker / 'data'}}}\n")
    r = run_cli("--config", str(cfg), "--bot-root", str(bot.path), "verify", "--json")
    record = json.loads(r.stdout)
    assert r.returncode == 3, record["verification"]["reasons"]
    # a script reads the JSON, a pager reads the exit code: they must tell the same story
    assert record["readiness"] == "UNKNOWN" and record["exit_code"] == 3
    assert any("cannot write the verification record" in x for x in record["verification"]["reasons"])
    assert "cannot write the verification record" in r.stderr


def test_probe_settings_the_probe_rejects_are_config_errors_for_verify_too(tmp_path: Path) -> None:
    """verify is "config validation + all checks + probe": it must not pass a config probe refuses."""
    cfg = tmp_path / "tr.yaml"
    cfg.write_text("probe: {notional: -5}\n")
    for command in ("probe", "verify"):
        err = _one_line_exit_3(run_cli("--config", str(cfg), "--bot-root", str(tmp_path), command))
        assert err.startswith("config error:") and "'probe.notional'" in err and str(cfg) in err, err
    assert not (tmp_path / "data").exists()  # a config error writes no record


def test_a_config_key_with_a_line_break_still_gives_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "tr.yaml"
    cfg.write_text('"max\\nwarnings": 1\nchecks: {"FP-1.1\\r\\nx": {}}\n')
    err = _one_line_exit_3(run_cli("--config", str(cfg), "--bot-root", str(tmp_path), "check"))
    assert "unknown key 'max\\nwarnings'" in err and "'checks.FP-1.1\\r\\nx'" in err, err


def test_a_usage_error_quoting_an_argument_with_a_line_break_stays_one_line(tmp_path: Path) -> None:
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "check", "--only", "FP-1.1\nFP-1.2"))
    assert "unknown failure point FP-1.1\\nFP-1.2 in --only" in err, err


def _strict_json(text: str) -> Any:
    """RFC 8259 JSON: NaN and Infinity are not JSON, and jq or a browser rejects the whole document."""
    def reject(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=reject)


@pytest.mark.usefixtures("uw")
def test_check_json_stays_valid_json_when_a_limit_is_infinite(bot: BotRoot, alpaca: FakeAlpaca) -> None:
    now = time.time()
    alpaca.clock = {"is_open": True, "next_close": datetime.fromtimestamp(now + 3 * 3600, UTC).isoformat(),
                    "next_open": datetime.fromtimestamp(now + 86400, UTC).isoformat()}
    r = run_cli("--bot-root", str(bot.path), "check", "--json", "--only", "FP-2.3",
                env=clean_env(MIN_EXEC_SCORE="inf"))
    data = _strict_json(r.stdout)
    assert data["failure_points"]["FP-2.3"]["status"] in ("OK", "WARN", "ERROR", "SKIPPED")


def test_non_finite_detail_values_are_null_in_the_json_result() -> None:
    outcome = Outcome.warn("w", limit=float("inf"), seen=[1.0, float("nan")], nested={"x": float("-inf")})
    result = Result("FP-2.3", "n", "c", outcome, 1.0, 0.1)
    report = Report.build({"FP-2.3": result}, 2, 1.0)
    details = _strict_json(json.dumps(report.to_json()))["failure_points"]["FP-2.3"]["details"]
    assert details == {"limit": None, "seen": [1.0, None], "nested": {"x": None}}


def test_non_finite_numbers_in_the_config_are_config_errors(tmp_path: Path) -> None:
    """``.inf``/``.nan`` pass a type check but not "> 0": they would reach the probe's JSON as
    Infinity (not JSON) or schedule a check every NaN seconds."""
    cfg = tmp_path / "tr.yaml"
    cfg.write_text("probe: {score: .inf, notional: .nan}\nchecks: {FP-1.1: {interval_seconds: .nan}}\n"
                   "engine: {default_timeout_seconds: .inf}\n")
    for command in ("check", "verify"):
        err = _one_line_exit_3(run_cli("--config", str(cfg), "--bot-root", str(tmp_path), command))
        for key in ("probe.score", "probe.notional", "checks.FP-1.1.interval_seconds",
                    "engine.default_timeout_seconds"):
            assert f"'{key}'" in err, (key, err)


def test_a_point_named_twice_in_only_is_run_once_not_reported_hung(tmp_path: Path) -> None:
    """Two runs of one point at once made the second report the first as hung: a false BLOCKED."""
    _bot_like(tmp_path)
    for _ in range(3):
        r = run_cli("--bot-root", str(tmp_path), "check", "--json", "--only", *["FP-1.1", "FP-6.4"] * 4)
        points = json.loads(r.stdout)["failure_points"]
        assert sorted(points) == ["FP-1.1", "FP-6.4"]
        for fp in points.values():
            assert "hung" not in fp["message"], fp


def test_an_unexpected_error_line_is_redacted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The last-resort error line quotes the exception; secrets from the environment and URL logins
    in it are replaced like everywhere else."""
    from exporter import cli

    def explode(args: object) -> int:
        raise RuntimeError("GET https://gate:hunter22pass@broker.example/v2 failed with key PKCANARY77\nretry")

    monkeypatch.setenv("APCA_API_KEY_ID", "PKCANARY77")
    monkeypatch.setitem(cli.COMMANDS, "catalog", explode)
    assert cli.main(["catalog"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: RuntimeError: GET https://***@broker.example"), err
    assert "hunter22pass" not in err and "PKCANARY77" not in err, err


# --- serve and heal: listen address and TLS problems are start-up errors, one line, exit 3 ------
@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_serve_listen_must_be_host_port(tmp_path: Path) -> None:
    _bot_like(tmp_path)
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "serve", "--listen", "localhost"))
    assert err == "config error: --listen must be HOST:PORT, got 'localhost'"
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "serve", "--listen", "127.0.0.1:99999"))
    assert err == "config error: --listen must be HOST:PORT, got '127.0.0.1:99999'"
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "serve", "--listen", "127.0.0.1:\u00b3"))
    assert err == "config error: --listen must be HOST:PORT, got '127.0.0.1:\u00b3'"


def test_serve_cannot_listen_on_a_taken_port(tmp_path: Path, taken_port: int) -> None:
    _bot_like(tmp_path)
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "serve", "--listen", f"127.0.0.1:{taken_port}"))
    assert err == f"config error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"


def test_serve_tls_files_that_cannot_be_loaded(tmp_path: Path) -> None:
    _bot_like(tmp_path)
    cfg = tmp_path / "tr.yaml"
    cfg.write_text(f"exporter: {{tls_cert_file: {tmp_path / 'cert.pem'}, tls_key_file: {tmp_path / 'key.pem'}}}\n")
    argv = ("--config", str(cfg), "--bot-root", str(tmp_path), "serve", "--listen", "127.0.0.1:0")
    err = _one_line_exit_3(run_cli(*argv))
    assert err == (f"config error: exporter.tls_cert_file/tls_key_file in {cfg} cannot be loaded: "
                   "No such file or directory")
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    err = _one_line_exit_3(run_cli(*argv))
    prefix = f"config error: exporter.tls_cert_file/tls_key_file in {cfg} cannot be loaded: "
    assert err.startswith(prefix) and "PEM" in err.removeprefix(prefix), err


def test_heal_listen_must_be_host_port(tmp_path: Path) -> None:
    env = clean_env(TRADING_READINESS_HEALER_TOKEN="t0ken-for-tests-0123")
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "heal", "--listen", "9871", env=env))
    assert err == "error: --listen must be HOST:PORT, got '9871'"
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "heal", "--listen", "127.0.0.1:\u00b2", env=env))
    assert err == "error: --listen must be HOST:PORT, got '127.0.0.1:\u00b2'"


def test_heal_cannot_listen_on_a_taken_port(tmp_path: Path, taken_port: int) -> None:
    env = clean_env(TRADING_READINESS_HEALER_TOKEN="t0ken-for-tests-0123")
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), "heal", "--listen", f"127.0.0.1:{taken_port}",
                                   env=env))
    assert err == f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
