"""An import-linter contract type the built-in ones lack: no module imports another module's
private name (``from .broker import _Session``). A name two modules share is public; a private
name is its module's own business, free to change without reading the rest of the tree.

Registered under ``contract_types`` in pyproject.toml's ``[tool.importlinter]``.
"""

from __future__ import annotations

import ast
import importlib.util
from typing import Any

from importlinter import Contract, ContractCheck, fields, output


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imported_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


class PrivateNamesContract(Contract):
    """Modules under ``containers`` import no ``_name`` from another module."""

    type_name = "private_names"
    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        violations: list[str] = []
        for module in sorted(graph.modules):
            if not any(module == c or module.startswith(c + ".") for c in self.containers):  # type: ignore[attr-defined]
                continue
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                continue
            is_package = spec.submodule_search_locations is not None
            with open(spec.origin, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), spec.origin)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                source = _imported_from(node, module, is_package)
                if source == module:
                    continue
                for alias in node.names:
                    if _private(alias.name):
                        violations.append(f"{module} imports {alias.name} from {source} (l.{node.lineno})")
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["violations"]:
            output.print_error(f"- {line}", bold=False)
            output.new_line()
