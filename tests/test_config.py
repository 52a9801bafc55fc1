"""Every configuration and usage error: one line naming the key and the file, exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.bot.botenv import BotEnv, parse_dotenv
from exporter.core.config import load

from .conftest import clean_env, run_cli

BAD_CONFIGS = [
    ("unknown_top.yaml", "bots_root: /tmp\n", "unknown key 'bots_root' in {f}"),
    ("unknown_nested.yaml", "readiness:\n  max_warning: 3\n", "unknown key 'readiness.max_warning' in {f}"),
    ("wrong_type.yaml", "readiness:\n  max_warnings: many\n",
     "key 'readiness.max_warnings' in {f} must be an integer, got 'many'"),
    ("bool_as_number.yaml", "alpaca:\n  timeout_seconds: yes\n",
     "key 'alpaca.timeout_seconds' in {f} must be a number, got True"),
    ("section_not_mapping.yaml", "paths: data\n", "'paths' in {f} must be a mapping"),
    ("unknown_fp.yaml", "checks:\n  FP-9.9: {enabled: false}\n", "unknown failure point 'checks.FP-9.9' in {f}"),
    ("unknown_check_key.yaml", "checks:\n  FP-1.3: {intervall_seconds: 5}\n",
     "unknown key 'checks.FP-1.3.intervall_seconds' in {f}"),
    ("unknown_param.yaml", "checks:\n  FP-1.3: {params: {open_warn: 5}}\n",
     "unknown key 'checks.FP-1.3.params.open_warn' in {f}"),
    ("bad_param_type.yaml", "checks:\n  FP-1.4: {params: {min_symbols: lots}}\n",
     "key 'checks.FP-1.4.params.min_symbols' in {f} must be a number, got 'lots'"),
    ("negative_timeout.yaml", "checks:\n  FP-1.1: {timeout_seconds: -1}\n",
     "key 'checks.FP-1.1.timeout_seconds' in {f} must be positive"),
    ("healer_shell.yaml", "healers:\n  FP-1.1: {run: 'systemctl restart x'}\n",
     "key 'healers.FP-1.1.run' in {f} must be a list"),
    ("healer_both.yaml", "healers:\n  FP-1.1: {run: [true], systemd_restart: a.service}\n",
     "'healers.FP-1.1' in {f} needs exactly one of 'run' or 'systemd_restart'"),
    ("healer_forbidden.yaml", "healers:\n  FP-3.1: {run: [rm, state/governor_freezes.json]}\n",
     "'healers.FP-3.1' in {f}: FP-3.1 must not be healed"),
    ("bad_listen.yaml", "exporter:\n  listen: localhost\n", "key 'exporter.listen' in {f} must be HOST:PORT"),
    # a digit to str.isdigit, not to int()
    ("superscript_port.yaml", "healer:\n  listen: '127.0.0.1:\u00b2'\n", "key 'healer.listen' in {f} must be HOST:PORT"),
    # more digits than int() reads
    ("long_port.yaml", "exporter:\n  listen: '127.0.0.1:" + "9" * 5000 + "'\n", "key 'exporter.listen' in {f} must be HOST:PORT"),
    ("tls_half.yaml", "exporter:\n  tls_cert_file: /x.pem\n",
     "keys 'exporter.tls_cert_file' and 'exporter.tls_key_file' in {f} go together"),
    ("bad_yaml.yaml", "readiness: [\n", "config file {f} is not valid YAML at line 2"),
    ("not_mapping.yaml", "- a\n- b\n", "'top level' in {f} must be a mapping"),
    ("checks_list.yaml", "checks: [FP-1.1]\n", "'checks' in {f} must be a mapping of failure-point ids"),
    ("check_not_mapping.yaml", "checks:\n  FP-1.1: off\n", "'checks.FP-1.1' in {f} must be a mapping"),
    ("healers_list.yaml", "healers: [FP-1.1]\n", "'healers' in {f} must be a mapping of failure-point ids"),
    ("healer_unknown_fp.yaml", "healers:\n  FP-9.9: {run: [x]}\n", "unknown failure point 'healers.FP-9.9' in {f}"),
    ("healer_not_mapping.yaml", "healers:\n  FP-1.1: restart\n", "'healers.FP-1.1' in {f} must be a mapping"),
    ("healer_unknown_key.yaml", "healers:\n  FP-1.1: {run: [x], shell: true}\n",
     "unknown key 'healers.FP-1.1.shell' in {f}"),
    ("healer_empty_argv.yaml", "healers:\n  FP-1.1: {run: []}\n",
     "key 'healers.FP-1.1.run' in {f} must be a non-empty list of strings (an argv, no shell)"),
    ("null_value.yaml", "exporter:\n  listen:\n", "key 'exporter.listen' in {f} must not be empty"),
    ("negative_max_warnings.yaml", "readiness:\n  max_warnings: -1\n",
     "key 'readiness.max_warnings' in {f} must be 0 or more"),
    ("huge_timeout.yaml", "alpaca:\n  timeout_seconds: 300\n",
     "key 'alpaca.timeout_seconds' in {f} must be between 0 and 60"),
    ("infinite_timeout.yaml", "uw:\n  timeout_seconds: .inf\n", "key 'uw.timeout_seconds' in {f} must be a number"),
    ("empty_probe_symbol.yaml", "probe:\n  symbol: ' '\n", "key 'probe.symbol' in {f} must not be empty"),
    ("negative_notional.yaml", "probe:\n  notional: -5\n", "key 'probe.notional' in {f} must be positive"),
    ("bad_match_labels.yaml", "healer:\n  match_labels: {instance: 9870}\n",
     "key 'healer.match_labels' in {f} must map label names to strings"),
]


@pytest.mark.parametrize("name, text, message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_3(tmp_path: Path, name: str, text: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    r = run_cli("--config", str(f), "--bot-root", str(tmp_path), "check")
    assert r.returncode == 3
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message.format(f=f) in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("setting, message", [
    ("{enabled: 'yes'}", "key 'checks.FP-1.1.enabled' in {f} must be true/false"),
    ("{interval_seconds: 30s}", "key 'checks.FP-1.1.interval_seconds' in {f} must be a number"),
    ("{timeout_seconds: true}", "key 'checks.FP-1.1.timeout_seconds' in {f} must be a number"),
    ("{params: [grace_seconds, 5]}", "key 'checks.FP-1.1.params' in {f} must be a mapping"),
])
def test_wrong_type_for_a_check_key_is_the_whole_line(tmp_path: Path, setting: str, message: str) -> None:
    f = tmp_path / "tr.yaml"
    f.write_text(f"checks:\n  FP-1.1: {setting}\n")
    r = run_cli("--config", str(f), "--bot-root", str(tmp_path), "check")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.splitlines() == [f"config error: {message.format(f=f)}"], r.stderr


def test_unreadable_and_non_utf8_config_files(tmp_path: Path) -> None:
    d = tmp_path / "a-directory.yaml"
    d.mkdir()
    r = run_cli("--config", str(d), "--bot-root", str(tmp_path), "check")
    assert r.returncode == 3 and r.stderr.strip().splitlines() == [
        f"config error: config file {d} cannot be read: Is a directory"], r.stderr
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"readiness: {max_warnings: 2}  # caf\xe9\n")
    r = run_cli("--config", str(f), "--bot-root", str(tmp_path), "check")
    assert r.returncode == 3 and r.stderr.strip().splitlines() == [
        f"config error: config file {f} is not valid UTF-8 (byte 35)"], r.stderr


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "many.yaml"
    f.write_text("foo: 1\nreadiness: {max_warnings: x}\nchecks: {FP-1.1: {bogus: 1}}\n")
    r = run_cli("--config", str(f), "check")
    assert r.returncode == 3
    for part in ("unknown key 'foo'", "readiness.max_warnings", "checks.FP-1.1.bogus"):
        assert part in r.stderr


@pytest.mark.parametrize("argv, message", [
    (["--config", "/nonexistent/tr.yaml", "check"], "config file /nonexistent/tr.yaml does not exist"),
    (["--bot-root", "/nonexistent/bot", "check"], "bot root /nonexistent/bot does not exist"),
    (["check", "--only", "FP-9.1"], "unknown failure point FP-9.1 in --only"),
    (["check", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "a COMMAND is required"),
])
def test_usage_errors_exit_3(argv: list[str], message: str, tmp_path: Path) -> None:
    r = run_cli(*argv)
    assert r.returncode == 3, r
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_config_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bot"
    root.mkdir()
    (root / "trading-readiness.yaml").write_text("readiness: {max_warnings: 5}\n")
    assert load(None, str(root)).data["readiness"]["max_warnings"] == 5
    env_cfg = tmp_path / "env.yaml"
    env_cfg.write_text("readiness: {max_warnings: 7}\n")
    monkeypatch.setenv("TRADING_READINESS_CONFIG", str(env_cfg))
    assert load(None, str(root)).data["readiness"]["max_warnings"] == 7
    explicit = tmp_path / "x.yaml"
    explicit.write_text(f"bot_root: {root}\nreadiness: {{max_warnings: 9}}\n")
    cfg = load(str(explicit), None)
    assert cfg.data["readiness"]["max_warnings"] == 9 and cfg.bot_root == root.resolve()
    monkeypatch.delenv("TRADING_READINESS_CONFIG")
    monkeypatch.setenv("TRADING_READINESS_BOT_ROOT", str(root))
    assert load(None, None).bot_root == root.resolve()


def test_relative_paths_resolve_against_the_bot_root(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("paths: {uw_cache: cache/flow.json}\n")
    c = load(str(cfg), str(tmp_path))
    assert c.path("uw_cache") == tmp_path.resolve() / "cache/flow.json"
    assert c.path("weights") == tmp_path.resolve() / "state/signal_weights.json"


def test_dotenv_parsing_and_precedence(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# comment\nexport ALPACA_API_KEY=\" KEY1 \"\nALPACA_SECRET='S1'\nMIN_EXEC_SCORE=2.5 # tuned\n"
        "EMPTY=\nBROKEN LINE\nUW_BASE_URL=http://127.0.0.1:1/\n")
    env = BotEnv.load(tmp_path, {"ALPACA_SECRET": "  S2  "})
    assert env.alpaca_key == "KEY1" and env.source["ALPACA_API_KEY"] == ".env"
    assert env.alpaca_secret == "S2" and env.source["ALPACA_SECRET"] == "environment"
    assert env.number("MIN_EXEC_SCORE", 0) == 2.5
    assert env.uw_base_url == "http://127.0.0.1:1"
    assert env.alpaca_base_url == "https://paper-api.alpaca.markets"
    assert "EMPTY" not in env.values
    assert parse_dotenv("A='x'\nB=\"y\"") == {"A": "x", "B": "y"}


def test_secrets_found_for_redaction(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ALPACA_KEY=PKABCDEF\nAPCA_API_SECRET_KEY=shh-secret\nUW_API_KEY=tok-123\n"
                                   "MAX_CONCURRENT_POSITIONS=16\n")
    env = BotEnv.load(tmp_path, {})
    assert set(env.secrets()) == {"PKABCDEF", "shh-secret", "tok-123"}


def test_defaults_need_only_bot_root(tmp_path: Path) -> None:
    for d in ("data", "state", "logs"):
        (tmp_path / d).mkdir()
    r = run_cli("--bot-root", str(tmp_path), "check", "--json", env=clean_env())
    assert r.returncode == 2  # a bot root with nothing in it is not a working bot, and says so
    assert '"readiness": "BLOCKED"' in r.stdout


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("0", 18, 0), ("007", 18, 7), ("9" * 18, 18, int("9" * 18)), ("9" * 19, 18, None), ("65536", 5, 65536),
    ("", 18, None), (" 1", 18, None), ("+1", 18, None), ("-1", 18, None), ("1.0", 18, None), ("\u00b2", 18, None),
    ("\u0663", 18, None), ("1" * 5000, 18, None), (b"42", 18, 42), (b"\xb2", 18, None)])
def test_decimal_takes_only_the_digits_0_to_9(text: str | bytes, limit: int, expected: int | None) -> None:
    from exporter.core.fields import decimal

    assert decimal(text, limit) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:9870", ("127.0.0.1", 9870)), (":9870", ("127.0.0.1", 9870)), ("[::1]:0", ("::1", 0)),
    ("localhost", None), ("h:65536", None), ("h:\u00b2", None), ("h:" + "9" * 5000, None), ("h:", None)])
def test_host_port(value: str, expected: tuple[str, int] | None) -> None:
    from exporter.core.fields import host_port

    assert host_port(value) == expected
