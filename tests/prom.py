"""Real servers for the integration tests: a Debian Prometheus in a temp dir, and stopping a
server process without leaving it behind."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Prometheus:
    """Prometheus in a temp dir: 1 s scrape and rule evaluation of one exporter target, with the
    given rule files."""

    def __init__(self, tmp: Path, target: str, rule_files: list[Path] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files or []],
            "scrape_configs": [{"job_name": "trading-readiness", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = tmp / "prometheus.log"
        self._err = open(self.log, "wb")  # noqa: SIM115 (lives as long as the process; closed in stop())
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback http built above)
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, str]]:
        return [a["labels"] for a in self.api("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:  # noqa: S310
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self._err.close()
