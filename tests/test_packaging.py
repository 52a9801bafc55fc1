"""`pip install '.[sandbox]'` from a checkout: the extra resolves to the checkout's sandbox/, and
the exporter's wheel never contains the sandbox.

Both run pip for real, offline (--no-index, no build isolation: the venv's setuptools builds),
on a copy of the checkout, so nothing is downloaded and the working tree gets no build output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _checkout(dest: Path) -> Path:
    """The files a source checkout builds from (what `pip install .` reads)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for package in ("exporter", "healers", "grafana", "rules", "sandbox"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--no-build-isolation", "--quiet"],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_the_sandbox_extra_installs_the_checkouts_sandbox(tmp_path: Path) -> None:
    src = _checkout(tmp_path / "checkout")
    report = tmp_path / "report.json"
    _pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report), f"{src}[sandbox]",
         cwd=tmp_path)
    # --no-deps: the root only; what its extra requires is read from the metadata pip built
    (root,) = json.loads(report.read_text())["install"]
    assert root["metadata"]["name"] == "trading-readiness"
    wanted = [r for r in root["metadata"]["requires_dist"] if "sandbox" in r]
    assert wanted == [f'trading-readiness-sandbox @ {(src / "sandbox").as_uri()} ; extra == "sandbox"'], wanted

    # the whole resolution, offline: the extra's direct reference resolves to the checkout's sandbox/
    _pip("install", "--dry-run", "--report", str(report), f"{src}[sandbox]", cwd=tmp_path)
    urls = {i["metadata"]["name"]: i["download_info"]["url"] for i in json.loads(report.read_text())["install"]}
    assert urls["trading-readiness"] == src.as_uri()
    assert urls["trading-readiness-sandbox"] == (src / "sandbox").as_uri()


def test_the_exporters_wheel_has_no_sandbox(tmp_path: Path) -> None:
    src = _checkout(tmp_path / "checkout")
    out = tmp_path / "wheels"
    _pip("wheel", "--no-deps", "--wheel-dir", str(out), str(src), cwd=tmp_path)
    (wheel,) = out.glob("trading_readiness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "exporter/cli.py" in names and "exporter/catalog.yaml" in names
    assert not [n for n in names if n.startswith("sandbox/")], names
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    assert meta.get_all("Provides-Extra") == ["test", "sandbox"]
    assert f'trading-readiness-sandbox @ {(src / "sandbox").as_uri()} ; extra == "sandbox"' in meta.get_all(
        "Requires-Dist")
