"""The fleet at 10, 100 and 1,000 bots: what each bot costs its Prometheus shard and the central store.

One real bot's exposition (exporter and healer ``/metrics``, captured from a running sandbox with
production check intervals) is served for N bots by a few synthetic processes
(:mod:`bench.synthetic_exporter`; no bot processes). ``generate --fleet`` writes the configs for
two Prometheus collection shards (hashmod, the generated rules with production ``for:``, 15 s
scrapes, 5 s evaluation) that remote_write to a central VictoriaMetrics; one Alertmanager receives.
After every target is up and two scrape intervals have passed, a window is measured:

* series per bot (the shards' head series / N) and samples per scrape;
* CPU of each shard (psutil, over the window), split into rule evaluation (the groups'
  ``prometheus_rule_group_last_duration_seconds`` per evaluation interval) and the rest (scraping,
  remote_write, TSDB), and the shards' RSS;
* remote_write bytes per bot per second (``prometheus_remote_storage_bytes_total``);
* VictoriaMetrics' CPU and RSS.

From the 1,000-bot figures it computes how many bots one shard holds within a budget and how many
shards 10,000 bots need. Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from rules.fleetgen import generate
from sandbox.stack import ALERTMANAGER_NAMES, Proc, Stack, Timings, find_binary, free_port

#: 300 besides the three asked for: it places the knee between 100 and 1,000
SIZES = (10, 100, 300, 1000)
SHARDS = 2
WINDOW = 60.0
SCRAPE_SECONDS = 15.0
EVALUATION_SECONDS = 5.0
BOTS_PER_SERVER = 250
#: what one shard may use at steady state: a core of a 2-core host (queries, compaction and a
#: restart's WAL replay need the rest), 4 GiB, and half the evaluation interval for the rules
BUDGET = {"cpu_cores": 1.0, "rss_bytes": 4 * 2**30, "rule_seconds": EVALUATION_SECONDS / 2}
REPO = Path(__file__).resolve().parent.parent


def capture() -> tuple[str, str]:
    """The /metrics text of a real exporter and healer watching a healthy sandboxed bot."""
    with tempfile.TemporaryDirectory(prefix="bench-fleet-capture-") as tmp, \
            Stack(Path(tmp), timings=Timings(check_interval=15.0)) as st:
        bot = st.running[0]
        deadline = time.monotonic() + 90
        while bot.readiness() != "READY" and time.monotonic() < deadline:
            time.sleep(0.5)
        exporter = requests.get(f"{bot.exporter_url}/metrics", timeout=10).text
        healer = requests.get(f"{bot.healer_url}/metrics", timeout=10).text
    return exporter, healer


def scalar(text: str, name: str) -> float:
    """Sum of every sample of ``name`` in a /metrics text."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def rule_seconds(text: str) -> float:
    """A shard's rule evaluation seconds per evaluation interval: each group's last cycle scaled
    by how often it runs (the staleness group runs every 30 s, the others every 5 s)."""
    pattern = r'^prometheus_rule_group_{}\{{rule_group="([^"]+)"\}} (\S+)$'
    last = {g: float(v) for g, v in re.findall(pattern.format("last_duration_seconds"), text, re.M)}
    every = {g: float(v) for g, v in re.findall(pattern.format("interval_seconds"), text, re.M)}
    return sum(d * EVALUATION_SECONDS / every.get(g, EVALUATION_SECONDS) for g, d in last.items())


def own_metrics(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=10).text


def query(url: str, expr: str) -> float:
    r = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()["data"]["result"]
    return float(r[0]["value"][1]) if r else 0.0


class Fleet:
    """N synthetic bots, two shards, VictoriaMetrics and an Alertmanager under ``workdir``."""

    def __init__(self, workdir: Path, n: int, exporter: str, healer: str) -> None:
        self.workdir, self.n = workdir, n
        self.procs: list[Proc] = []
        self.servers: list[subprocess.Popen[str]] = []
        self.spec = workdir / "spec.json"
        self.spec.write_text(json.dumps({"exporter": exporter, "healer": healer}))
        self.shard_urls: list[str] = []
        self.vm: Proc | None = None

    def start(self) -> None:
        ports: list[list[int]] = []
        for i in range(math.ceil(self.n / BOTS_PER_SERVER)):
            count = min(BOTS_PER_SERVER, self.n - i * BOTS_PER_SERVER)
            spec = self.workdir / f"spec-{i}.json"
            spec.write_text(json.dumps({**json.loads(self.spec.read_text()), "bots": count}))
            proc = subprocess.Popen([sys.executable, "-m", "bench.synthetic_exporter", str(spec)], cwd=REPO,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
            self.servers.append(proc)
            assert proc.stdout is not None
            ports += json.loads(proc.stdout.readline())
        vm_port, am_port = free_port(), free_port()
        inventory = {
            "topology": {"shards": SHARDS, "victoriametrics_url": f"http://127.0.0.1:{vm_port}",
                         "config_dir": str(self.workdir / "fleet"),
                         "alertmanagers": [{"address": f"127.0.0.1:{am_port}", "cluster": f"127.0.0.1:{free_port()}"}],
                         "scrape_interval": f"{SCRAPE_SECONDS:g}s", "evaluation_interval": f"{EVALUATION_SECONDS:g}s"},
            "healer_token_file": str(self.workdir / "token"),
            "bots": [{"name": f"bot-{i:04d}", "env": "live" if i % 2 else "paper", "host": f"host-{i // 10:03d}",
                      "exporter": f"127.0.0.1:{e}", "healer": f"127.0.0.1:{h}"} for i, (e, h) in enumerate(ports)],
        }
        (self.workdir / "fleet.yaml").write_text(yaml.safe_dump(inventory))
        out = self.workdir / "fleet"
        generate(self.workdir / "fleet.yaml", out)
        logs = self.workdir / "logs"
        vm_bin, am_bin, prom_bin = (find_binary("victoria-metrics"), find_binary(*ALERTMANAGER_NAMES),
                                    find_binary("prometheus"))
        assert vm_bin and am_bin and prom_bin, "needs prometheus, prometheus-alertmanager and victoria-metrics"
        self.vm = self._spawn("vm", [vm_bin, f"-storageDataPath={self.workdir / 'vm'}", "-retentionPeriod=1d",
                                     f"-httpListenAddr=127.0.0.1:{vm_port}", "-loggerLevel=WARN"], logs)
        self._spawn("am", [am_bin, f"--config.file={out / 'alertmanager' / 'alertmanager.yml'}",
                           f"--storage.path={self.workdir / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                           "--cluster.listen-address="], logs)
        for i in range(SHARDS):
            port = free_port()
            self.shard_urls.append(f"http://127.0.0.1:{port}")
            self._spawn(f"shard-{i}", [prom_bin, f"--config.file={out / 'prometheus' / f'shard-{i}.yml'}",
                                       f"--storage.tsdb.path={self.workdir / f'tsdb-{i}'}",
                                       f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], logs)

    def _spawn(self, name: str, argv: list[str], logs: Path) -> Proc:
        proc = Proc(name, argv, logs / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def up(self) -> int:
        total = 0.0
        for url in self.shard_urls:
            with contextlib.suppress(requests.RequestException, ValueError, KeyError):
                total += query(url, 'count(up{job="trading-readiness"} == 1)')
        return int(total)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for server in self.servers:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def pid(self, name: str) -> int:
        proc = next(p for p in self.procs if p.name == name)
        assert proc.popen is not None
        return proc.popen.pid


def measure(n: int, exporter: str, healer: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-fleet-{n}-") as tmp:
        fleet = Fleet(Path(tmp), n, exporter, healer)
        try:
            fleet.start()
            deadline = time.monotonic() + 180
            while fleet.up() < n and time.monotonic() < deadline:
                time.sleep(1)
            if fleet.up() < n:
                raise RuntimeError(f"only {fleet.up()} of {n} exporters up after 180 s")
            time.sleep(2 * SCRAPE_SECONDS)  # every rule has run over full data, remote_write is flowing
            names = [f"shard-{i}" for i in range(SHARDS)] + ["vm"]
            procs = {name: psutil.Process(fleet.pid(name)) for name in names}
            cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
            texts0 = [own_metrics(u) for u in fleet.shard_urls]
            rw0 = [scalar(t, "prometheus_remote_storage_bytes_total") for t in texts0]
            missed0 = sum(scalar(t, "prometheus_rule_group_iterations_missed_total") for t in texts0)
            t0 = time.monotonic()
            time.sleep(WINDOW)
            elapsed = time.monotonic() - t0
            cpu = {k: (sum(p.cpu_times()[:2]) - cpu0[k]) / elapsed for k, p in procs.items()}
            rss = {k: p.memory_info().rss for k, p in procs.items()}
            load = os.getloadavg()[0]  # other work on the machine stretches every wall-clock figure
            texts = [own_metrics(u) for u in fleet.shard_urls]
            rw = [(scalar(t, "prometheus_remote_storage_bytes_total") - b) / elapsed
                  for t, b in zip(texts, rw0, strict=True)]
            rules = [rule_seconds(t) for t in texts]
            missed = sum(scalar(t, "prometheus_rule_group_iterations_missed_total") for t in texts) - missed0
            series = sum(scalar(t, "prometheus_tsdb_head_series") for t in texts)
            samples = query(fleet.shard_urls[0], 'avg(scrape_samples_scraped{job="trading-readiness"})')
            healer_samples = query(fleet.shard_urls[0], 'avg(scrape_samples_scraped{job="trading-healer"})')
            scrape_ms = 1000 * query(fleet.shard_urls[0], 'avg(scrape_duration_seconds{job="trading-readiness"})')
        finally:
            fleet.stop()
    shard_cpu = sum(cpu[f"shard-{i}"] for i in range(SHARDS))
    rule_cpu = sum(rules) / EVALUATION_SECONDS
    return {"n": n, "series_per_bot": series / n, "samples": samples, "healer_samples": healer_samples,
            "scrape_ms": scrape_ms, "shard_cpu": shard_cpu, "rule_cpu": rule_cpu,
            "rule_seconds_max": max(rules), "missed": missed,
            "shard_rss": sum(rss[f"shard-{i}"] for i in range(SHARDS)),
            "rw_bytes": sum(rw), "vm_cpu": cpu["vm"], "vm_rss": rss["vm"], "load": load}


def keeps_up(row: dict[str, Any]) -> bool:
    """The shards evaluated every rule cycle within the evaluation interval during the window."""
    return row["missed"] == 0 and row["rule_seconds_max"] <= EVALUATION_SECONDS


def capacity(rows: list[dict[str, Any]]) -> list[str]:
    """Bots per shard within BUDGET: the marginal cost per bot between the smallest run and the
    largest run whose rules kept up (past that the cost is not linear), capped by the first run
    that fell behind."""
    lo = rows[0]
    healthy = [r for r in rows if keeps_up(r)]
    hi = healthy[-1] if len(healthy) > 1 else rows[1]
    failed = next((r for r in rows if not keeps_up(r)), None)
    dn = hi["n"] - lo["n"]
    per_bot = {
        "cpu_cores": (hi["shard_cpu"] - lo["shard_cpu"]) / dn,
        "rss_bytes": (hi["shard_rss"] - lo["shard_rss"]) / dn,
        # a shard evaluates the rules for its own bots only: its cycle grows with its share
        "rule_seconds": (hi["rule_seconds_max"] - lo["rule_seconds_max"]) * SHARDS / dn,
    }
    limits = {k: BUDGET[k] / v if v > 0 else math.inf for k, v in per_bot.items()}
    binding = min(limits, key=lambda k: limits[k])
    per_shard = int(limits[binding])
    if failed is not None:
        per_shard = min(per_shard, failed["n"] // SHARDS - 1)
    units = {"cpu_cores": ("core", 1), "rss_bytes": ("MiB", 2**20), "rule_seconds": ("ms per 5 s cycle", 1e-3)}
    lines = [f"Marginal cost per bot between the {lo['n']:,}- and {hi['n']:,}-bot runs (the largest whose rules "
             "kept up) and the bots one shard holds within its budget:", "",
             "| resource | per bot | budget per shard | bots per shard |", "|---|---|---|---|"]
    for k, v in per_bot.items():
        unit, scale = units[k]
        lines.append(f"| {k} | {v / scale:.4g} {unit} | {BUDGET[k] / scale:g} {unit} | {limits[k]:,.0f} |")
    lines.append("")
    if failed is not None:
        lines.append(f"At {failed['n']:,} bots ({failed['n'] // SHARDS:,} per shard) the rules fell behind: a cycle "
                     f"took {failed['rule_seconds_max']:.1f} s for a {EVALUATION_SECONDS:g} s interval and "
                     f"{failed['missed']:.0f} evaluations were skipped in the window.")
    lines.append(f"The binding limit is **{binding}**: one shard holds about {per_shard:,} bots, so 10,000 bots "
                 f"need ceil(10,000 / {per_shard:,}) = **{math.ceil(10000 / max(per_shard, 1))} shards** at the "
                 "budget (twice that with each shard run as an HA pair).")
    return lines


def main() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a shard holds a connection per target
    exporter, healer = capture()
    rows = [measure(n, exporter, healer) for n in SIZES]
    lines = [
        f"`make bench` (`python -m bench.run fleet`): one bot's real exposition served for N bots, {SHARDS} "
        f"Prometheus shards (hashmod, the generated rules, {SCRAPE_SECONDS:g} s scrapes, {EVALUATION_SECONDS:g} s "
        f"evaluation) remote_writing to VictoriaMetrics; a {WINDOW:g} s window after two scrape intervals.",
        "",
        "| bots | series/bot | samples/scrape (exporter + healer) | scrape ms | shards CPU (cores) |"
        " rules (wall/interval) | rule cycle max (s) | missed cycles | shards RSS (MiB) |"
        " remote_write B/s per bot | VM CPU | VM RSS (MiB) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['series_per_bot']:.0f} | {r['samples']:.0f} + {r['healer_samples']:.0f} | "
                     f"{r['scrape_ms']:.1f} | {r['shard_cpu']:.3f} | {r['rule_cpu']:.3f} | "
                     f"{r['rule_seconds_max']:.3f} | {r['missed']:.0f} | {r['shard_rss'] / 2**20:.0f} | "
                     f"{r['rw_bytes'] / r['n']:.0f} | "
                     f"{r['vm_cpu']:.3f} | {r['vm_rss'] / 2**20:.0f} | {r['load']:.1f} |")
    lines += ["", *capacity(rows)]
    return "\n".join(lines)
