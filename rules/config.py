"""The mixin's config: what the rules, the Alertmanager configuration and the dashboards are
generated with, in the style of a monitoring mixin's ``_config`` (kubernetes-mixin): job
selectors, the labels that identify a bot, durations, severities and URLs. ``CONFIG`` holds the
defaults, which the committed artefacts are generated with (`make generate`); an operator changes
them without editing Python by writing a YAML file of overrides (docs/configuration.md#mixin-config) and running
``trading-readiness generate --config FILE`` (``load_config``). The failure points themselves
come from ``exporter/catalog.yaml``."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from exporter.core.catalog import load as load_catalog

#: Where this repository's docs/ are published; every alert's runbook_url points below it (a fork
#: or an internal mirror sets ``runbook_base_url`` in its mixin file).
DOCS_BASE_URL = "https://github.com/stock-bot/trading-readiness/blob/main/docs"


#: The defaults of every key (docs/configuration.md#mixin-config describes each); a mixin file overrides some of them.
CONFIG: dict[str, Any] = {
    "exporter_job": "trading-readiness",
    "healer_job": "trading-healer",
    # The labels that say which bot a series is about. None: every target label the operator sets
    # in the scrape config (job, instance, bot, env, ...) survives aggregation, which removes only
    # the per-point labels (POINT_LABELS). A list aggregates by exactly those labels instead.
    "group_by": None,
    # The target labels that name a bot and its environment in summaries and dashboards (the
    # instance stands in for a target without a bot label).
    "bot_label": "bot",
    "env_label": "env",
    "scrape_interval": "15s",
    # Absence alerts wait at least twice the scrape interval: one lost scrape is not an outage.
    "exporter_down_for": "1m",
    "blocked_for": "1m",
    "degraded_for": "5m",
    "stale_for": "1m",
    "healer_gave_up_for": "0s",
    # trading_healer_stuck already waits out the action's timeout and verification: one scrape more
    "healer_stuck_for": "1m",
    # A check is stale when its last run is older than stale_factor intervals plus the slack
    # (the slack covers a check's timeout and one scrape, so a 15 s check is not stale at 46 s).
    "stale_factor": 3,
    "stale_slack_seconds": 60,
    # How often the staleness alerts are evaluated: they join every point of every bot and wait
    # minutes anyway (3 check intervals + the slack, then stale_for), so they run in a group of their
    # own at this interval instead of at every evaluation (the fleet bench: about 60% of a shard's
    # rule time at the evaluation interval).
    "stale_evaluation_interval": "30s",
    # Used only when an exporter does not export trading_readiness_max_warnings (CONTRACT default).
    "default_max_warnings": 2,
    # Overrides every per-point `alert_for` from the catalog when set (tests use "0s").
    "failure_point_for": None,
    # Per-point `for:` of TradingFailurePoint, {FP-x.y: duration}; wins over failure_point_for.
    "point_for": {},
    # The docs/ directory the runbooks are read from: TradingFailurePoint links to the point's
    # section of FAILURE_POINTS.md, every other alert to its section of runbooks.md.
    "runbook_base_url": DOCS_BASE_URL,
    # Grafana's base URL; alerts link the overview dashboard below it, filtered to their bot.
    "grafana_url": "http://127.0.0.1:3000",
    "severity": {"blocked": "critical", "degraded": "warning", "fp_error": "critical", "fp_warn": "warning",
                 "exporter_down": "critical", "stale": "warning", "healer_gave_up": "warning",
                 "healer_stuck": "warning",
                 "watchdog": "info"},
    "alertmanager": {
        "pager_url": "http://127.0.0.1:9095/pager",
        "ticket_url": "http://127.0.0.1:9095/ticket",
        "heartbeat_url": "http://127.0.0.1:9095/heartbeat",
        "healer_url": "http://127.0.0.1:9871/alertmanager",
        # Holds the value of TRADING_READINESS_HEALER_TOKEN and nothing else (no newline needed).
        "healer_token_file": "/etc/alertmanager/secrets/healer_token",
        # How long Alertmanager gathers a group before the first notification, between updates of a
        # group, and before repeating an unchanged one (the demo and tests shorten them).
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "pager_repeat_interval": "1h",
        # healing needs no batching: one alert per group (fp, instance) goes out at once. A group
        # lives on until its resolved notification has gone out (one group interval after the
        # alert resolved), and a fault that comes back meanwhile waits for that group's next
        # interval: 10 s, not 1 min, so a recurring fault is healed as fast as a first one
        # (bench_heal: with 1m, drills that began soon after the previous one waited 20-35 s)
        "healer_group_wait": "0s",
        "healer_group_interval": "10s",
        "healer_repeat_interval": "5m",
        "heartbeat_interval": "1m",
    },
}


#: The labels the exporter and the healer put on per-point series; everything else on a series is a
#: target label (job, instance and whatever the operator adds) and identifies the bot.
POINT_LABELS: tuple[str, ...] = ("fp", "category", "name", "healer")


HEADER = ("# Generated by `trading-readiness generate` (`make generate`) from exporter/catalog.yaml and\n"
          "# the mixin config (docs/configuration.md#mixin-config). Do not edit: change the config and\n"
          "# regenerate.\n")


def config(**overrides: Any) -> dict[str, Any]:
    """CONFIG with top-level keys replaced (tests shorten the ``for:`` durations)."""
    unknown = set(overrides) - set(CONFIG)
    if unknown:
        raise KeyError(f"unknown rule config keys: {sorted(unknown)}")
    cfg = copy.deepcopy(CONFIG)
    cfg.update(overrides)
    if "alertmanager" in overrides:
        unknown = set(overrides["alertmanager"]) - set(CONFIG["alertmanager"])
        if unknown:
            raise KeyError(f"unknown alertmanager config keys: {sorted(unknown)}")
        cfg["alertmanager"] = {**CONFIG["alertmanager"], **overrides["alertmanager"]}
    if "severity" in overrides:
        cfg["severity"] = {**CONFIG["severity"], **overrides["severity"]}
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Refuse configs that would make an absence alert flap on one lost scrape.

    A ValueError names the key: an exporter-down ``for:`` shorter than two scrape intervals pages
    on a single slow scrape, and a stale slack shorter than one scrape interval marks a healthy
    check stale between two scrapes.
    """
    scrape = duration_seconds(cfg["scrape_interval"])
    if scrape <= 0:
        raise ValueError("scrape_interval must be positive")
    if duration_seconds(cfg["exporter_down_for"]) < 2 * scrape:
        raise ValueError(f"exporter_down_for {cfg['exporter_down_for']} is shorter than twice the "
                         f"scrape interval {cfg['scrape_interval']}")
    if float(cfg["stale_slack_seconds"]) < scrape:
        raise ValueError(f"stale_slack_seconds {cfg['stale_slack_seconds']} is shorter than the "
                         f"scrape interval {cfg['scrape_interval']}")
    for key in ("blocked_for", "degraded_for", "stale_for", "healer_gave_up_for", "stale_evaluation_interval"):
        duration_seconds(cfg[key])
    if duration_seconds(cfg["stale_evaluation_interval"]) <= 0:
        raise ValueError("stale_evaluation_interval must be positive")
    if cfg["failure_point_for"] is not None:
        duration_seconds(cfg["failure_point_for"])
    for text in cfg["point_for"].values():
        duration_seconds(text)


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration such as ``1m30s``; a malformed one is a ValueError."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if text == "0":
        return 0.0
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def dump(data: Any) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    def str_rep(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
        style = "|" if "\n" in s else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)

    Dumper.add_representer(str, str_rep)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=110, allow_unicode=True)


class ConfigError(ValueError):
    """A mixin file the generator refuses, in one line naming the file and the key."""


LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: keys whose value is a Prometheus duration (the Alertmanager ones too)
DURATION_KEYS = {"scrape_interval", "stale_evaluation_interval", "group_wait", "group_interval", "repeat_interval",
                 "pager_repeat_interval", "healer_group_wait", "healer_group_interval", "healer_repeat_interval",
                 "heartbeat_interval"}
LABEL_KEYS = {"bot_label", "env_label"}


def load_config(path: Path | None) -> dict[str, Any]:
    """CONFIG overridden by the mixin file at ``path`` (CONFIG itself when ``path`` is None).

    Every key of the file must be a key of CONFIG (nested for ``severity``, ``alertmanager``
    and ``point_for``) with a value of the default's kind: an unknown key, a malformed value or a
    combination that would flap (see ``validate``) raises ``ConfigError`` naming the key.
    """
    if path is None:
        return config()
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    overrides: dict[str, Any] = {}
    for key, value in data.items():
        overrides[str(key)] = _checked(where, str(key), value, CONFIG.get(str(key), _UNKNOWN))
    try:
        return config(**overrides)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_UNKNOWN = object()


def _checked(where: str, key: str, value: Any, default: Any) -> Any:
    """``value`` for ``key`` if it has the default's kind; else ConfigError naming the key."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {problem}")

    name = key.rsplit(".", 1)[-1]
    if default is _UNKNOWN:
        raise ConfigError(f"{where}: unknown key {key!r}")
    if name == "point_for":
        if not isinstance(value, dict):
            raise bad("expected a mapping of failure-point ids to durations")
        ids = set(load_catalog().ids())
        for fp, text in value.items():
            if fp not in ids:
                raise ConfigError(f"{where}: unknown key {key + '.' + str(fp)!r} (not a catalog failure point)")
            _duration_of(where, f"{key}.{fp}", text)
        return dict(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad("expected a mapping")
        return {str(k): _checked(where, f"{key}.{k}", v, default.get(str(k), _UNKNOWN)) for k, v in value.items()}
    if name == "group_by":
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and LABEL_NAME.fullmatch(v)
                                                               for v in value):
            raise bad("expected null or a non-empty list of label names")
        return list(value)
    if name == "failure_point_for" and value is None:
        return None
    if isinstance(default, bool) or isinstance(value, bool):
        raise bad(f"expected {type(default).__name__}, got {value!r}")
    if isinstance(default, int | float):
        if not isinstance(value, int | float) or value < 0:
            raise bad(f"expected a non-negative number, got {value!r}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise bad(f"expected a non-empty string, got {value!r}")
    if name.endswith("_for") or name in DURATION_KEYS:
        _duration_of(where, key, value)
    elif name in LABEL_KEYS and not LABEL_NAME.fullmatch(value):
        raise bad(f"not a label name: {value!r}")
    elif name.endswith("_url") and not re.match(r"https?://[^\s\"]+$", value):
        raise bad(f"expected an http(s) URL, got {value!r}")
    elif any(c in value for c in '"\\\n{}'):
        raise bad(f"must not contain quotes, backslashes, braces or line breaks: {value!r}")
    return value


def _duration_of(where: str, key: str, value: Any) -> None:
    try:
        duration_seconds(value if isinstance(value, str) else "")
    except ValueError:
        raise ConfigError(f"{where}: {key}: not a Prometheus duration: {value!r}") from None
