"""The deployments agree with each other: docker-compose.yml, deploy/ units and the generated configs.

``docker-compose config -q`` must accept the compose file; then the resolved compose model is
read and held to the same rules as the systemd units: loopback-only ports, the bot root
read-only except logs/ (and data/ for the exporter), the same listen ports and job names as the
rules, the healer token as a secret shared by Alertmanager and the healer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules import deploy as deploygen
from rules import generate as rulegen

from .conftest import REPO, clean_env

COMPOSE = shutil.which("docker-compose")
UNITS = REPO / "deploy"


def _compose_model(bot_root: Path) -> dict[str, Any]:
    env = clean_env(BOT_ROOT=str(bot_root), BOT_UID="1000", BOT_GID="1000")
    r = subprocess.run([COMPOSE or "docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(yaml.safe_load(r.stdout))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; make system-deps)")
    return _compose_model(tmp_path_factory.mktemp("bot"))


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; make system-deps)")
    r = subprocess.run([COMPOSE, "-f", str(REPO / "docker-compose.yml"), "config", "-q"], cwd=REPO,
                       capture_output=True, text=True, timeout=60,
                       env=clean_env(BOT_ROOT=str(tmp_path), BOT_UID="1000", BOT_GID="1000"))
    assert r.returncode == 0, r.stderr


def test_compose_has_its_services_and_publishes_only_on_loopback(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {"exporter", "healer", "prometheus", "alertmanager", "alertmanager-2", "grafana"}
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    for name, ports in published.items():
        assert ports, f"{name} publishes nothing"
        for port in ports:
            assert _published(port)[0] == "127.0.0.1", (name, port)


def _published(port: Any) -> tuple[str, int]:
    """(host ip, container port) of a ports entry, long or short syntax."""
    if isinstance(port, dict):
        return str(port.get("host_ip")), int(port["target"])
    host_ip, _, rest = str(port).split(":", 2)
    return host_ip, int(rest.split("/")[0])


def _binds(svc: dict[str, Any]) -> dict[str, bool]:
    """target -> read_only of every bind mount."""
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, dict) and v.get("type") == "bind":
            out[v["target"]] = bool(v.get("read_only"))
        elif isinstance(v, str) and v.startswith("/"):  # short syntax: source:target[:mode]
            parts = v.split(":")
            out[parts[1]] = len(parts) > 2 and "ro" in parts[2].split(",")
    return out


def _unit(name: str) -> str:
    return (UNITS / name).read_text()


def test_bot_root_is_read_only_except_what_the_systemd_units_allow(model: dict[str, Any], tmp_path: Path) -> None:
    services = model["services"]
    for name, unit in (("exporter", "trading-readiness-exporter.service"),
                       ("healer", "trading-readiness-healer.service")):
        svc = services[name]
        root = svc["working_dir"]
        binds = {t: ro for t, ro in _binds(svc).items() if t.startswith(root)}
        assert binds[root] is True, f"{name}: the bot root must be mounted read-only"
        writable = sorted(t.removeprefix(root).strip("/") for t, ro in binds.items() if not ro)
        unit_rw = re.search(r"^ReadWritePaths=(.*)$", _unit(unit), re.M)
        assert unit_rw is not None
        unit_writable = sorted(Path(p).name for p in unit_rw.group(1).split())
        assert writable == unit_writable, f"{name}: compose writes {writable}, the unit {unit_writable}"
        assert svc["pid"] == "host" and svc["user"] == "1000:1000" and svc.get("read_only") is True
        assert svc["environment"]["TRADING_READINESS_BOT_ROOT"] == root


def test_listen_ports_and_jobs_agree_with_units_rules_and_prometheus(model: dict[str, Any]) -> None:
    services = model["services"]
    for name, unit, port in (("exporter", "trading-readiness-exporter.service", deploygen.EXPORTER_PORT),
                             ("healer", "trading-readiness-healer.service", deploygen.HEALER_PORT)):
        assert f"--listen 127.0.0.1:{port}" in _unit(unit), f"{unit} does not listen on {port}"
        command = " ".join(services[name].get("command") or services[name].get("entrypoint") or [])
        assert f"--listen 0.0.0.0:{port}" in command, command  # inside the container; published on loopback
        assert any(_published(p) == ("127.0.0.1", port) for p in services[name]["ports"])
    for rel, exporter, healer in (("deploy/prometheus.yml", "127.0.0.1:9870", "127.0.0.1:9871"),
                                  ("deploy/compose/prometheus.yml", "exporter:9870", "healer:9871")):
        prom = yaml.safe_load((REPO / rel).read_text())
        jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
        assert jobs == {rulegen.CONFIG["exporter_job"]: [exporter], rulegen.CONFIG["healer_job"]: [healer]}, rel
        assert prom["global"]["scrape_interval"] == rulegen.CONFIG["scrape_interval"]


def test_healer_token_is_a_secret_shared_by_alertmanager_and_the_healer(model: dict[str, Any]) -> None:
    services = model["services"]
    for name in ("healer", "alertmanager", "alertmanager-2"):
        assert any((s if isinstance(s, str) else s.get("source")) == "healer_token"
                   for s in services[name].get("secrets", [])), name
    entry = " ".join(services["healer"]["entrypoint"])
    assert "/run/secrets/healer_token" in entry and "TRADING_READINESS_HEALER_TOKEN" in entry
    am = yaml.safe_load((REPO / "deploy/compose/alertmanager.yml").read_text())
    healer = next(r for r in am["receivers"] if r["name"] == "healer")["webhook_configs"][0]
    assert healer["url"] == f"http://healer:{deploygen.HEALER_PORT}/alertmanager"
    assert healer["http_config"]["authorization"]["credentials_file"] == "/run/secrets/healer_token"
    for svc in services.values():  # no secret value is ever inlined
        assert "TRADING_READINESS_HEALER_TOKEN" not in (svc.get("environment") or {})


def test_grafana_is_provisioned_with_the_generated_dashboards(model: dict[str, Any]) -> None:
    grafana = model["services"]["grafana"]
    binds = _binds(grafana)
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/trading-readiness.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert binds.get(path) is True, f"dashboards must be mounted read-only at {path}"
    assert binds.get("/etc/grafana/provisioning/datasources") is True
    assert binds.get("/etc/grafana/provisioning/dashboards") is True
    assert list((REPO / "grafana/dashboards").glob("*.json"))
    datasource = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"  # the compose service name
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "grafana/dashboards" / Path(home).name).exists()


@pytest.mark.parametrize("rel", ["deploy/prometheus.yml", "deploy/compose/prometheus.yml"])
def test_prometheus_configs_pass_promtool(rel: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    r = subprocess.run([promtool, "check", "config", str(REPO / rel)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_alertmanager_config_passes_amtool() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    r = subprocess.run([amtool, "check-config", str(REPO / "deploy/compose/alertmanager.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_deploy_configs_have_not_drifted() -> None:
    for rel, text in deploygen.artefacts().items():
        assert (REPO / rel).read_text() == text, f"{rel} drifted: run make generate"


def test_dockerfile_installs_the_package_and_never_runs_as_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install --no-cache-dir \.", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("0", "root"))
    for pkg in ("exporter", "healers", "grafana"):
        assert f"COPY {pkg} ./{pkg}" in text


def test_compose_alertmanagers_are_one_cluster_and_prometheus_sends_to_both(model: dict[str, Any]) -> None:
    services = model["services"]
    for me, peer in (("alertmanager", "alertmanager-2"), ("alertmanager-2", "alertmanager")):
        command = services[me]["command"]
        assert "--cluster.listen-address=0.0.0.0:9094" in command and f"--cluster.peer={peer}:9094" in command
    prom = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093", "alertmanager-2:9093"]
