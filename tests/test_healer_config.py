"""The healer's configuration errors, each pinned: one line naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.core.config import ConfigError, load
from healers.policy import specs_from_config

from .test_healer_helpers import HealBot, free_port, start_heal_cli

BAD = [
    ("healers:\n  FP-1.1: {run: [x], timeout_seconds: 0}\n", "key 'healers.FP-1.1.timeout_seconds' in {f} must be positive"),
    ("healers:\n  FP-1.1: {run: [x], cooldown_seconds: -1}\n",
     "key 'healers.FP-1.1.cooldown_seconds' in {f} must be positive"),
    ("healers:\n  FP-1.1: {run: [x], window_seconds: 0}\n", "key 'healers.FP-1.1.window_seconds' in {f} must be positive"),
    ("healers:\n  FP-1.1: {run: [x], verify_timeout_seconds: -5}\n",
     "key 'healers.FP-1.1.verify_timeout_seconds' in {f} must be positive"),
    ("healers:\n  FP-1.1: {run: [x], max_attempts: 0}\n", "key 'healers.FP-1.1.max_attempts' in {f} must be 1 or more"),
    ("healer:\n  max_concurrent: 0\n", "key 'healer.max_concurrent' in {f} must be 1 or more"),
    ("healer:\n  verify_timeout_seconds: 0\n", "key 'healer.verify_timeout_seconds' in {f} must be positive"),
    ("healer:\n  verify_interval_seconds: -1\n", "key 'healer.verify_interval_seconds' in {f} must be positive"),
    ("healers:\n  FP-1.1: {enabled: true}\n", "'healers.FP-1.1' in {f} needs exactly one of 'run' or 'systemd_restart'"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split("'")[1] for _, m in BAD])
def test_bad_healer_config_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "tr.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(str(f), str(tmp_path))
    assert str(err.value) == message.format(f=f)


def test_switching_a_builtin_healer_off_needs_no_action(tmp_path: Path) -> None:
    f = tmp_path / "tr.yaml"
    f.write_text("healers:\n  FP-1.3: {enabled: false}\n")
    specs = specs_from_config(load(str(f), str(tmp_path)))
    assert not specs["FP-1.3"].enabled and specs["FP-1.1"].enabled


def test_heal_with_a_bad_config_exits_3_with_one_line(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    f = tmp_path / "bad.yaml"
    f.write_text("healer:\n  max_concurrent: 0\n")
    proc = start_heal_cli(hb, f, free_port())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and out == ""
    assert err.strip().splitlines() == [f"config error: key 'healer.max_concurrent' in {f} must be 1 or more"]


def test_heal_refuses_to_start_without_a_writable_audit_file(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    (hb.root / "not_a_dir").write_text("x")
    f = tmp_path / "audit.yaml"
    f.write_text("healer:\n  audit_file: not_a_dir/heals.jsonl\n")
    proc = start_heal_cli(hb, f, free_port())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and out == ""
    assert err.strip().splitlines() == [
        f"error: cannot use the heal audit file {hb.root / 'not_a_dir/heals.jsonl'} (key 'healer.audit_file'): "
        "File exists"]  # mkdir of the parent meets the file


def test_heal_refuses_to_start_without_a_usable_lease_file(tmp_path: Path) -> None:
    hb = HealBot(tmp_path)
    (hb.root / "not_a_dir").write_text("x")
    f = tmp_path / "lease.yaml"
    f.write_text("healer:\n  lease_file: not_a_dir/heal.lease\n")
    proc = start_heal_cli(hb, f, free_port())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and out == ""
    assert err.strip().splitlines() == [
        f"error: cannot use the heal lease file {hb.root / 'not_a_dir/heal.lease'} (key 'healer.lease_file'): "
        "File exists"]


def test_healers_are_the_named_actions_the_catalog_references(tmp_path: Path) -> None:
    """The catalog's ``healer:`` names an action; ``actions`` says what it runs, once for every point."""
    from exporter.core.catalog import load as load_catalog
    from exporter.core.config import DEFAULTS

    assert {p.healer for p in load_catalog() if p.healer} <= set(DEFAULTS["actions"])
    f = tmp_path / "tr.yaml"
    f.write_text("actions:\n  restart-bot: {run: [/bin/true]}\nhealers:\n  FP-6.1: {action: restart-bot}\n")
    specs = specs_from_config(load(str(f), str(tmp_path)))
    assert specs["FP-6.1"].argv == ("/bin/true",) and specs["FP-6.1"].name == "restart-bot"
    assert specs["FP-1.1"].argv == specs["FP-1.3"].argv == ("systemctl", "restart", "uw-flow-daemon.service")
    for text, message in [
        ("healers:\n  FP-6.1: {action: restart-uw-daemon}\n",
         "key 'healers.FP-6.1.action' in {f} must be 'restart-bot', the healer the catalog names for FP-6.1"),
        ("healers:\n  FP-6.1: {action: reboot}\n",
         "key 'healers.FP-6.1.action' in {f} names no action under 'actions' (restart-uw-daemon, restart-bot, "
         "reinit-weights)"),
        ("actions:\n  restart-bot: {}\n", "'actions.restart-bot' in {f} needs exactly one of 'run' or 'systemd_restart'"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError) as err:
            load(str(f), str(tmp_path))
        assert str(err.value) == message.format(f=f)
