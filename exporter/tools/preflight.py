"""Is this directory a bot root, and is the setup sound? Answered from the disk alone.

`check`, `probe`, `verify` and `serve` pointed at the wrong directory would otherwise report
fifty failing points (or a wall of "file missing") where one line saying "this is not the bot"
is the truth. `config check` goes further and validates what can be validated without the
network: it never sends a request and never spends UW quota, so it is safe to run on every
deploy or in a pre-commit hook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ..bot.botenv import BotEnv
from ..core.config import Config


class BotRootError(Exception):
    """The bot root cannot be read or does not look like the bot's working directory."""


def markers(cfg: Config) -> list[str]:
    """What a bot root of this config holds, at least one of: the bot's and the daemon's scripts
    and the top directories of the UW cache and of the weights (``data/``, ``state/`` for stock-bot).

    Lenient on purpose: a fresh install (scripts and ``.env``, nothing written yet) and a bot root
    that has run but whose scripts live elsewhere (``data/``, ``state/``, ``logs/``) both pass.
    """
    out: list[str] = []
    for proc in ("bot", "uw_daemon"):
        script = cfg["processes"].get(proc, {}).get("script")
        if script and not PurePath(script).is_absolute():
            out.append(str(script))
    for key in ("uw_cache", "weights"):
        rel = PurePath(cfg["paths"][key])
        if not rel.is_absolute() and len(rel.parts) > 1:
            top = rel.parts[0] + "/"
            if top not in out:
                out.append(top)
    return out


def require_bot_root(cfg: Config) -> list[str]:
    """The markers found in the bot root; raises BotRootError with one line when there are none
    or the directory cannot be listed."""
    root = cfg.bot_root
    try:
        entries = set(os.listdir(root))
    except PermissionError:
        raise BotRootError(f"bot root {root} cannot be read: permission denied") from None
    except NotADirectoryError:
        raise BotRootError(f"bot root {root} is not a directory") from None
    except FileNotFoundError:
        raise BotRootError(f"bot root {root} does not exist") from None
    except OSError as exc:
        raise BotRootError(f"bot root {root} cannot be read: {exc.strerror}") from None
    wanted = markers(cfg)
    found = [m for m in wanted if m.rstrip("/") in entries
             and (not m.endswith("/") or (root / m.rstrip("/")).is_dir())]
    if wanted and not found:
        raise BotRootError(f"bot root {root} does not look like the bot's working directory: none of "
                           f"{', '.join(wanted)} exists (set --bot-root or bot_root: to the directory "
                           f"the bot runs in)")
    return found


@dataclass
class Preflight:
    """The report of `config check`: what was looked at, and every problem found."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def config_check(cfg: Config, environ: dict[str, str] | None = None) -> Preflight:
    """Bot root, `.env`, required variables (presence only) and limits; no network, no quota.

    The variables and limits are judged by the same code as FP-5.1 and FP-5.2, called directly
    (not through the engine, which would ask the broker for the market phase).
    """
    from ..checks import registry
    from ..core.model import Status

    out = Preflight()
    out.lines.append(f"config: {cfg.source}")
    try:
        found = require_bot_root(cfg)
    except BotRootError as exc:
        out.problems.append(str(exc))
        return out
    out.lines.append(f"bot root: {cfg.bot_root} ({', '.join(found) or 'no layout markers configured'} found)")
    dotenv = cfg.bot_root / ".env"
    env = BotEnv.load(cfg.bot_root, os.environ if environ is None else environ)
    if env.dotenv_error:
        out.problems.append(f".env: {env.dotenv_error}")
    elif dotenv.is_file():
        n = sum(1 for src in env.source.values() if src == ".env")
        out.lines.append(f".env: {dotenv} readable ({n} variables used from it)")
    elif dotenv.exists():
        out.problems.append(f".env: {dotenv} is not a regular file")
    else:
        out.lines.append(f".env: none in {cfg.bot_root} (variables come from the environment only)")
    checks = registry()

    class _EnvOnly:
        """The part of a check context FP-5.1 and FP-5.2 read: the bot's environment and the config."""

        def __init__(self) -> None:
            self.env = env
            self.config = cfg

    ctx: Any = _EnvOnly()
    for fp, label in (("FP-5.1", "credentials"), ("FP-5.2", "limits")):
        outcome = checks[fp](ctx, cfg.check_settings(fp)["params"])
        if outcome.status is Status.ERROR:
            out.problems.append(f"{label}: {outcome.message}")
        elif outcome.status is Status.WARN:
            out.lines.append(f"{label}: warning: {outcome.message}")
        else:
            out.lines.append(f"{label}: {outcome.message}")
    enabled = cfg.enabled_ids()
    implemented = [p.id for p in cfg.catalog if p.detection == "implemented"]
    out.lines.append(f"checks: {len(enabled)} of {len(implemented)} enabled")
    return out
