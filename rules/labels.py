"""Which bot a series is about, in PromQL and in alert templates.

A bot is the set of target labels the operator gives it in the scrape config (``job``,
``instance``, ``bot``, ``env``, ...), never a label the exporter invents. The rules and the
dashboards aggregate and join through these helpers, so every target label survives (or, with a
configured ``group_by``, exactly those labels) and two bots behind one job never share a verdict.
"""

from __future__ import annotations

from typing import Any

from .config import POINT_LABELS


def per_bot(cfg: dict[str, Any]) -> str:
    """The aggregation clause that leaves one series per bot: ``without`` the point labels, so
    every target label survives, or ``by`` the configured ``group_by``."""
    if cfg["group_by"]:
        return f"by ({', '.join(cfg['group_by'])})"
    return f"without ({', '.join(POINT_LABELS)})"


def on_bot(cfg: dict[str, Any]) -> str:
    """Vector matching of a per-point (or per-bot) series with a per-bot one: the bot's labels."""
    if cfg["group_by"]:
        return f"on ({', '.join(cfg['group_by'])})"
    return f"ignoring ({', '.join(POINT_LABELS)})"


def on_point(cfg: dict[str, Any]) -> str:
    """Vector matching of two per-point series: the bot's labels and ``fp``, whatever else they carry."""
    if cfg["group_by"]:
        return f"on ({', '.join([*cfg['group_by'], 'fp'])})"
    return f"ignoring ({', '.join(label for label in POINT_LABELS if label != 'fp')})"


def bot_name(cfg: dict[str, Any]) -> str:
    """Alert template text naming the bot: its bot label, else its instance."""
    return f"{{{{ or $labels.{cfg['bot_label']} $labels.instance }}}}"
