"""The fleet inventory and what ``generate --fleet`` writes: each malformed inventory beside its
one-line error (exit 3, nothing written); the generated shard configs, rules and Alertmanager
routing pass promtool, amtool and vmalert; the healer routes reach each bot's own healer only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules.fleet import hashmod

from .conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "fleet.yaml"
TOPOLOGY = ("topology:\n  shards: 2\n  victoriametrics_url: http://127.0.0.1:8428\n"
            "  alertmanagers: [{address: 127.0.0.1:9093, cluster: 127.0.0.1:9094}]\n")
TOKEN = "healer_token_file: /etc/alertmanager/healer_token\n"


def bot(name: str = "a", exporter: str = "10.0.0.1:9870", healer: str = "10.0.0.1:9871", **extra: str) -> str:
    fields = {"name": name, "env": "paper", "host": "h1", "exporter": exporter, "healer": healer, **extra}
    return "  - {" + ", ".join(f"{k}: {v}" for k, v in fields.items() if v != "") + "}\n"


GOOD = TOPOLOGY + TOKEN + "bots:\n" + bot("a") + bot("b", "10.0.0.2:9870", "10.0.0.2:9871")

BAD = [
    ("unknown_top", GOOD + "shardz: 3\n", "unknown key 'shardz' in the inventory"),
    ("unknown_bot_key", TOPOLOGY + TOKEN + "bots:\n" + bot(port="1"), "unknown key 'port' in bots[0]"),
    ("unknown_topology_key", GOOD.replace("  shards: 2\n", "  shards: 2\n  replicas: 2\n"),
     "unknown key 'replicas' in topology"),
    ("duplicate_name", TOPOLOGY + TOKEN + "bots:\n" + bot("a") + bot("a", "10.0.0.2:9870", "10.0.0.2:9871"),
     "duplicate bot name 'a'"),
    ("shared_exporter", TOPOLOGY + TOKEN + "bots:\n" + bot("a") + bot("b", "10.0.0.1:9870", "10.0.0.2:9871"),
     "bot 'b' exporter 10.0.0.1:9870 is already bot 'a''s exporter"),
    ("shared_healer", TOPOLOGY + TOKEN + "bots:\n" + bot("a") + bot("b", "10.0.0.2:9870", "10.0.0.1:9871"),
     "bot 'b' healer 10.0.0.1:9871 is already bot 'a''s healer"),
    ("healer_is_exporter", TOPOLOGY + TOKEN + "bots:\n" + bot("a") + bot("b", "10.0.0.2:9870", "10.0.0.1:9870"),
     "bot 'b' healer 10.0.0.1:9870 is already bot 'a''s exporter"),
    ("no_healer", TOPOLOGY + TOKEN + "bots:\n" + bot(healer=""), "bot 'a' has no healer address"),
    ("no_token", TOPOLOGY + "bots:\n" + bot(), "bot 'a' has no healer_token_file"),
    ("token_value", TOPOLOGY + "healer_token_file: s3cr3t-value\nbots:\n" + bot(),
     "healer_token_file must be the absolute path of a file holding the token, not the token"),
    ("zero_shards", GOOD.replace("shards: 2", "shards: 0"), "topology.shards must be a whole number from 1"),
    ("text_shards", GOOD.replace("shards: 2", "shards: two"), "topology.shards must be a whole number from 1"),
    ("bool_shards", GOOD.replace("shards: 2", "shards: true"), "topology.shards must be a whole number from 1"),
    ("bad_address", TOPOLOGY + TOKEN + "bots:\n" + bot(exporter="10.0.0.1"),
     "bot 'a' exporter must be host:port, got '10.0.0.1'"),
    ("bad_name", TOPOLOGY + TOKEN + "bots:\n" + bot(name="'a b'"), "bots[0].name must be letters"),
    ("no_bots", TOPOLOGY + TOKEN + "bots: []\n", "bots must be a non-empty list"),
    ("no_vm", GOOD.replace("  victoriametrics_url: http://127.0.0.1:8428\n", ""),
     "topology has no victoriametrics_url"),
    ("reserved_label", TOPOLOGY + TOKEN + "bots:\n" + bot(labels="{job: x}"),
     "label 'job' is set by the inventory itself"),
    ("bad_yaml", "topology: [\n", "not valid YAML"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_malformed_inventory_exits_3_with_one_line_and_writes_nothing(tmp_path: Path, name: str, text: str,
                                                                       message: str) -> None:
    inv = tmp_path / f"{name}.yaml"
    inv.write_text(text)
    out = tmp_path / "out"
    r = run_cli("generate", "--fleet", str(inv), "--out", str(out))
    assert r.returncode == 3, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(inv) in lines[0], r.stderr
    assert not out.exists()
    assert "s3cr3t-value" not in r.stderr + r.stdout


def generated(tmp_path: Path, text: str | None = None) -> Path:
    inv = tmp_path / "fleet.yaml"
    out = tmp_path / "out"
    data = yaml.safe_load(text or EXAMPLE.read_text())
    data["topology"]["config_dir"] = str(out)  # promtool resolves the rule and target files
    inv.write_text(yaml.safe_dump(data))
    r = run_cli("generate", "--fleet", str(inv), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def tool(*argv: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(argv[0])
    if binary is None:
        pytest.skip(f"{argv[0]} is not installed (make system-deps)")
    return subprocess.run([binary, *argv[1:]], capture_output=True, text=True, timeout=60)


def test_generated_shard_configs_and_rules_pass_promtool(tmp_path: Path) -> None:
    out = generated(tmp_path)
    shards = sorted((out / "prometheus").glob("shard-*.yml"))
    assert [p.name for p in shards] == ["shard-0.yml", "shard-1.yml"]
    for path in shards:
        r = tool("promtool", "check", "config", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
    r = tool("promtool", "check", "rules", str(out / "rules" / "trading-readiness.rules.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    out = generated(tmp_path)
    r = tool("amtool", "check-config", str(out / "alertmanager" / "alertmanager.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_rules_pass_vmalert_dry_run(tmp_path: Path) -> None:
    out = generated(tmp_path)
    r = tool("vmalert", "-dryRun", f"-rule={out / 'rules' / 'trading-readiness.rules.yml'}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]


def routes(out: Path, labels: dict[str, str]) -> list[str]:
    """The receivers amtool says an alert with ``labels`` reaches."""
    r = tool("amtool", "config", "routes", "test", f"--config.file={out / 'alertmanager' / 'alertmanager.yml'}",
             *(f"{k}={v}" for k, v in labels.items()))
    assert r.returncode == 0, r.stdout + r.stderr
    return sorted(r.stdout.strip().split(","))


def test_each_bots_healable_alert_reaches_its_own_healer_only_and_pages_still_page(tmp_path: Path) -> None:
    out = generated(tmp_path)
    fleet = yaml.safe_load(EXAMPLE.read_text())
    for b in fleet["bots"]:
        labels = {"alertname": "TradingFailurePoint", "fp": "FP-1.1", "severity": "critical",
                  "healer": "restart-uw-daemon", "bot": b["name"], "env": b["env"]}
        assert routes(out, labels) == sorted([f"healer-{b['name']}", "pager"])
        labels.pop("healer")  # a point without a healer never reaches any healer
        assert routes(out, labels) == ["pager"]
    assert routes(out, {"alertname": "TradingBlocked", "severity": "critical", "bot": "momentum-live"}) == ["pager"]
    am = yaml.safe_load((out / "alertmanager" / "alertmanager.yml").read_text())
    hooks = {r["name"]: r["webhook_configs"][0] for r in am["receivers"] if r.get("webhook_configs")}
    live = hooks["healer-momentum-live"]
    assert live["url"] == "http://bot-1.internal:9881/alertmanager"
    assert live["http_config"]["authorization"]["credentials_file"] == "/etc/alertmanager/secrets/momentum-live.token"
    assert hooks["healer-momentum-paper"]["http_config"]["authorization"]["credentials_file"] == \
        "/etc/alertmanager/secrets/healer_token"


def test_targets_carry_bot_env_host_and_each_shard_keeps_its_hashmod_share(tmp_path: Path) -> None:
    out = generated(tmp_path)
    groups: list[dict[str, Any]] = json.loads((out / "targets" / "exporters.json").read_text())
    by_bot = {g["labels"]["bot"]: g for g in groups}
    assert by_bot["meanrev-live"] == {"targets": ["bot-2.internal:9880"], "labels": {
        "bot": "meanrev-live", "env": "live", "host": "bot-2.internal", "team": "trading", "strategy": "meanrev"}}
    healers = {g["labels"]["bot"]: g["targets"] for g in json.loads((out / "targets" / "healers.json").read_text())}
    assert healers["momentum-live"] == ["bot-1.internal:9881"]
    for shard in (0, 1):
        cfg = yaml.safe_load((out / "prometheus" / f"shard-{shard}.yml").read_text())
        assert cfg["global"]["external_labels"] == {"shard": str(shard)}
        assert cfg["remote_write"][0]["url"] == "http://metrics.internal:8428/api/v1/write"
        assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
            "alerts-1.internal:9093", "alerts-2.internal:9093"]
        for job in cfg["scrape_configs"]:
            hm, keep = job["relabel_configs"]
            assert (hm["action"], hm["source_labels"], hm["modulus"]) == ("hashmod", ["__address__"], 2)
            assert (keep["action"], keep["regex"]) == ("keep", str(shard))
    peer = (out / "alertmanager" / "peer-1.args").read_text()
    assert 'ARGS="--cluster.listen-address=alerts-2.internal:9094' in peer
    assert "--cluster.peer=alerts-1.internal:9094" in peer


def test_hashmod_spreads_addresses_over_every_shard() -> None:
    # the shards' real targets are compared with it in tests/test_fleet_e2e.py
    assert hashmod("a", 1) == 0
    assert {hashmod(f"127.0.0.1:{p}", 3) for p in range(9000, 9100)} == {0, 1, 2}


def test_fleet_rules_routes_and_dashboards_follow_the_mixin_config(tmp_path: Path) -> None:
    mixin = tmp_path / "mixin.yaml"
    mixin.write_text("blocked_for: 2m\n")
    inv = tmp_path / "fleet.yaml"
    inv.write_text(EXAMPLE.read_text())
    out = tmp_path / "out"
    r = run_cli("generate", "--config", str(mixin), "--fleet", str(inv), "--out", str(out))
    assert r.returncode == 0, r.stderr
    groups = yaml.safe_load((out / "rules" / "trading-readiness.rules.yml").read_text())["groups"]
    blocked = [x for g in groups for x in g["rules"] if x.get("alert") == "TradingBlocked"]
    assert [x["for"] for x in blocked] == ["2m"]
    assert (out / "grafana" / "dashboards" / "trading-readiness-fleet.json").exists()
    mixin.write_text("blocked_four: 2m\n")
    r = run_cli("generate", "--config", str(mixin), "--fleet", str(inv), "--out", str(tmp_path / "other"))
    assert r.returncode == 3 and "blocked_four" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "other").exists()
