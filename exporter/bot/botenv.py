"""Credentials and limits, read the way stock-bot reads them.

Process environment first, then ``<bot root>/.env``; every alias BOT.md lists; stray whitespace
and quotes stripped (a quoted key in .env is a classic cause of 401s that "work on my shell").
Secret values are collected so every output path can redact them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PAPER_HOST = "paper-api.alpaca.markets"
DEFAULT_ALPACA_URL = "https://paper-api.alpaca.markets"
DEFAULT_UW_URL = "https://api.unusualwhales.com"

ALPACA_KEY_VARS = ("ALPACA_KEY", "ALPACA_API_KEY", "APCA_API_KEY_ID")
ALPACA_SECRET_VARS = ("ALPACA_SECRET", "ALPACA_API_SECRET", "APCA_API_SECRET_KEY")
ALPACA_URL_VARS = ("ALPACA_BASE_URL", "APCA_API_BASE_URL")
SECRET_VARS = (*ALPACA_KEY_VARS, *ALPACA_SECRET_VARS, "UW_API_KEY", "TRADING_READINESS_HEALER_TOKEN")

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def clean(value: str | None) -> str | None:
    """Strip whitespace and one level of matching or stray quotes; empty means unset."""
    if value is None:
        return None
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        v = v[1:-1]
    v = v.strip().strip("'\"").strip()
    return v or None


def parse_dotenv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        raw: str = m.group(2) or ""
        # an unquoted value may carry a trailing comment
        if raw and raw[0] not in "'\"" and " #" in raw:
            raw = raw.split(" #", 1)[0]
        value = clean(raw)
        if value is not None:
            out[m.group(1)] = value
    return out


@dataclass
class BotEnv:
    """The merged view of the bot's environment; ``source`` says where each name came from."""

    values: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    dotenv_error: str | None = None

    @classmethod
    def load(cls, bot_root: Path, environ: Mapping[str, str] | None = None) -> BotEnv:
        environ = os.environ if environ is None else environ
        env = cls()
        path = bot_root / ".env"
        try:
            dotenv = parse_dotenv(path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            dotenv = {}
        except OSError as exc:
            dotenv = {}
            env.dotenv_error = f"cannot read {path}: {exc.strerror}"
        for k, v in dotenv.items():
            env.values[k], env.source[k] = v, ".env"
        for k, raw in environ.items():
            value = clean(raw)
            if value is not None:
                env.values[k], env.source[k] = value, "environment"
        return env

    def get(self, *names: str, default: str | None = None) -> str | None:
        for n in names:
            if self.values.get(n):
                return self.values[n]
        return default

    def which(self, *names: str) -> str | None:
        """The first alias that is set (for messages that must not show the value)."""
        return next((n for n in names if self.values.get(n)), None)

    def flag(self, name: str) -> bool:
        """A switch the way the bot reads one (src/audit_guard.py): on for 1, true or yes, any case."""
        return (self.values.get(name) or "").lower() in ("1", "true", "yes")

    def number(self, name: str, default: float) -> float:
        """A numeric limit; raises ValueError naming the variable when it is not a number."""
        raw = self.values.get(name)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} is not a number") from None

    @property
    def alpaca_key(self) -> str | None:
        return self.get(*ALPACA_KEY_VARS)

    @property
    def alpaca_secret(self) -> str | None:
        return self.get(*ALPACA_SECRET_VARS)

    @property
    def alpaca_base_url(self) -> str:
        return (self.get(*ALPACA_URL_VARS) or DEFAULT_ALPACA_URL).rstrip("/")

    @property
    def trading_mode(self) -> str:
        return (self.get("TRADING_MODE") or "PAPER").upper()

    @property
    def uw_key(self) -> str | None:
        return self.get("UW_API_KEY")

    @property
    def uw_base_url(self) -> str:
        return (self.get("UW_BASE_URL") or DEFAULT_UW_URL).rstrip("/")

    def secrets(self) -> list[str]:
        return secret_values(self.values)


def secret_values(values: Mapping[str, str]) -> list[str]:
    """Every secret among environment-style values: the named secrets and URL logins."""
    named = [v for k, v in values.items() if (k in SECRET_VARS or _looks_secret(k)) and len(v) >= 4]
    return named + [c for v in values.values() for c in url_credentials(v)]


_USERINFO = re.compile(r"://([^/?#@\s]+)@")


def url_credentials(value: str | None) -> list[str]:
    """The ``user:password`` of a URL (``https://user:pass@gateway/...``) and the password alone:
    error messages echo base URLs, and a login in one must not leave with it."""
    out: list[str] = []
    for userinfo in _USERINFO.findall(value or ""):
        out.append(userinfo)
        password = userinfo.partition(":")[2]
        if len(password) >= 4:
            out.append(password)
    return [c for c in out if len(c) >= 4]


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(w in upper for w in ("SECRET", "TOKEN", "PASSWORD", "API_KEY", "PASSWD"))


class Redactor:
    """Replaces known secret values in any text that leaves the process."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text
