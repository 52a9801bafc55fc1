"""Regenerate every committed artefact from the catalog (`make generate`).

Each generator is a function returning {relative path: text}; the drift tests call the same
functions and compare with the committed files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from .core.catalog import load
from .tools.render import catalog_markdown

REPO = Path(__file__).resolve().parent.parent


def docs() -> dict[str, str]:
    return {"docs/FAILURE_POINTS.md": catalog_markdown(load())}


class GeneratorMissing(LookupError):
    """A listed generator cannot be loaded: its artefacts would silently stop being checked."""


#: "module:function" of every generator; each must exist (a missing one is an error, never skipped).
GENERATORS: list[str] = [
    "exporter.generate:docs",
    "rules.generate:artefacts",
    "rules.deploy:artefacts",
    "grafana.dashboards:artefacts",
    "exporter.readme:artefacts",
]


def load_generator(spec: str) -> Callable[[], dict[str, str]]:
    mod_name, _, func = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise GeneratorMissing(f"generator {spec} is listed in exporter/generate.py but module "
                                   f"{exc.name} does not exist") from exc
        raise
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise GeneratorMissing(f"generator {spec} is listed in exporter/generate.py but {mod_name} has no "
                               f"function {func!r}")
    return fn  # type: ignore[no-any-return]


def all_artefacts() -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in GENERATORS:
        out.update(load_generator(spec)())
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
