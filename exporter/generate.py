"""Regenerate every committed artefact from the catalog (`make generate`).

Each generator is a function returning {relative path: text}; the drift tests call the same
functions and compare with the committed files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from .catalog import load
from .render import catalog_markdown

REPO = Path(__file__).resolve().parent.parent


def docs() -> dict[str, str]:
    return {"docs/FAILURE_POINTS.md": catalog_markdown(load())}


#: "module:function" of every generator; modules that are not present yet are skipped.
GENERATORS: list[str] = [
    "exporter.generate:docs",
    "exporter.rulegen:artefacts",
    "exporter.deploygen:artefacts",
    "grafana.dashboards:artefacts",
    "exporter.readme:artefacts",
]


def all_artefacts() -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in GENERATORS:
        mod_name, func = spec.split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                continue
            raise
        fn: Callable[[], dict[str, str]] = getattr(mod, func)
        out.update(fn())
    return out


def main() -> None:
    for rel, text in all_artefacts().items():
        path = REPO / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text() if path.exists() else None
        if old != text:
            path.write_text(text)
            print(f"wrote {rel}")


if __name__ == "__main__":
    main()
