"""The import layering of docs/architecture.md, checked by walking every module's imports.

Each module belongs to one layer (the first prefix in ``LAYERS`` that names it) and may import
only from the layers in ``MAY_IMPORT``. Every import counts: at module level, inside a function
(a lazy import) and under ``TYPE_CHECKING``, since each is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("federation", "privacy", "models")

LAYERS = (
    ("federation.wire", "wire"),
    ("federation.errors", "errors"),
    ("federation.client", "client"),
    ("federation.server", "server"),
    ("federation.omop", "omop"),
    ("federation", "top"),  # CLI, console, deployment, simulation, audit: they wire roles together
    ("privacy", "privacy"),
    ("models", "models"),
)
_BASE = {"privacy", "models", "errors", "wire"}
MAY_IMPORT = {
    "privacy": {"privacy"},
    "models": {"models"},
    "errors": {"errors", "privacy"},
    "wire": _BASE,
    "omop": _BASE | {"omop"},
    "client": _BASE | {"client", "omop"},
    "server": _BASE | {"server"},
    "top": {layer for _, layer in LAYERS},
}


def layer_of(module: str) -> str:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} is in no layer")


def source_modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(module: str, source: str, known: set[str], is_package: bool = False):
    """(line, imported module) for every import of the three packages in ``source``;
    ``from X import name`` counts as importing ``X.name`` when that is a module."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here[: len(here) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield node.lineno, target


def violations(module: str, source: str, known: set[str], is_package: bool = False) -> list[str]:
    """One line per import that breaks a layer rule or names a module that does not exist."""
    found = []
    layer = layer_of(module)
    for line, target in imports_of(module, source, known, is_package):
        if target not in known:
            found.append(f"{module}:{line} imports {target}, which is no module of the tree")
        elif layer_of(target) not in MAY_IMPORT[layer]:
            allowed = ", ".join(sorted(MAY_IMPORT[layer]))
            found.append(
                f"{module}:{line} imports {target}: the {layer} layer may import only {allowed}"
            )
    return found


def test_every_import_follows_the_layers():
    modules = source_modules()
    known = set(modules)
    found = [
        problem
        for name, path in modules.items()
        for problem in violations(name, path.read_text(), known, path.name == "__init__.py")
    ]
    assert not found, "\n".join(found)


def test_the_walk_sees_every_kind_of_import():
    """The checker itself: each form of a forbidden import is caught, an allowed one is not."""
    known = set(source_modules())
    forbidden = {
        "federation.server.app": "from federation.deploy.certs import make_ca",
        "federation.server.analysis": "from federation.client import data",
        "federation.client.data": "def f():\n    from federation.server.outputs import MODEL",
        "federation.wire.spec": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from federation.omop.source import Source",
        "federation.client.features": "from ..server import outputs",
        "privacy.ledger": "import federation.errors",
        "models.registry": "from privacy import noise",
    }
    for module, source in forbidden.items():
        assert len(violations(module, source, known)) == 1, (module, source)
    allowed = {
        "federation.server.app": "from federation.wire import protocol as p",
        "federation.client.data": "from . import partition\nfrom federation.omop import extract",
        "federation.cli": "from federation.server.outputs import SUMMARY",
        "privacy.statistics": "from privacy.noise import gaussian",
    }
    for module, source in allowed.items():
        assert violations(module, source, known) == [], (module, source)
    moved = violations("federation.client.site", "from federation.spec import StudySpec", known)
    assert moved == [
        "federation.client.site:1 imports federation.spec, which is no module of the tree"
    ]
