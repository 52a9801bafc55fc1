"""The command line a person can guess: global options on either side of the command, help text
with defaults on every option, `config check` (no network), and one line for a directory that
is not a bot root."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import cli
from exporter.core.config import load as load_config
from exporter.tools.preflight import BotRootError, require_bot_root
from sandbox.botroot import BotRoot
from tests.conftest import clean_env, run_cli


def _one_line_exit_3(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 3, r
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


class Recorder:
    """A loopback TCP listener that records every connection made to it (an HTTP request, a TLS
    handshake or a bare connect all count)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._stop:
                conn.close()
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        with socket.create_connection(("127.0.0.1", self.port)):
            pass
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def root(tmp_path: Path, recorder: Recorder) -> BotRoot:
    """A healthy bot root whose broker and UW URLs are the recorder."""
    return BotRoot(tmp_path / "bot").healthy(recorder.url, recorder.url)


# --- global options before or after the command ------------------------------------------------
def test_global_options_work_before_and_after_the_command(root: BotRoot, tmp_path: Path) -> None:
    before = run_cli("--bot-root", str(root.path), "check", "--json", "--only", "FP-5.1")
    after = run_cli("check", "--json", "--only", "FP-5.1", "--bot-root", str(root.path))
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout)["failure_points"].keys() == json.loads(after.stdout)["failure_points"].keys()
    cfg = tmp_path / "tr.yaml"
    cfg.write_text("readiness: {max_warnings: 5}\n")
    for argv in (("--config", str(cfg), "config", "check", "--bot-root", str(root.path)),
                 ("config", "check", "--config", str(cfg), "--bot-root", str(root.path))):
        r = run_cli(*argv)
        assert r.returncode == 0 and f"config: {cfg}" in r.stdout, (argv, r.stdout, r.stderr)


def test_the_value_after_the_command_wins(root: BotRoot, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("--bot-root", str(empty), "check", "--bot-root", str(root.path), "--json", "--only", "FP-5.1")
    assert r.returncode == 0, r.stderr
    err = _one_line_exit_3(run_cli("--bot-root", str(root.path), "check", "--bot-root", str(empty)))
    assert str(empty) in err, err


def _walk(parser: argparse.ArgumentParser, name: str = "trading-readiness") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}")
        else:
            yield name, action


def test_every_option_has_help_naming_its_default() -> None:
    seen = []
    for command, action in _walk(cli.build_parser()):
        if not action.option_strings:
            # the sandbox's passthrough; the sandbox's own parser documents its options
            assert command == "trading-readiness sandbox" and action.dest == "rest", (command, action)
            continue
        seen.append((command, action.option_strings[-1]))
        text = action.help
        assert text and text != argparse.SUPPRESS and text.strip(), (command, action.option_strings)
        if action.dest != "help":
            assert "default" in text, (command, action.option_strings, text)
    for expected in [("trading-readiness serve", "--listen"), ("trading-readiness heal", "--dry-run"),
                     ("trading-readiness check", "--only"), ("trading-readiness check", "--json"),
                     ("trading-readiness config check", "--bot-root")]:
        assert expected in seen, expected
    listen = next(a for c, a in _walk(cli.build_parser()) if c.endswith("serve") and "--listen" in a.option_strings)
    assert "exporter.listen" in str(listen.help) and "127.0.0.1:9870" in str(listen.help)


# --- config check ----------------------------------------------------------------------------
def test_config_check_passes_a_sound_setup_without_touching_the_network(
        root: BotRoot, recorder: Recorder) -> None:
    env = clean_env(ALPACA_BASE_URL=recorder.url, UW_BASE_URL=recorder.url)
    r = run_cli("--bot-root", str(root.path), "config", "check", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stderr == ""
    out = r.stdout
    for part in ("config: built-in defaults", f"bot root: {root.path}", ".env:", "credentials:", "limits:",
                 "checks:", "ok:"):
        assert part in out, (part, out)
    assert "PKTEST" not in out and "SECRETTEST" not in out and "uw-test-token" not in out
    assert recorder.connections == 0


def test_config_check_reports_every_problem_one_line_each(tmp_path: Path, recorder: Recorder) -> None:
    bot = BotRoot(tmp_path / "bot").healthy(recorder.url, recorder.url)
    env_file = bot.path / ".env"
    env_file.write_text(env_file.read_text().replace("MAX_CONCURRENT_POSITIONS=16", "MAX_CONCURRENT_POSITIONS=lots")
                        .replace("UW_API_KEY=uw-test-token", ""))
    r = run_cli("--bot-root", str(bot.path), "config", "check")
    assert r.returncode == 3, r
    problems = r.stderr.strip().splitlines()
    assert len(problems) == 2, problems
    assert problems[0].startswith("problem: credentials:") and "UW_API_KEY" in problems[0], problems
    assert problems[1].startswith("problem: limits:") and "MAX_CONCURRENT_POSITIONS='lots'" in problems[1], problems
    assert recorder.connections == 0


def test_config_check_names_an_unknown_key_and_its_file(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("")
    cfg = tmp_path / "trading-readiness.yaml"
    cfg.write_text("readiness: {max_warnigns: 2}\n")
    err = _one_line_exit_3(run_cli("config", "check", "--bot-root", str(tmp_path)))
    assert err == f"config error: unknown key 'readiness.max_warnigns' in {cfg}", err


def test_config_check_on_a_directory_that_is_not_a_bot_root(tmp_path: Path) -> None:
    r = run_cli("config", "check", "--bot-root", str(tmp_path))
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [
        f"problem: bot root {tmp_path} does not look like the bot's working directory: none of main.py, "
        "uw_flow_daemon.py, data/, state/ exists (set --bot-root or bot_root: to the directory the bot runs in)"]


def test_config_check_needs_an_action() -> None:
    err = _one_line_exit_3(run_cli("config"))
    assert "an ACTION is required (check)" in err


# --- what counts as a bot root ---------------------------------------------------------------
def test_a_fresh_install_and_a_root_without_scripts_both_look_like_bot_roots(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "main.py").write_text("")
    (fresh / "uw_flow_daemon.py").write_text("")
    (fresh / ".env").write_text("ALPACA_KEY=k\nALPACA_SECRET=s\nUW_API_KEY=u\n")
    assert require_bot_root(load_config(None, str(fresh))) == ["main.py", "uw_flow_daemon.py"]
    r = run_cli("config", "check", "--bot-root", str(fresh))
    assert r.returncode == 0, (r.stdout, r.stderr)
    recorded = tmp_path / "recorded"  # the layout of a recording: data, state and logs, no scripts
    for d in ("data", "state", "logs"):
        (recorded / d).mkdir(parents=True)
    assert require_bot_root(load_config(None, str(recorded))) == ["data/", "state/"]
    sim = BotRoot(tmp_path / "sim")
    assert require_bot_root(load_config(None, str(sim.path))) == ["data/", "state/"]


def test_the_markers_follow_the_configured_layout(tmp_path: Path) -> None:
    (tmp_path / "bot.py").write_text("")
    cfg = tmp_path / "tr.yaml"
    cfg.write_text("processes: {bot: {script: bot.py}}\npaths: {uw_cache: cache/flow.json}\n")
    assert require_bot_root(load_config(str(cfg), str(tmp_path))) == ["bot.py"]
    (tmp_path / "bot.py").unlink()
    (tmp_path / "data").write_text("a file, not the data directory")
    with pytest.raises(BotRootError, match=r"none of bot\.py, uw_flow_daemon\.py, cache/, state/ exists"):
        require_bot_root(load_config(str(cfg), str(tmp_path)))


@pytest.mark.parametrize("command", [["check"], ["verify"], ["serve", "--listen", "127.0.0.1:0"], ["probe"]])
def test_commands_refuse_a_directory_that_is_not_a_bot_root(tmp_path: Path, command: list[str]) -> None:
    err = _one_line_exit_3(run_cli("--bot-root", str(tmp_path), *command, timeout=30))
    assert err == (f"error: bot root {tmp_path} does not look like the bot's working directory: none of main.py, "
                   "uw_flow_daemon.py, data/, state/ exists (set --bot-root or bot_root: to the directory the bot "
                   "runs in)"), err
    assert list(tmp_path.iterdir()) == []  # nothing written: no record, no log


def test_a_bot_root_that_is_missing_or_a_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    a_file = tmp_path / "main.py"
    a_file.write_text("")
    for command in ("check", "verify", "serve", "probe", "config"):
        argv = [command, "check"] if command == "config" else [command]
        err = _one_line_exit_3(run_cli("--bot-root", str(missing), *argv))
        assert err == f"config error: bot root {missing} does not exist", err
        err = _one_line_exit_3(run_cli("--bot-root", str(a_file), *argv))
        assert err == f"config error: bot root {a_file} is not a directory", err


def test_an_unreadable_bot_root_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Without permission to list the directory (simulated at the OS boundary: the tests may run
    as root, who may read anything)."""
    real_listdir = os.listdir

    def listdir(path: object) -> list[str]:
        if Path(str(path)) == tmp_path.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(os, "listdir", listdir)
    assert cli.main(["--bot-root", str(tmp_path), "check"]) == 3
    err = capsys.readouterr().err
    assert err == f"error: bot root {tmp_path.resolve()} cannot be read: permission denied\n", err
    assert cli.main(["--bot-root", str(tmp_path), "config", "check"]) == 3
    out = capsys.readouterr()
    assert out.err == f"problem: bot root {tmp_path.resolve()} cannot be read: permission denied\n", out


def test_sandbox_without_the_extra_is_one_line_and_exit_3() -> None:
    """The exporter's wheel has no sandbox: the command names what to install, never a traceback."""
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['sandbox'] = None; "
                        "from exporter.cli import main; raise SystemExit(main(['sandbox', 'status']))"],
                       capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines() == ["error: the sandbox is not installed: from a checkout, pip install '.[sandbox]'"]
