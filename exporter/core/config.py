"""Configuration: strict YAML over built-in defaults for the stock-bot layout.

Every error is collected before failing (pve-exporter style) and each one names the key and the
file, because a monitoring tool that silently ignores a typo'd threshold gives false assurance.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import catalog as catalog_mod
from .fields import host_port

CONFIG_ENV = "TRADING_READINESS_CONFIG"
BOT_ROOT_ENV = "TRADING_READINESS_BOT_ROOT"
CONFIG_NAME = "trading-readiness.yaml"

#: Built-in defaults. The shape of this mapping is the schema: a key not here is an error.
DEFAULTS: dict[str, Any] = {
    "bot_root": ".",
    "readiness": {"max_warnings": 2},
    "engine": {"default_timeout_seconds": 10.0, "max_workers": 16},
    "alpaca": {"base_url": None, "timeout_seconds": 5.0, "cache_seconds": 5.0},
    "uw": {"base_url": None, "timeout_seconds": 5.0, "auth_probe_path": "/api/market/market-tide"},
    "market": {"premarket_seconds": 3600.0, "clock_cache_seconds": 60.0, "calendar_cache_seconds": 3600.0},
    "paths": {
        "uw_cache": "data/uw_flow_cache.json",
        "weights": "state/signal_weights.json",
        "governor_freezes": "state/governor_freezes.json",
        "safe_mode_flag": "state/health_safe_mode.flag",
        "kill_switch": "state/kill_switch.json",
        "heartbeat": "state/bot_heartbeat.json",
        "run_log": "logs/run.jsonl",
        "blocked_trades": "state/blocked_trades.jsonl",
        "daemon_log": "logs/uw_daemon.jsonl",
        "quota_log": "data/uw_api_quota.jsonl",
        #: the bot's UW client: its own count of calls sent today (UTC day) and the non-OK answers
        "uw_usage_state": "state/uw_usage_state.json",
        "uw_errors_log": "reports/uw_health/uw_api_errors.jsonl",
        #: the daemon's event log: ``UW_API_RATE_LIMITED`` lines carry UW's own daily count and limit
        "uw_cache_log": "data/uw_flow_cache.log.jsonl",
        #: main.py's order log (``action: *_failed`` with ``error``) and its failed-submission record
        "orders_log": "logs/orders.jsonl",
        "execution_failures": "state/execution_failures.jsonl",
        #: main.py's line right before each broker submission (SUBMIT_ORDER_CALLED)
        "submit_order_log": "logs/submit_order_called.jsonl",
        "supervisor_health": "state/health.json",
        "self_healing_threshold": "state/self_healing_threshold.json",
        "thresholds": "state/uw_thresholds_hierarchical.json",
        "readiness_log": "logs/failure_points.log",
        "verification_dir": "data",
    },
    "processes": {
        "uw_daemon": {
            "systemd_unit": "uw-flow-daemon.service",
            "script": "uw_flow_daemon.py",
            "lock_file": "state/uw_flow_daemon.lock",
        },
        "bot": {"systemd_unit": "stock-bot.service", "script": "main.py", "lock_file": None},
    },
    "checks": {},
    "exporter": {
        "listen": "127.0.0.1:9870",
        "default_interval_seconds": 15.0,
        "tls_cert_file": None,
        "tls_key_file": None,
        "basic_auth_users": {},
        "premarket_verify_offset_seconds": 1800.0,
        #: keep the exporter's threads on one CPU (they share one GIL): see exporter/serve/affinity.py
        "one_cpu": True,
    },
    "healer": {
        "listen": "127.0.0.1:9871",
        "dry_run": False,
        "max_concurrent": 2,
        "audit_file": "logs/trading_readiness_heals.jsonl",
        #: receivers of one bot (an HA pair) take a point's lease here before acting: one action per fault
        "lease_file": "state/trading_readiness_heal.lease",
        "verify_timeout_seconds": 120.0,
        "verify_interval_seconds": 1.0,
        #: labels an alert must carry for this healer to act on it, e.g. {instance: "bot-a:9870"}
        #: when one Alertmanager serves several bots; an alert of another bot is skipped
        "match_labels": {},
    },
    #: Built-in healers. A user entry for a point replaces the built-in entry for that point
    #: (``FP-1.1: {enabled: false}`` switches one off). Only the UW daemon's own unit is restarted
    #: by default (daemon down, cache stale; the healer's cooldown also holds per action, so the
    #: two together restart it once): restarting stock-bot.service restarts the whole tree, so
    #: FP-6.1 stays opt-in. FP-1.2 (cache missing) is opt-in too: a missing or torn cache is as
    #: often a disk or path problem as a stuck daemon, and configs written before it would
    #: silently inherit a restart of the host's real unit.
    #: FP-2.1's initialiser is bot-specific, so it ships disabled with the argv to confirm.
    #: A point's entry names its action (``action: restart-uw-daemon``, one of ``actions``) or
    #: gives its own ``run``/``systemd_restart``.
    "healers": {
        "FP-1.1": {"action": "restart-uw-daemon"},
        "FP-1.3": {"action": "restart-uw-daemon"},
        "FP-2.1": {"action": "reinit-weights", "enabled": False},
    },
    #: The named actions the catalog's ``healer:`` names stand for (exactly one of ``run``, an
    #: argv, or ``systemd_restart``, a unit). A user entry for a name replaces the built-in one.
    "actions": {
        "restart-uw-daemon": {"systemd_restart": "uw-flow-daemon.service"},
        "restart-bot": {"systemd_restart": "stock-bot.service"},
        "reinit-weights": {"run": ["venv/bin/python", "-m", "adaptive_signal_optimizer", "--init-weights"]},
    },
    "probe": {"adapter": None, "symbol": "SPY", "score": None, "notional": 1000.0},
    #: what `verify` validates with promtool/amtool: the files this bot's Prometheus and
    #: Alertmanager really load; unset, the checkout's rules/*.yml and alertmanager/alertmanager.yml
    "verify": {"rule_files": None, "alertmanager_config": None},
}

#: Keys whose value may be null in the defaults but must be of this type when set.
NULLABLE: dict[str, type | tuple[type, ...]] = {
    "alpaca.base_url": str,
    "uw.base_url": str,
    "processes.*.systemd_unit": str,
    "processes.*.script": str,
    "processes.*.lock_file": str,
    "exporter.tls_cert_file": str,
    "exporter.tls_key_file": str,
    "probe.adapter": str,
    "probe.score": (int, float),
    "verify.rule_files": list,
    "verify.alertmanager_config": str,
}

CHECK_KEYS: dict[str, type | tuple[type, ...]] = {
    "enabled": bool, "interval_seconds": (int, float), "timeout_seconds": (int, float), "params": dict,
}
HEALER_KEYS: dict[str, type | tuple[type, ...]] = {
    "run": list,
    "systemd_restart": str,
    "action": str,
    "timeout_seconds": (int, float),
    "cooldown_seconds": (int, float),
    "max_attempts": int,
    "window_seconds": (int, float),
    "verify_timeout_seconds": (int, float),
    "enabled": bool,
}


class ConfigError(ValueError):
    """One or more configuration problems; ``str()`` is a single line naming each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        # a key may itself contain a line break (a quoted YAML key): the error stays one line
        super().__init__("; ".join(problems).replace("\r", "\\r").replace("\n", "\\n"))


@dataclass
class Config:
    data: dict[str, Any]
    bot_root: Path
    source: str = "built-in defaults"
    catalog: catalog_mod.Catalog = field(default_factory=catalog_mod.load)
    _resolved: dict[tuple[str | Path, Path], Path] = field(default_factory=dict, init=False, repr=False,
                                                           compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def path(self, name: str) -> Path:
        """A configured path, resolved against the bot root."""
        return self.resolve(self.data["paths"][name])

    def resolve(self, p: str | Path) -> Path:
        # the checks resolve the same few paths many times a cycle: pathlib's parsing is kept,
        # keyed by everything the answer depends on (a "~" path is expanded afresh: $HOME may change)
        key = (p, self.bot_root)
        found = self._resolved.get(key)
        if found is None:
            path = Path(p).expanduser()
            found = path if path.is_absolute() else self.bot_root / path
            if not str(p).startswith("~"):
                self._resolved[key] = found
        return found

    def check_settings(self, fp: str) -> dict[str, Any]:
        """enabled/interval/timeout/params for one failure point: catalog defaults, then config."""
        point = self.catalog[fp]
        over = self.data["checks"].get(fp, {})
        params = dict(point.params)
        params.update(over.get("params", {}))
        return {
            "enabled": over.get("enabled", True),
            "interval_seconds": float(
                over.get("interval_seconds", point.interval_seconds
                         if point.interval_seconds != 15.0 else self.data["exporter"]["default_interval_seconds"])
            ),
            "timeout_seconds": float(over.get("timeout_seconds", point.timeout_seconds)),
            "params": params,
        }

    def enabled_ids(self) -> list[str]:
        return [fp for fp in self.catalog.ids() if self.check_settings(fp)["enabled"]
                and self.catalog[fp].detection == "implemented"]


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _is(value: Any, t: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and t is not bool and not (isinstance(t, tuple) and bool in t):
        return False  # YAML `yes` must not pass as a number
    if isinstance(value, float) and not math.isfinite(value):
        return False  # YAML `.inf`/`.nan`: no limit, timeout or interval means that, and neither is JSON
    return isinstance(value, t)


def _merge(defaults: dict[str, Any], user: Any, prefix: str, src: str, problems: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    if not isinstance(user, dict):
        problems.append(f"'{prefix.rstrip('.') or 'top level'}' in {src} must be a mapping")
        return out
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if prefix == "" and key in ("healers", "actions") and isinstance(value, dict):
            out[key] = {**defaults[key], **value}  # per point or name: the user's entry replaces the built-in one
            continue
        if prefix == "" and key in ("checks", "healers"):
            out[key] = value
            continue
        if key not in defaults:
            problems.append(f"unknown key '{dotted}' in {src}")
            continue
        default = defaults[key]
        wildcard = ".".join(["*" if i == 1 and dotted.startswith("processes.") else part
                             for i, part in enumerate(dotted.split("."))])
        if isinstance(default, dict) and dotted not in ("exporter.basic_auth_users", "healer.match_labels"):
            out[key] = _merge(default, value, dotted + ".", src, problems)
            continue
        if value is None:
            if dotted in NULLABLE or wildcard in NULLABLE:
                out[key] = None
            else:
                problems.append(f"key '{dotted}' in {src} must not be empty")
            continue
        expected: type | tuple[type, ...]
        if dotted in NULLABLE or wildcard in NULLABLE:
            expected = NULLABLE.get(dotted) or NULLABLE[wildcard]
        elif isinstance(default, bool):
            expected = bool
        elif isinstance(default, float):
            expected = (int, float)
        else:
            expected = type(default)
        if not _is(value, expected):
            problems.append(f"key '{dotted}' in {src} must be {_type_name(expected)}, got {value!r}")
        else:
            out[key] = value
    return out


def _validate_checks(data: dict[str, Any], src: str, cat: catalog_mod.Catalog, problems: list[str]) -> None:
    for fp, settings in _point_sections(data, "checks", src, cat, problems):
        for key, value in _typed_keys(settings, f"checks.{fp}", CHECK_KEYS, src, problems):
            if key in ("interval_seconds", "timeout_seconds") and value <= 0:
                problems.append(f"key 'checks.{fp}.{key}' in {src} must be positive")
        for pkey, pval in (settings.get("params") or {}).items() if isinstance(settings.get("params"), dict) else ():
            defaults = cat[fp].params
            if pkey not in defaults:
                problems.append(f"unknown key 'checks.{fp}.params.{pkey}' in {src}")
            elif defaults[pkey] is not None and not _is(pval, _param_type(defaults[pkey])):
                problems.append(f"key 'checks.{fp}.params.{pkey}' in {src} must be "
                                f"{_type_name(_param_type(defaults[pkey]))}, got {pval!r}")


def _point_sections(data: dict[str, Any], section: str, src: str, cat: catalog_mod.Catalog,
                    problems: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``<section>.<fp>`` mappings of known points; what is not one is a problem, named once."""
    block = data.get(section)
    if not isinstance(block, dict):
        problems.append(f"'{section}' in {src} must be a mapping of failure-point ids")
        data[section] = {}
        return
    for fp, spec in block.items():
        if fp not in cat.points:
            problems.append(f"unknown failure point '{section}.{fp}' in {src}")
        elif not isinstance(spec, dict):
            problems.append(f"'{section}.{fp}' in {src} must be a mapping")
        else:
            yield fp, spec


def _typed_keys(spec: dict[str, Any], where: str, known: dict[str, Any], src: str,
                problems: list[str]) -> list[tuple[str, Any]]:
    """The keys of ``spec`` that ``known`` names, with a value of its type; the others are problems."""
    good: list[tuple[str, Any]] = []
    for key, value in spec.items():
        if key not in known:
            problems.append(f"unknown key '{where}.{key}' in {src}")
        elif not _is(value, known[key]):
            problems.append(f"key '{where}.{key}' in {src} must be {_type_name(known[key])}")
        else:
            good.append((key, value))
    return good


def _param_type(default: Any) -> type | tuple[type, ...]:
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return (int, float)
    return type(default)


def _validate_actions(data: dict[str, Any], src: str, problems: list[str]) -> dict[str, dict[str, Any]]:
    """The named actions that are well formed (each problem reported once, here)."""
    actions = data.get("actions")
    if not isinstance(actions, dict):
        problems.append(f"'actions' in {src} must be a mapping of action names")
        data["actions"] = {}
        return {}
    good: dict[str, dict[str, Any]] = {}
    for name, spec in actions.items():
        where = f"actions.{name}"
        if not isinstance(spec, dict):
            problems.append(f"'{where}' in {src} must be a mapping")
            continue
        unknown = [k for k in spec if k not in ("run", "systemd_restart")]
        if unknown:
            problems.append(f"unknown key '{where}.{unknown[0]}' in {src}")
        elif ("run" in spec) == ("systemd_restart" in spec):
            problems.append(f"'{where}' in {src} needs exactly one of 'run' or 'systemd_restart'")
        elif "run" in spec and not (isinstance(spec["run"], list) and spec["run"]
                                    and all(isinstance(a, str) and a for a in spec["run"])):
            problems.append(f"key '{where}.run' in {src} must be a non-empty list of strings (an argv, no shell)")
        elif "systemd_restart" in spec and not (isinstance(spec["systemd_restart"], str) and spec["systemd_restart"]):
            problems.append(f"key '{where}.systemd_restart' in {src} must be a unit name")
        else:
            good[str(name)] = spec
    return good


def _validate_healers(data: dict[str, Any], src: str, cat: catalog_mod.Catalog, problems: list[str]) -> None:
    actions = _validate_actions(data, src, problems)
    for fp, spec in _point_sections(data, "healers", src, cat, problems):
        where = f"healers.{fp}"
        _typed_keys(spec, where, HEALER_KEYS, src, problems)  # the values are judged together below
        action = spec.get("action")
        if isinstance(action, str):
            if "run" in spec or "systemd_restart" in spec:
                problems.append(f"'{where}' in {src} names action '{action}' and its own 'run' or 'systemd_restart'")
                continue
            if action not in actions:
                problems.append(f"key '{where}.action' in {src} names no action under 'actions' ({', '.join(actions)})")
                continue
            if fp in cat.points and cat[fp].healer is not None and action != cat[fp].healer:
                problems.append(f"key '{where}.action' in {src} must be '{cat[fp].healer}', the healer the catalog "
                                f"names for {fp}")
                continue
            spec = {**actions[action], **spec}
        has_run, has_unit = "run" in spec, "systemd_restart" in spec
        for key in ("timeout_seconds", "cooldown_seconds", "window_seconds", "verify_timeout_seconds"):
            value = spec.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                problems.append(f"key '{where}.{key}' in {src} must be positive")
        attempts = spec.get("max_attempts")
        if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts < 1:
            problems.append(f"key '{where}.max_attempts' in {src} must be 1 or more")
        if not has_run and not has_unit and spec.get("enabled") is False:
            pass  # switching a built-in healer off needs no action
        elif has_run == has_unit:
            problems.append(f"'{where}' in {src} needs exactly one of 'run' or 'systemd_restart'")
        if has_run and isinstance(spec["run"], list) and (
            not spec["run"] or not all(isinstance(a, str) and a for a in spec["run"])
        ):
            problems.append(f"key '{where}.run' in {src} must be a non-empty list of strings (an argv, no shell)")
        if cat[fp].healer is None:
            problems.append(f"'{where}' in {src}: {fp} must not be healed ({cat[fp].no_healer_reason})")


def _semantic(data: dict[str, Any], src: str, problems: list[str]) -> None:
    if isinstance(data["readiness"]["max_warnings"], int) and data["readiness"]["max_warnings"] < 0:
        problems.append(f"key 'readiness.max_warnings' in {src} must be 0 or more")
    for key in ("exporter.listen", "healer.listen"):
        sect, name = key.split(".")
        value = data[sect][name]
        addr = host_port(str(value))
        if addr is None or addr[1] == 0:
            problems.append(f"key '{key}' in {src} must be HOST:PORT, got {value!r:.80}")
    rule_files = data["verify"]["rule_files"]
    if isinstance(rule_files, list) and not (rule_files and all(isinstance(f, str) and f for f in rule_files)):
        problems.append(f"key 'verify.rule_files' in {src} must be a non-empty list of file paths")
    healer = data["healer"]
    labels = healer["match_labels"]
    if isinstance(labels, dict):
        for name, value in labels.items():
            if not isinstance(name, str) or not name.isidentifier() or not isinstance(value, str):
                problems.append(f"key 'healer.match_labels' in {src} must map label names to strings, "
                                f"got {name!r}: {value!r}")
    if isinstance(healer["max_concurrent"], int) and healer["max_concurrent"] < 1:
        problems.append(f"key 'healer.max_concurrent' in {src} must be 1 or more")
    for key in ("verify_timeout_seconds", "verify_interval_seconds"):
        if isinstance(healer[key], (int, float)) and healer[key] <= 0:
            problems.append(f"key 'healer.{key}' in {src} must be positive")
    for sect in ("alpaca", "uw"):
        t = data[sect]["timeout_seconds"]
        if isinstance(t, (int, float)) and not 0 < t <= 60:
            problems.append(f"key '{sect}.timeout_seconds' in {src} must be between 0 and 60")
    probe = data["probe"]
    if not str(probe["symbol"]).strip():
        problems.append(f"key 'probe.symbol' in {src} must not be empty")
    if not float(probe["notional"]) > 0:
        problems.append(f"key 'probe.notional' in {src} must be positive")
    tls = (data["exporter"]["tls_cert_file"], data["exporter"]["tls_key_file"])
    if (tls[0] is None) != (tls[1] is None):
        problems.append(f"keys 'exporter.tls_cert_file' and 'exporter.tls_key_file' in {src} go together")


def find_config_file(explicit: str | None, bot_root: Path | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    root = bot_root or Path(os.environ.get(BOT_ROOT_ENV) or ".")
    candidate = root / CONFIG_NAME
    return candidate if candidate.is_file() else None


def load(config_file: str | None = None, bot_root: str | None = None) -> Config:
    """Resolve the config file (CONTRACT.md order), validate it and resolve the bot root.

    ``--bot-root`` beats ``bot_root:`` in the file, which beats the environment, which beats ".".
    """
    cli_root = Path(bot_root) if bot_root else None
    path = find_config_file(config_file, cli_root)
    user: Any = {}
    src = "built-in defaults"
    if path is not None:
        src = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"config file {path} does not exist"]) from None
        except OSError as exc:
            raise ConfigError([f"config file {path} cannot be read: {exc.strerror}"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"config file {path} is not valid UTF-8 (byte {exc.start})"]) from None
        try:
            user = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError([f"config file {path} is not valid YAML{where}: {problem}"]) from None
        if user is None:
            user = {}
    problems: list[str] = []
    cat = catalog_mod.load()
    data = _merge(DEFAULTS, user, "", src, problems)
    _validate_checks(data, src, cat, problems)
    _validate_healers(data, src, cat, problems)
    if not problems:
        _semantic(data, src, problems)
    if problems:
        raise ConfigError(problems)
    if cli_root is not None:
        root = cli_root
    elif isinstance(user, dict) and "bot_root" in user:
        root = Path(data["bot_root"]).expanduser()
        if not root.is_absolute() and path is not None:
            root = path.parent / root
    else:
        root = Path(os.environ.get(BOT_ROOT_ENV) or ".")
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError([f"bot root {root} {'is not a directory' if root.exists() else 'does not exist'}"])
    return Config(data=data, bot_root=root, source=src, catalog=cat)
