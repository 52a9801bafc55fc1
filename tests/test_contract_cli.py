"""CONTRACT.md "CLI": a usage, config or start-up problem is one line and exit 3 (UNKNOWN), never a
traceback and never Python's default exit 1, which a Nagios-style caller reads as DEGRADED."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import run_cli


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
