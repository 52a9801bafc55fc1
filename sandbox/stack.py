"""The whole loop on loopback: sandboxed bots, their exporters and healers, Prometheus, Alertmanager.

Why: the demo, the end-to-end tests and the end-to-end benchmark must drive the *same* real
chain -- a fault in a simulated bot becomes a failing point (exporter), an alert (Prometheus
rules from ``rules.generate``), a notification (Alertmanager, optionally an HA pair), a heal
(the healer running the sandbox's ``restart-daemon``) and READY again. Every server is a real
process (Debian's ``prometheus`` and ``prometheus-alertmanager``, ``trading-readiness serve`` and
``heal``) on 127.0.0.1 with free ports and a private work directory; :meth:`Stack.stop` kills
every process group it started, so nothing outlives it.

A small in-process webhook sink stands in for the pager, ticket and heartbeat receivers, so a
test can see what would have paged a human.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from . import layout
from .sandbox import Sandbox
from .stackconfig import prometheus_config, route_healers
from .stackprocs import Proc, Sink, StackError, find_binary, free_port

PROMETHEUS = "prometheus"
#: Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it alertmanager.
ALERTMANAGER_NAMES = ("prometheus-alertmanager", "alertmanager")
HTTP_TIMEOUT = 3.0

#: what the stack's users import from here (its parts live in stackprocs)
__all__ = ["ALERTMANAGER_NAMES", "HTTP_TIMEOUT", "PROMETHEUS", "Bot", "Proc", "Sink", "Stack", "StackError", "Timings",
           "find_binary", "free_port", "matches"]


@dataclass
class Bot:
    """One sandboxed bot with its own exporter and healer."""

    name: str
    sandbox: Sandbox
    exporter_port: int
    healer_port: int
    exporter: Proc | None = None
    healer: Proc | None = None

    @property
    def root(self) -> Path:
        return self.sandbox.root

    @property
    def instance(self) -> str:
        """The Prometheus ``instance`` label of this bot's exporter."""
        return f"127.0.0.1:{self.exporter_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.exporter_port}"

    @property
    def healer_url(self) -> str:
        return f"http://127.0.0.1:{self.healer_port}"

    def failure_points(self) -> dict[str, Any]:
        """The exporter's CONTRACT JSON (``/api/failure_points``); {} while it does not answer."""
        try:
            r = requests.get(f"{self.exporter_url}/api/failure_points", timeout=HTTP_TIMEOUT)
            return r.json() if r.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return {}

    def status(self, fp: str) -> str | None:
        return (self.failure_points().get("failure_points", {}).get(fp) or {}).get("status")

    def readiness(self) -> str | None:
        return self.failure_points().get("readiness")

    def heals(self) -> list[dict[str, Any]]:
        """The healer's ``/api/heals`` (newest first); [] while it does not answer."""
        try:
            r = requests.get(f"{self.healer_url}/api/heals", timeout=HTTP_TIMEOUT)
            body = r.json() if r.status_code == 200 else []
        except (requests.RequestException, ValueError):
            return []
        return body.get("heals", []) if isinstance(body, dict) else body if isinstance(body, list) else []

    def audit(self) -> list[dict[str, Any]]:
        """The healer's audit file (one JSON record per line)."""
        path = self.root / layout.HEAL_AUDIT
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@dataclass
class Timings:
    """How fast the loop turns. ``fast()`` for the demo and tests, ``default()`` like production."""

    scrape: str = "1s"
    evaluation: str = "1s"
    alert_for: str | None = "0s"
    notify: str | None = "1s"
    fast_sandbox: bool = True
    check_interval: float | None = None  # None: the sandbox's (1 s fast, else the exporter default 15 s)
    #: None: the sandbox's (5 s fast, else 300 s). A scenario that heals once sets it longer than
    #: the way from a heal to the resolved alert (check, scrape, rule, Alertmanager), so that a
    #: copy of the alert still firing meanwhile is a duplicate, as with production intervals
    heal_cooldown: float | None = None

    @classmethod
    def fast(cls) -> Timings:
        return cls()

    @classmethod
    def default(cls) -> Timings:
        """Production intervals: 15 s checks and scrapes, 5 s rule evaluation (as deploy/ ships), the
        rules' own ``for:`` and Alertmanager waits -- only the simulated daemon cycles fast so that it
        can be restarted and seen fresh."""
        return cls(scrape="15s", evaluation="5s", alert_for=None, notify=None, fast_sandbox=True,
                   check_interval=15.0)


@dataclass
class Stack:
    """Bots + Prometheus + one or two Alertmanagers, all on loopback under ``workdir``."""

    workdir: Path
    bots: Sequence[str] = ("bot",)
    alertmanagers: int = 1
    timings: Timings = field(default_factory=Timings)
    log: Callable[[str], None] = lambda msg: None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    prometheus_port: int = 0
    alertmanager_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.running: list[Bot] = []
        self.procs: list[Proc] = []
        self.sink: Sink | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Stack:
        binaries = self._binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.sink = Sink()
            self._launch(binaries)
            self._wait_up(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _binaries(self) -> dict[str, str]:
        """The servers' executables by role; a StackError names the Debian packages missing."""
        found = {"prometheus": find_binary(PROMETHEUS), "alertmanager": find_binary(*ALERTMANAGER_NAMES)}
        if None in found.values():
            raise StackError("prometheus and prometheus-alertmanager are needed (Debian: apt-get install "
                             "prometheus prometheus-alertmanager)")
        return {k: str(v) for k, v in found.items()}

    def _launch(self, binaries: dict[str, str]) -> None:
        for name in self.bots:
            self._start_bot(name)
        self._start_alertmanagers(binaries["alertmanager"])
        self._start_prometheus(binaries["prometheus"])

    def stop(self) -> None:
        """Stop Prometheus, Alertmanager, exporters, healers and sandboxes; safe to call twice."""
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        for bot in self.running:
            bot.sandbox.stop()
        self.running.clear()
        if self.sink is not None:
            self.sink.stop()
            self.sink = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cli(self, bot_root: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "exporter", "--bot-root", str(bot_root), *args]

    def _env(self, **extra: str) -> dict[str, str]:
        # the operator's own credentials never reach the sandboxed processes
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ALPACA", "APCA", "UW_", "TRADING_", "MAX_", "MIN_EXEC", "ENTRY_THRESHOLD",
                                    "COOLDOWN"))}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        return env

    def _start_bot(self, name: str) -> None:
        root = self.workdir / name
        sb = Sandbox(root, fast=self.timings.fast_sandbox)
        bot = Bot(name, sb, *self._bot_ports(name))
        self.running.append(bot)
        self.log(f"starting sandbox {name} in {root}")
        sb.start()
        self._tune(root)
        bot.exporter = self._spawn(f"exporter-{name}",
                                   self._cli(root, "serve", "--listen", f"127.0.0.1:{bot.exporter_port}"), cwd=root)
        bot.healer = self._spawn(f"healer-{name}",
                                 self._cli(root, "heal", "--listen", f"127.0.0.1:{bot.healer_port}"),
                                 cwd=root, env=self._env(TRADING_READINESS_HEALER_TOKEN=self.token))

    def _bot_ports(self, name: str) -> tuple[int, int]:
        """The next bot's exporter and healer ports (a fleet picks them to spread bots over shards)."""
        return free_port(), free_port()

    def _tune(self, root: Path) -> None:
        """Adjust a started bot's config before its exporter reads it."""
        if self.timings.check_interval is not None:
            self._set_check_interval(root, self.timings.check_interval)
        if self.timings.heal_cooldown is not None:
            path = root / "trading-readiness.yaml"
            cfg = yaml.safe_load(path.read_text()) or {}
            for spec in cfg.get("healers", {}).values():
                spec["cooldown_seconds"] = self.timings.heal_cooldown
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    @staticmethod
    def _set_check_interval(root: Path, interval: float) -> None:
        """Production-like checks: one interval for every point, the production freshness limits."""
        path = root / "trading-readiness.yaml"
        cfg = yaml.safe_load(path.read_text()) or {}
        cfg["exporter"] = {"default_interval_seconds": interval}
        cfg.pop("checks", None)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.workdir / "logs" / f"{name}.log", env=env or self._env(), cwd=cwd).start()
        self.procs.append(proc)
        return proc

    def _start_alertmanagers(self, binary: str) -> None:
        from rules.generate import render_stack

        token_file = self.workdir / "healer_token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        assert self.sink is not None
        files = render_stack(scrape_interval=self.timings.scrape, alert_for=self.timings.alert_for,
                             webhook_base_url=self.sink.url, healer_url=f"{self.running[0].healer_url}/alertmanager",
                             healer_token_file=token_file, notify_interval=self.timings.notify)
        rules_dir = self.workdir / "rules"
        rules_dir.mkdir(exist_ok=True)
        (rules_dir / "trading-readiness.rules.yml").write_text(files["trading-readiness.rules.yml"])
        am_cfg = route_healers(yaml.safe_load(files["alertmanager.yml"]), self.running)
        am_file = self.workdir / "alertmanager.yml"
        am_file.write_text(yaml.safe_dump(am_cfg, sort_keys=False))
        self.alertmanager_ports = [free_port() for _ in range(self.alertmanagers)]
        cluster = [free_port() for _ in range(self.alertmanagers)] if self.alertmanagers > 1 else []
        for i, port in enumerate(self.alertmanager_ports):
            argv = [binary, f"--config.file={am_file}", f"--storage.path={self.workdir / f'alertmanager-{i}'}",
                    f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url=http://127.0.0.1:{port}"]
            if cluster:
                argv += [f"--cluster.listen-address=127.0.0.1:{cluster[i]}",
                         f"--cluster.advertise-address=127.0.0.1:{cluster[i]}",
                         # short peer timeout: the second peer's copy follows within seconds (the
                         # healer deduplicates it), instead of 15 s later
                         "--cluster.peer-timeout=2s", "--cluster.gossip-interval=100ms",
                         "--cluster.pushpull-interval=2s"]
                argv += [f"--cluster.peer=127.0.0.1:{c}" for j, c in enumerate(cluster) if j != i]
            else:
                argv.append("--cluster.listen-address=")
            self._spawn(f"alertmanager-{i}", argv)

    def _start_prometheus(self, binary: str) -> None:
        self.prometheus_port = free_port()
        cfg = prometheus_config(self.running, self.alertmanager_ports, self.workdir / "rules",
                                self.timings.scrape, self.timings.evaluation)
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        resend = "1s" if self.timings.notify else "1m"
        self._spawn("prometheus", [binary, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                                   f"--rules.alert.resend-delay={resend}", "--log.level=warn"])

    def ready_urls(self) -> list[str]:
        """What must answer 200 before the stack is up."""
        urls = [f"{b.exporter_url}/-/ready" for b in self.running] + [f"{b.healer_url}/-/healthy" for b in self.running]
        urls += [f"http://127.0.0.1:{p}/-/ready" for p in self.alertmanager_ports]
        urls.append(f"{self.prometheus_url}/-/ready")
        return urls

    def _wait_up(self, timeout: float) -> None:
        urls = self.ready_urls()
        deadline = time.monotonic() + timeout
        pending = list(urls)
        while pending and time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise StackError(f"{proc.name} exited: {proc.tail() or 'no output'} (log {proc.log})")
            pending = [u for u in pending if not _ok(u)]
            if pending:
                time.sleep(0.2)
        if pending:
            raise StackError(f"not ready within {timeout:.0f} s: {', '.join(pending)} "
                             f"(logs in {self.workdir / 'logs'})")

    # --- queries ---------------------------------------------------------------------------------
    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.alertmanager_ports]

    def bot(self, name: str) -> Bot:
        for b in self.running:
            if b.name == name:
                return b
        raise KeyError(name)

    def prometheus_alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        """Prometheus ``/api/v1/alerts`` in ``state`` (firing or pending)."""
        try:
            r = requests.get(f"{self.prometheus_url}/api/v1/alerts", timeout=HTTP_TIMEOUT)
            alerts = r.json()["data"]["alerts"]
        except (requests.RequestException, ValueError, KeyError):
            return []
        return [a for a in alerts if a.get("state") == state]

    def alertmanager_alerts(self, index: int = 0) -> list[dict[str, Any]]:
        """Active alerts held by one Alertmanager (``/api/v2/alerts``)."""
        try:
            r = requests.get(f"{self.alertmanager_urls[index]}/api/v2/alerts", timeout=HTTP_TIMEOUT,
                             params={"active": "true", "silenced": "false", "inhibited": "true"})
            body = r.json()
        except (requests.RequestException, ValueError):
            return []
        return body if isinstance(body, list) else []

    def live(self) -> bool:
        """Prometheus holds every bot's readiness and Alertmanager the Watchdog: alerts can flow."""
        have = {r["metric"].get("instance") for r in self.query("trading:readiness:status")}
        return all(b.instance in have for b in self.running) and \
            any(matches(a, alertname="Watchdog") for a in self.alertmanager_alerts())

    def rules(self) -> list[dict[str, Any]]:
        """Prometheus ``/api/v1/rules`` groups."""
        try:
            r = requests.get(f"{self.prometheus_url}/api/v1/rules", timeout=HTTP_TIMEOUT)
            return list(r.json()["data"]["groups"])
        except (requests.RequestException, ValueError, KeyError):
            return []

    def query(self, expr: str) -> list[dict[str, Any]]:
        try:
            r = requests.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=HTTP_TIMEOUT)
            return list(r.json()["data"]["result"])
        except (requests.RequestException, ValueError, KeyError):
            return []

    def urls(self) -> Iterator[tuple[str, str]]:
        for b in self.running:
            yield f"exporter {b.name}", f"{b.exporter_url}/  (/metrics, /api/failure_points)"
            yield f"healer {b.name}", f"{b.healer_url}/api/heals"
            yield f"sandbox {b.name}", f"{b.sandbox.admin_url}/faults  (bot root {b.root})"
        yield "prometheus", f"{self.prometheus_url}/alerts"
        for i, url in enumerate(self.alertmanager_urls):
            yield f"alertmanager {i}" if len(self.alertmanager_urls) > 1 else "alertmanager", f"{url}/#/alerts"


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=HTTP_TIMEOUT).status_code == 200
    except requests.RequestException:
        return False


def matches(alert: dict[str, Any], **labels: str) -> bool:
    have = alert.get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


