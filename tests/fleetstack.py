"""A fleet on loopback, built from ``generate --fleet`` output: sandboxed bots with their exporters
and healers, two (or more) Prometheus collection shards, a central VictoriaMetrics and a clustered
Alertmanager pair.

It extends :class:`sandbox.stack.Stack` (the bots, their exporters and healers, the webhook sink,
process groups and teardown are the single-Prometheus stack's own): the difference is that every
Prometheus and Alertmanager file comes from :mod:`rules.fleetgen` rendering an inventory written
for the running bots, and that VictoriaMetrics can be stopped and started again on the same
storage to prove that alerting never depends on it and that the shards backfill what it missed.
"""

from __future__ import annotations

import json
import random
import shlex
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from rules.fleet import Fleet, hashmod
from rules.fleetgen import generate
from rules.generate import stack_overrides
from sandbox.stack import (
    HTTP_TIMEOUT,
    Proc,
    Stack,
    StackError,
    find_binary,
    free_port,
    matches,
)

VICTORIA_METRICS = "victoria-metrics"
#: Alertmanager gossip tuned for a test: the second peer's copy follows within seconds, not 15 s
FAST_GOSSIP = ["--cluster.peer-timeout=2s", "--cluster.gossip-interval=100ms", "--cluster.pushpull-interval=2s"]


def listen_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768-60999): a port the kernel handed
    out for a moment may be taken by any outgoing connection before the server binds it, one
    picked here only by another listener."""
    for _ in range(200):
        port = random.randrange(20000, 32700)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def query(base: str, expr: str, **params: Any) -> list[dict[str, Any]]:
    """A PromQL instant query against Prometheus or VictoriaMetrics; [] while it does not answer."""
    try:
        r = requests.get(f"{base}/api/v1/query", params={"query": expr, **params}, timeout=HTTP_TIMEOUT)
        return list(r.json()["data"]["result"])
    except (requests.RequestException, ValueError, KeyError):
        return []


@dataclass
class FleetStack(Stack):
    """Bots + ``shards`` Prometheus shards + VictoriaMetrics + an Alertmanager cluster, on loopback."""

    shards: int = 2
    alertmanagers: int = 2
    shard_ports: list[int] = field(default_factory=list)
    vm_port: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fleet: Fleet | None = None
        self.vm: Proc | None = None
        self.out = self.workdir / "fleet"
        self._ports: dict[str, tuple[int, int]] = {}

    # --- lifecycle -------------------------------------------------------------------------------
    def _binaries(self) -> dict[str, str]:
        found = find_binary(VICTORIA_METRICS)
        if found is None:
            raise StackError("victoria-metrics is needed (Debian: apt-get install victoria-metrics)")
        return {**super()._binaries(), "victoria-metrics": found}

    def _launch(self, binaries: dict[str, str]) -> None:
        self._ports = {name: self._balanced_ports(i) for i, name in enumerate(self.bots)}
        # the sandboxes start side by side: each waits for its simulated daemon's first cycle
        with ThreadPoolExecutor(len(self.bots)) as pool:
            list(pool.map(self._start_bot, self.bots))
        self.running.sort(key=lambda b: list(self.bots).index(b.name))
        self._generate()
        self.vm = self._spawn("victoria-metrics", self._vm_argv(binaries["victoria-metrics"]))
        self._start_alertmanagers(binaries["alertmanager"])
        self._start_prometheus(binaries["prometheus"])

    def stop(self) -> None:
        """Everything the stack started, side by side (each process group gets its own grace)."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: p.stop(), self.procs))
            self.procs.clear()
            list(pool.map(lambda b: b.sandbox.stop(), self.running))
            self.running.clear()
        super().stop()

    def _bot_ports(self, name: str) -> tuple[int, int]:
        return self._ports[name]

    def _tune(self, root: Path) -> None:
        """Six fast sandboxes share a loaded machine: a daemon or bot cycle late by a few seconds
        is load, not a fault, so the fleet's freshness limits are 15/20 s instead of 5/8 s (a
        killed daemon is still seen at once: FP-1.1 watches the process)."""
        super()._tune(root)
        path = root / "trading-readiness.yaml"
        cfg = yaml.safe_load(path.read_text()) or {}
        checks = cfg.setdefault("checks", {})
        for fp, params in (("FP-1.3", {"open_warn_seconds": 15, "open_error_seconds": 20}),
                           ("FP-1.10", {"open_warn_seconds": 15}),
                           ("FP-6.3", {"warn_seconds": 15, "error_seconds": 20})):
            checks.setdefault(fp, {}).setdefault("params", {}).update(params)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def _balanced_ports(self, index: int) -> tuple[int, int]:
        """Exporter ports chosen so that hashmod deals the bots round-robin over the shards: a shard
        without a bot would fire its exporter-absent alert for the whole test."""
        want = index % self.shards
        for _ in range(1000):
            port = listen_port()
            if hashmod(f"127.0.0.1:{port}", self.shards) == want:
                return port, listen_port()
        raise StackError("no free port hashes to the wanted shard")

    def _inventory(self) -> dict[str, Any]:
        self.vm_port = listen_port()
        self.alertmanager_ports = [listen_port() for _ in range(self.alertmanagers)]
        return {
            "topology": {
                "shards": self.shards, "victoriametrics_url": self.vm_url, "config_dir": str(self.out),
                "alertmanagers": [{"address": f"127.0.0.1:{p}", "cluster": f"127.0.0.1:{listen_port()}"}
                                  for p in self.alertmanager_ports],
                "scrape_interval": self.timings.scrape, "evaluation_interval": self.timings.evaluation},
            "healer_token_file": str(self.workdir / "healer_token"),
            "bots": [{"name": b.name, "env": "live" if i % 3 == 2 else "paper", "host": f"host-{i // 2}",
                      "exporter": b.instance, "healer": f"127.0.0.1:{b.healer_port}"}
                     for i, b in enumerate(self.running)],
        }

    def _generate(self) -> None:
        token_file = self.workdir / "healer_token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        inventory = self.workdir / "fleet.yaml"
        inventory.write_text(yaml.safe_dump(self._inventory(), sort_keys=False))
        assert self.sink is not None
        overrides = stack_overrides(scrape_interval=self.timings.scrape, alert_for=self.timings.alert_for,
                                    webhook_base_url=self.sink.url, notify_interval=self.timings.notify)
        self.fleet = generate(inventory, self.out, overrides)

    def _vm_argv(self, binary: str) -> list[str]:
        return [binary, f"-storageDataPath={self.workdir / 'victoria-metrics'}", "-retentionPeriod=1d",
                f"-httpListenAddr=127.0.0.1:{self.vm_port}", "-loggerLevel=WARN",
                # answer with what was just written (the default hides the last 30 s) and never
                # from a cache filled before the backfill arrived
                "-search.latencyOffset=0s", "-search.disableCache"]

    def _start_alertmanagers(self, binary: str) -> None:
        for i, port in enumerate(self.alertmanager_ports):
            args = (self.out / "alertmanager" / f"peer-{i}.args").read_text()
            line = next(x for x in args.splitlines() if x.startswith("ARGS="))
            argv = [binary, f"--config.file={self.out / 'alertmanager' / 'alertmanager.yml'}",
                    f"--storage.path={self.workdir / f'alertmanager-{i}'}", f"--web.listen-address=127.0.0.1:{port}",
                    f"--web.external-url=http://127.0.0.1:{port}", *shlex.split(line[len("ARGS="):])[0].split(),
                    *FAST_GOSSIP]
            self._spawn(f"alertmanager-{i}", argv)

    def _start_prometheus(self, binary: str) -> None:
        self.shard_ports = [listen_port() for _ in range(self.shards)]
        self.prometheus_port = self.shard_ports[0]
        resend = "1s" if self.timings.notify else "1m"
        for i, port in enumerate(self.shard_ports):
            self._spawn(f"prometheus-shard-{i}", [
                binary, f"--config.file={self.out / 'prometheus' / f'shard-{i}.yml'}",
                f"--storage.tsdb.path={self.workdir / f'tsdb-{i}'}", f"--web.listen-address=127.0.0.1:{port}",
                f"--rules.alert.resend-delay={resend}", "--log.level=warn"])

    def ready_urls(self) -> list[str]:
        return [*super().ready_urls(), *(f"{u}/-/ready" for u in self.shard_urls), f"{self.vm_url}/health"]

    def stop_vm(self) -> None:
        assert self.vm is not None
        self.vm.stop()

    def start_vm(self) -> None:
        """VictoriaMetrics again, on the same port and storage."""
        assert self.vm is not None
        self.vm.start()

    # --- queries ---------------------------------------------------------------------------------
    @property
    def shard_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.shard_ports]

    @property
    def vm_url(self) -> str:
        return f"http://127.0.0.1:{self.vm_port}"

    def vm_up(self) -> bool:
        try:
            return requests.get(f"{self.vm_url}/health", timeout=HTTP_TIMEOUT).status_code == 200
        except requests.RequestException:
            return False

    def shard_query(self, expr: str) -> list[dict[str, Any]]:
        """``expr`` on every shard, results together (each bot lives on exactly one)."""
        return [r for url in self.shard_urls for r in query(url, expr)]

    def vm_query(self, expr: str) -> list[dict[str, Any]]:
        return query(self.vm_url, expr)

    def prometheus_alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        out = []
        for url in self.shard_urls:
            try:
                alerts = requests.get(f"{url}/api/v1/alerts", timeout=HTTP_TIMEOUT).json()["data"]["alerts"]
            except (requests.RequestException, ValueError, KeyError):
                continue
            out += [a for a in alerts if a.get("state") == state]
        return out

    def shard_targets(self, index: int, job: str) -> set[str]:
        """The bots a shard scrapes for ``job`` (its active targets' ``bot`` labels)."""
        try:
            r = requests.get(f"{self.shard_urls[index]}/api/v1/targets", params={"state": "active"},
                             timeout=HTTP_TIMEOUT)
            targets = r.json()["data"]["activeTargets"]
        except (requests.RequestException, ValueError, KeyError):
            return set()
        return {t["labels"].get("bot", "") for t in targets if t["labels"].get("job") == job}

    def live(self) -> bool:
        """Every bot's readiness recorded on its shard and the Watchdog in both Alertmanagers."""
        have = {r["metric"].get("bot") for r in self.shard_query("trading:readiness:status")}
        return all(b.name in have for b in self.running) and all(
            any(matches(a, alertname="Watchdog") for a in self.alertmanager_alerts(i))
            for i in range(len(self.alertmanager_ports)))

    def vm_samples(self, metric: str, start: float, end: float) -> dict[str, list[float]]:
        """{bot: [sample timestamps in seconds]} VictoriaMetrics holds for ``metric`` in [start, end]."""
        try:
            r = requests.get(f"{self.vm_url}/api/v1/export", params={"match[]": metric, "start": f"{start:.3f}",
                                                                     "end": f"{end:.3f}"}, timeout=10)
        except requests.RequestException:
            return {}
        out: dict[str, list[float]] = {}
        for line in r.text.splitlines() if r.status_code == 200 else []:
            series = json.loads(line)
            out.setdefault(series["metric"].get("bot", ""), []).extend(t / 1000 for t in series["timestamps"])
        return out


def dashboard_queries(repo: Path) -> list[str]:
    """The fleet dashboard's PromQL with its variables set to "every bot" (``$bot`` -> ``.*``)."""
    exprs: list[str] = []
    for path in sorted((repo / "grafana" / "dashboards").glob("*fleet*.json")):
        panels = json.loads(path.read_text()).get("panels", [])
        for panel in [*panels, *(p for row in panels for p in row.get("panels", []))]:
            exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    if not exprs:
        raise FileNotFoundError(f"no fleet dashboard with queries in {repo / 'grafana' / 'dashboards'}")
    subst = {"${bot:regex}": ".*", "${env:regex}": ".*", "$bot": ".*", "$env": ".*", "$__rate_interval": "1m",
             "$__interval": "1m", "$__range": "5m"}
    out = []
    for e in exprs:
        for k, v in subst.items():
            e = e.replace(k, v)
        out.append(e)
    return out
