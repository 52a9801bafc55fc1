"""``trading-readiness generate``: render the rules, the Alertmanager configuration and the
dashboards from a mixin config (docs/configuration.md#mixin-config) into a directory.

The operator's way to change selectors, bot labels, durations and URLs without editing Python:
the committed artefacts are exactly this output for the default config (`make generate`). The
files keep their paths in this repository (``rules/``, ``alertmanager/``, ``grafana/``) below
the output directory. Everything is rendered before anything is written, so a bad config
leaves the directory untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from grafana.dashboards import artefacts as dashboard_artefacts

from .config import ConfigError, load_config
from .generate import artefacts as rule_artefacts

EXIT_CONFIG = 3


def render(cfg: dict[str, Any]) -> dict[str, str]:
    """{relative path: text} of everything the mixin config decides."""
    return {**rule_artefacts(cfg), **dashboard_artefacts(cfg)}


def generate(cfg: dict[str, Any], out_dir: Path) -> list[str]:
    """Render ``cfg`` and write it below ``out_dir``; returns the relative paths written.

    Each file is replaced atomically, so Prometheus or Grafana never read half a file.
    """
    files = render(cfg)
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return list(files)


def cli_generate(args: argparse.Namespace) -> int:
    """The command: exit 3 with one line naming the key on a bad config, writing nothing."""
    try:
        cfg = load_config(Path(args.mixin) if args.mixin else None)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out)
    for rel in generate(cfg, out):
        print(f"wrote {out / rel}")
    return 0
