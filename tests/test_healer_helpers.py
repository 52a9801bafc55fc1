"""Helpers for the healer tests: a bot root with real action scripts and a running receiver."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from exporter.core.config import load as load_config
from healers.receiver import Healer
from healers.server import HealerServer
from sandbox.botroot import BotRoot

from .conftest import wait_for
from .prom import free_port as free_port  # re-exported for the healer tests

TOKEN = "s3cret-token-for-tests"  # noqa: S105
REPO = Path(__file__).resolve().parent.parent


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class HealBot:
    """A healthy bot root plus action scripts that record every run in ``runs.log``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bot = BotRoot(tmp / "bot").healthy()
        self.root = self.bot.path
        self.runs = tmp / "runs.log"
        self.weights = self.root / "state/signal_weights.json"
        self.backup = tmp / "weights.good.json"
        shutil.copy(self.weights, self.backup)
        # a real re-initialisation: restores the weights, so verification can prove it worked
        self.fix = script(tmp / "fix_weights.sh", f"""
            echo "fix $$" >> {self.runs}
            cp {self.backup} {self.weights}
        """)
        self.ok = script(tmp / "ok.sh", f'echo "ok $$" >> {self.runs}\n')
        self.fail = script(tmp / "fail.sh", f'echo "fail $$" >> {self.runs}\necho broken >&2\nexit 1\n')
        self.hang = script(tmp / "hang.sh", f"""
            echo "hang $$" >> {self.runs}
            sleep 600 &
            echo $! > {tmp / "child.pid"}
            wait
        """)

        # waits until the test writes release.<name> (or release.all): proves what runs while it runs.
        # At start it writes down how many blocking actions were live (started minus done: this
        # can undercount a race, never overcount), so a cap that was exceeded would show.
        self.block = script(tmp / "block.sh", f"""
            cd {tmp}
            echo "block $1 $$" >> {self.runs}
            : > started.$1
            echo $(( $(ls started.* | wc -l) - $(ls done.* 2>/dev/null | wc -l) )) >> live.log
            while [ ! -e release.$1 ] && [ ! -e release.all ]; do sleep 0.02; done
            : > done.$1
        """)

    def started(self) -> set[str]:
        """Names of the blocking actions that have started (their process exists or existed)."""
        return {p.name.split(".", 1)[1] for p in self.tmp.glob("started.*")}

    def done(self) -> set[str]:
        return {p.name.split(".", 1)[1] for p in self.tmp.glob("done.*")}

    def release(self, name: str) -> None:
        (self.tmp / f"release.{name}").write_text("")

    def max_live(self) -> int:
        """The most blocking actions any of them saw running at once (itself included)."""
        return max(map(int, (self.tmp / "live.log").read_text().split()), default=0)

    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def break_weights(self) -> None:
        data = json.loads(self.weights.read_text())
        data["entry_weights"]["weight_bands"].pop("options_flow")
        self.weights.write_text(json.dumps(data))

    def config(self, healers: dict[str, Any], **healer: Any) -> Path:
        cfg = {"healer": {"verify_interval_seconds": 0.2, "verify_timeout_seconds": 3, **healer},
               "healers": healers}
        path = self.tmp / "trading-readiness.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path


def alert(fp: str | None = "FP-2.1", status: str = "firing", fingerprint: str = "a1b2c3d4e5f60718",
          starts_at: str = "2026-11-25T10:00:00Z", **labels: str) -> dict[str, Any]:
    lab = {"alertname": "TradingFailurePoint", "severity": "critical", **labels}
    if fp is not None:
        lab["fp"] = fp
    return {"status": status, "labels": lab, "annotations": {"summary": "x"}, "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": fingerprint}


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    st = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    return {"version": "4", "groupKey": "{}:{alertname=\"TradingFailurePoint\"}", "truncatedAlerts": 0,
            "status": st, "receiver": "healer", "groupLabels": {"alertname": "TradingFailurePoint"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
            "alerts": list(alerts)}


class Running:
    def __init__(self, healer: Healer, server: HealerServer) -> None:
        self.healer = healer
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(self, body: Any, token: str | None = TOKEN, timeout: float = 10) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(self.url + "/alertmanager", data=data, headers=headers, timeout=timeout)

    def deliver(self, body: Any, token: str | None = TOKEN, timeout: float = 15) -> list[str]:
        """POST one delivery (answered 200) and wait until the receiver has decided it: every
        alert's decision, as ``/api/heals?delivery=N`` reports it."""
        return deliver(self.url, body, token, timeout)

    def metric(self, name: str, **labels: str) -> float | None:
        text = requests.get(self.url + "/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if not labels and line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
            if line.startswith(name + "{"):
                got = line[len(name) + 1:line.index("}")]
                if ",".join(sorted(got.split(","))) == want:
                    return float(line.rsplit(" ", 1)[1])
        return None

    def heals(self) -> list[dict[str, Any]]:
        return requests.get(self.url + "/api/heals", timeout=5).json()["heals"]  # type: ignore[no-any-return]


def decisions(url: str, seq: int, timeout: float = 15) -> list[str]:
    """The decisions of delivery ``seq`` once the receiver at ``url`` has made them all."""
    def decided() -> tuple[list[str]] | None:
        view = requests.get(f"{url}/api/heals", params={"delivery": seq}, timeout=5).json()
        return (view["decisions"],) if view["state"] == "decided" else None

    return wait_for(decided, timeout=timeout, what=f"delivery {seq} decided", every=0.01)[0]  # type: ignore[no-any-return]


def deliver(url: str, body: Any, token: str | None = TOKEN, timeout: float = 15) -> list[str]:
    """POST one delivery to the receiver at ``url``, expect 200, and return its decisions once made."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = requests.post(url + "/alertmanager", data=data, headers=headers, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return decisions(url, resp.json()["delivery"], timeout)


@contextmanager
def receiver(hb: HealBot, config: Path, token: str | None = TOKEN, dry_run: bool = False,
             short_path: bool = True) -> Iterator[Running]:
    """An in-process receiver on a free loopback port; stopped (and its actions killed) after."""
    healer = Healer(load_config(str(config), str(hb.root)), token, dry_run=dry_run)
    server = HealerServer(("127.0.0.1", 0), healer, short_path=short_path)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield Running(healer, server)
    finally:
        server.shutdown()
        healer.stop()
        server.server_close()


def wait_idle(r: Running, timeout: float = 15) -> None:
    """Until every acknowledged delivery is decided and no action is queued or running (the
    answer waits for neither)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = r.healer.policy.snapshot()
        decided = not r.healer.journal.pending and r.healer.inbox.empty()
        if decided and r.healer.queue.empty() and not any(s["running"] for s in snap.values()):
            return
        time.sleep(0.05)
    raise AssertionError("healer did not become idle")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def start_heal_cli(hb: HealBot, config: Path, port: int, *extra: str, token: str | None = TOKEN
                   ) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADING_", "ALPACA", "APCA", "UW_"))}
    if token is not None:
        env["TRADING_READINESS_HEALER_TOKEN"] = token
    return subprocess.Popen([sys.executable, "-m", "exporter", "--config", str(config), "--bot-root", str(hb.root),
                             "heal", "--listen", f"127.0.0.1:{port}", *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
