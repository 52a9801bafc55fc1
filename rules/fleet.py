"""The fleet inventory: many bots on many hosts, watched by sharded Prometheus servers.

Why: one Prometheus per bot does not scale and one Prometheus for every bot stops being enough
(docs/benchmarks.md). The Prometheus ecosystem's own answer is used instead of a home-made
aggregator: collection shards (Prometheus with ``hashmod`` relabelling) each scrape their share
of the bots, evaluate the alerting rules locally -- so alerting and healing never depend on a
central store -- and ``remote_write`` to a central VictoriaMetrics that serves the fleet
dashboards; two Alertmanagers run as a cluster and route each bot's healable alerts to that
bot's own healer only.

``fleet.yaml`` (see ``examples/fleet.yaml``) says which bots exist and where; this module loads
it strictly (unknown keys, duplicate names, shared addresses, a bot without a healer and a bad
shard count are refused in one line naming the problem) and :mod:`rules.fleetgen` renders the
files. Secrets never appear here: the healer's bearer token is a *file path* per bot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import duration_seconds

#: a bot name becomes a label value and part of an Alertmanager receiver name
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: host:port of a scrape or webhook target (a name or an IPv4 address; IPv6 in brackets)
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})$")
URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")

TOP_KEYS = {"topology", "bots", "receivers", "healer_token_file", "labels"}
TOPOLOGY_KEYS = {"shards", "victoriametrics_url", "alertmanagers", "config_dir", "scrape_interval",
                 "evaluation_interval"}
ALERTMANAGER_KEYS = {"address", "cluster"}
BOT_KEYS = {"name", "env", "host", "exporter", "healer", "healer_token_file", "labels"}
RECEIVER_KEYS = {"pager_url", "ticket_url", "heartbeat_url"}
#: labels the inventory sets itself, or that Prometheus owns: extra labels may not redefine them
RESERVED_LABELS = {"bot", "env", "host", "job", "instance", "shard", "fp", "severity", "healer", "alertname"}
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

#: where the generated files live on a shard host (file_sd and rule paths in the shard configs)
DEFAULT_CONFIG_DIR = "/etc/prometheus/fleet"
MAX_SHARDS = 1000


class FleetError(ValueError):
    """The inventory is malformed: one line naming the file and the problem."""


@dataclass(frozen=True)
class AlertmanagerPeer:
    address: str  # host:port Prometheus sends alerts to
    cluster: str  # host:port of its gossip listener (--cluster.listen-address)


@dataclass(frozen=True)
class FleetBot:
    name: str
    env: str
    host: str
    exporter: str
    healer: str
    healer_token_file: str
    labels: dict[str, str] = field(default_factory=dict)

    def target_labels(self) -> dict[str, str]:
        """The labels every series of this bot carries: who it is, never invented by the exporter."""
        return {"bot": self.name, "env": self.env, "host": self.host, **self.labels}


@dataclass(frozen=True)
class Fleet:
    shards: int
    victoriametrics_url: str
    alertmanagers: tuple[AlertmanagerPeer, ...]
    bots: tuple[FleetBot, ...]
    config_dir: str = DEFAULT_CONFIG_DIR
    scrape_interval: str | None = None
    evaluation_interval: str | None = None
    receivers: dict[str, str] = field(default_factory=dict)

    def shard_of(self, address: str) -> int:
        return hashmod(address, self.shards)

    def assignment(self) -> dict[int, list[str]]:
        """{shard: [bot names]} as Prometheus' hashmod on the exporter address will split them."""
        out: dict[int, list[str]] = {i: [] for i in range(self.shards)}
        for bot in self.bots:
            out[self.shard_of(bot.exporter)].append(bot.name)
        return out


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' ``hashmod`` relabel action: the low 8 bytes of the MD5 sum, big-endian, mod N.

    The generator uses it to say which shard scrapes which bot (and to warn about an empty shard)
    without starting Prometheus; the end-to-end test checks it against the shards' real targets.
    """
    digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


def load(path: str | Path) -> Fleet:
    """Read and check ``fleet.yaml``; a :class:`FleetError` names the file and the first problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the fleet inventory: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise FleetError(f"{path}: not valid YAML{where}") from None
    try:
        return parse(data)
    except FleetError as exc:
        raise FleetError(f"{path}: {exc}") from None


def parse(data: Any) -> Fleet:
    """The inventory from its decoded YAML; a :class:`FleetError` says what is wrong and where."""
    top = _mapping(data, "the inventory", TOP_KEYS, required=("topology", "bots"))
    topo = _mapping(top["topology"], "topology", TOPOLOGY_KEYS,
                    required=("shards", "victoriametrics_url", "alertmanagers"))
    shards = topo["shards"]
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise FleetError(f"topology.shards must be a whole number from 1 to {MAX_SHARDS}, got {shards!r}")
    vm = _url(topo["victoriametrics_url"], "topology.victoriametrics_url")
    peers = _alertmanagers(topo["alertmanagers"])
    config_dir = _string(topo.get("config_dir", DEFAULT_CONFIG_DIR), "topology.config_dir")
    intervals = {}
    for key in ("scrape_interval", "evaluation_interval"):
        if topo.get(key) is not None:
            intervals[key] = _duration(topo[key], f"topology.{key}")
    receivers = {}
    if top.get("receivers") is not None:
        rec = _mapping(top["receivers"], "receivers", RECEIVER_KEYS)
        receivers = {k: _url(v, f"receivers.{k}") for k, v in rec.items()}
    default_token = top.get("healer_token_file")
    if default_token is not None:
        default_token = _token_file(default_token, "healer_token_file")
    common = _labels(top.get("labels"), "labels")
    bots = _bots(top["bots"], default_token, common)
    return Fleet(shards=shards, victoriametrics_url=vm.rstrip("/"), alertmanagers=peers, bots=bots,
                 config_dir=config_dir.rstrip("/") or "/", receivers=receivers, **intervals)


def _bots(raw: Any, default_token: str | None, common: dict[str, str]) -> tuple[FleetBot, ...]:
    if not isinstance(raw, list) or not raw:
        raise FleetError("bots must be a non-empty list")
    bots: list[FleetBot] = []
    seen_names: set[str] = set()
    owner: dict[str, str] = {}  # address -> "bot X's exporter"
    for i, item in enumerate(raw):
        where = f"bots[{i}]"
        entry = _mapping(item, where, BOT_KEYS, required=("name",))
        name = entry["name"]
        if not isinstance(name, str) or not NAME.match(name):
            raise FleetError(f"{where}.name must be letters, digits, '_', '.' or '-' (at most 63), got {name!r}")
        where = f"bot {name!r}"
        if name in seen_names:
            raise FleetError(f"duplicate bot name {name!r}")
        seen_names.add(name)
        for key in ("env", "host", "exporter", "healer"):
            if entry.get(key) in (None, ""):
                raise FleetError(f"{where} has no {key}" + (" address" if key in ("exporter", "healer") else ""))
        addresses = {}
        for role in ("exporter", "healer"):
            address = _address(entry[role], f"{where} {role}")
            if address in owner:
                raise FleetError(f"{where} {role} {address} is already {owner[address]}: "
                                 "every bot needs its own exporter and healer address")
            owner[address] = f"bot {name!r}'s {role}"
            addresses[role] = address
        token = entry.get("healer_token_file", default_token)
        if token is None:
            raise FleetError(f"{where} has no healer_token_file (set it on the bot or once at the top)")
        labels = {**common, **_labels(entry.get("labels"), f"{where} labels")}
        bots.append(FleetBot(name=name, env=_string(entry["env"], f"{where} env"),
                             host=_string(entry["host"], f"{where} host"), exporter=addresses["exporter"],
                             healer=addresses["healer"], healer_token_file=_token_file(token, f"{where} "
                                                                                        "healer_token_file"),
                             labels=labels))
    return tuple(bots)


def _alertmanagers(raw: Any) -> tuple[AlertmanagerPeer, ...]:
    if not isinstance(raw, list) or not raw:
        raise FleetError("topology.alertmanagers must be a non-empty list of {address, cluster}")
    peers = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"topology.alertmanagers[{i}]"
        entry = _mapping(item, where, ALERTMANAGER_KEYS, required=("address", "cluster"))
        address = _address(entry["address"], f"{where}.address")
        cluster = _address(entry["cluster"], f"{where}.cluster")
        for a in (address, cluster):
            if a in seen:
                raise FleetError(f"{where}: address {a} is used twice among the Alertmanagers")
            seen.add(a)
        peers.append(AlertmanagerPeer(address, cluster))
    return tuple(peers)


def _mapping(raw: Any, where: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FleetError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise FleetError(f"unknown key {unknown[0]!r} in {where} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if raw.get(key) is None:
            raise FleetError(f"{where} has no {key}")
    return raw


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
        raise FleetError(f"{where} must be a non-empty string, got {value!r}")
    text = str(value)
    if any(c in text for c in "\n\r\"\\{}"):
        raise FleetError(f"{where} may not contain quotes, braces, backslashes or line breaks: {text!r}")
    return text


def _address(value: Any, where: str) -> str:
    text = _string(value, where)
    m = ADDRESS.match(text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise FleetError(f"{where} must be host:port, got {text!r}")
    return text


def _url(value: Any, where: str) -> str:
    text = _string(value, where)
    if not URL.match(text):
        raise FleetError(f"{where} must be an http(s) URL, got {text!r}")
    return text


def _duration(value: Any, where: str) -> str:
    text = _string(value, where)
    try:
        if duration_seconds(text) <= 0:
            raise ValueError
    except ValueError:
        raise FleetError(f"{where} must be a positive Prometheus duration such as 15s, got {text!r}") from None
    return text


def _token_file(value: Any, where: str) -> str:
    text = _string(value, where)
    if not text.startswith("/"):
        # the token is read by Alertmanager from its own file system: a value that is not an
        # absolute path is most likely the secret itself, which must never be written out
        raise FleetError(f"{where} must be the absolute path of a file holding the token, not the token")
    return text


def _labels(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FleetError(f"{where} must map label names to values")
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not LABEL_NAME.match(k) or k.startswith("__"):
            raise FleetError(f"{where}: {k!r} is not a label name")
        if k in RESERVED_LABELS:
            raise FleetError(f"{where}: label {k!r} is set by the inventory itself")
        out[k] = _string(v, f"{where}.{k}")
    return out
