"""The systemd units in deploy/: loopback only, token from a file, hardened, accepted by systemd.

``systemd-analyze verify`` checks the units for real where it exists (it also insists that the
ExecStart binary exists, so the test points it at this checkout's console script); the structural
checks run everywhere.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.cli import build_parser

from .conftest import REPO

DEPLOY = REPO / "deploy"
SERVICES = ["trading-readiness-exporter.service", "trading-readiness-healer.service",
            "trading-readiness-verify.service"]
TIMER = "trading-readiness-verify.timer"
#: several bots on one host: the instance name is the bot's name, its settings come from its env file
TEMPLATES = ["trading-readiness-exporter@.service", "trading-readiness-healer@.service"]
BOT_ENV = DEPLOY / "bot.env.example"
INSTALLED_BINARY = "/opt/trading-readiness/.venv/bin/trading-readiness"
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def exec_args(name: str) -> list[str]:
    argv = shlex.split(unit(name)["Service"]["ExecStart"])
    assert argv[0] == INSTALLED_BINARY, argv
    return argv[1:]


def test_units_are_hardened_and_bind_loopback() -> None:
    for name in [*SERVICES, *TEMPLATES]:
        svc = unit(name)["Service"]
        for key, value in HARDENING.items():
            assert svc.get(key) == value, (name, key, svc.get(key))
        assert svc["User"] != "root", name
        # everything the service may write lies inside the bot root's logs/ or data/
        for path in svc["ReadWritePaths"].split():
            assert "%i" in path or "@" not in name, (name, path)
            assert path.rsplit("/", 1)[1] in ("logs", "data"), (name, path)
        text = (DEPLOY / name).read_text()
        assert "TOKEN=" not in text.replace("#   TRADING_READINESS_HEALER_TOKEN=", ""), name

    exporter = build_parser().parse_args(exec_args(SERVICES[0]))
    assert exporter.command == "serve" and exporter.listen.startswith("127.0.0.1:")
    healer = build_parser().parse_args(exec_args(SERVICES[1]))
    assert healer.command == "heal" and healer.listen.startswith("127.0.0.1:")
    assert not healer.insecure_no_auth
    # the token comes from a root-only file; without it the unit must not start ("-" would ignore it)
    assert unit(SERVICES[1])["Service"]["EnvironmentFile"] == "/etc/trading-readiness/healer.env"
    verify = build_parser().parse_args(exec_args(SERVICES[2]))
    assert verify.command == "verify"
    assert unit(SERVICES[2])["Service"]["Type"] == "oneshot"
    assert unit(SERVICES[0])["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"  # serve reloads on SIGHUP


def env_file(path: Path) -> dict[str, str]:
    """The variables an EnvironmentFile= sets (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def instance_args(name: str, bot: str, env: dict[str, str]) -> list[str]:
    """ExecStart of the template ``name`` for ``bot`` as systemd runs it: %i is the bot, and each
    ${VAR} one word from the bot's env file."""
    svc = unit(name)["Service"]
    assert svc["EnvironmentFile"] == "/etc/trading-readiness/%i.env", name
    argv = shlex.split(svc["ExecStart"].replace("%i", bot))
    assert argv[0] == INSTALLED_BINARY, argv
    out = []
    for word in argv[1:]:
        assert "$" not in word or re.fullmatch(r"\$\{[A-Z_]+\}", word), f"{name}: {word} is not one ${{VAR}} word"
        out.append(env[word[2:-1]] if word.startswith("${") else word)
    return out


def test_templated_units_run_one_bot_each_from_its_env_file() -> None:
    env = env_file(BOT_ENV)
    assert set(env) == {"BOT_ROOT", "EXPORTER_LISTEN", "HEALER_LISTEN"}  # the token stays commented out
    exporter = build_parser().parse_args(instance_args(TEMPLATES[0], "momentum", env))
    assert exporter.command == "serve" and exporter.listen == env["EXPORTER_LISTEN"]
    assert exporter.bot_root == env["BOT_ROOT"] and exporter.listen.startswith("127.0.0.1:")
    healer = build_parser().parse_args(instance_args(TEMPLATES[1], "momentum", env))
    assert healer.command == "heal" and healer.listen == env["HEALER_LISTEN"] and not healer.insecure_no_auth
    assert healer.bot_root == env["BOT_ROOT"]
    # the default bot root is the one the units may write below
    assert env["BOT_ROOT"] == "/home/trader/bots/momentum"
    for name in TEMPLATES:
        svc = unit(name)["Service"]
        assert all(p.startswith("/home/trader/bots/%i/") for p in svc["ReadWritePaths"].split()), name
        assert "%i" in unit(name)["Unit"]["Description"]
    assert unit(TEMPLATES[0])["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "trading-readiness-exporter@%i.service" in unit(TEMPLATES[1])["Unit"]["After"]
    # the same hardening as the single-bot units, key for key
    for single, template in zip(SERVICES[:2], TEMPLATES, strict=True):
        a, b = dict(unit(single)["Service"]), dict(unit(template)["Service"])
        for key in ("WorkingDirectory", "EnvironmentFile", "ExecStart", "ReadWritePaths"):
            a.pop(key, None)
            b.pop(key, None)
        assert a == b, (single, template)


def test_timer_runs_verify_before_the_open_in_new_york_time() -> None:
    timer = unit(TIMER)["Timer"]
    assert timer["Unit"] == SERVICES[2]
    assert timer["OnCalendar"] == "Mon..Fri *-*-* 09:00:00 America/New_York"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    binary = REPO / ".venv" / "bin" / "trading-readiness"
    if not binary.exists():
        pytest.skip("the console script is not installed in .venv")
    for name in [*SERVICES, TIMER, *TEMPLATES]:
        (tmp_path / name).write_text((DEPLOY / name).read_text().replace(INSTALLED_BINARY, str(binary)))
    # a template is verified through an instance of it (systemd loads the template beside it)
    instances = [str(tmp_path / t.replace("@", "@momentum")) for t in TEMPLATES]
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in [*SERVICES, TIMER]), *instances],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if "trading-readiness" in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr

    # the same command does complain about a broken unit, so the assertion above can fail
    broken = tmp_path / "broken" / SERVICES[0]
    broken.parent.mkdir()
    broken.write_text((tmp_path / SERVICES[0]).read_text().replace("Restart=on-failure", "Restart=sometimes"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "sometimes" in r.stdout + r.stderr

    r = subprocess.run(["systemd-analyze", "calendar", unit(TIMER)["Timer"]["OnCalendar"]],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "Next elapse" in r.stdout, r.stdout + r.stderr
