"""Dependencies point one way: cli -> app -> server -> pipeline -> stages -> (providers,
stores, ...) -> decide -> config -> (model, errors). Decisions do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

RANK = {
    "gateway.model": 0,
    "gateway.errors": 0,
    "gateway.jsonbytes": 0,
    "gateway.config": 1,
    "gateway.decide": 2,
    "gateway.transcode": 2,
    "gateway.providers": 3,
    "gateway.stores": 3,
    "gateway.downstream": 3,
    "gateway.lifecycle": 3,
    "gateway.ejections": 4,
    "gateway.accesslog": 3,
    "gateway.metrics": 3,
    "gateway.tokens": 3,
    "gateway.breakers": 3,
    "gateway.stages": 4,
    "gateway.pipeline": 5,
    "gateway.server": 6,
    "gateway.admin": 6,
    "gateway.app": 7,
    "gateway.cli": 8,
    "gateway.__main__": 9,
}
IO_LIBRARIES = {"aiohttp", "redis", "sqlite3", "asyncio", "socket", "time", "os", "pybreaker"}


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _rank(module: str) -> int | None:
    for prefix, rank in RANK.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def _imports(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", [m for m in _modules() if _rank(m) is not None])
def test_module_imports_only_from_layers_below_it(module: str) -> None:
    rank = _rank(module)
    assert rank is not None
    upward = []
    for imported in _imports(module):
        if imported.startswith("gateway.mock"):
            # The mock is a leaf: only the composition root, the CLI and the loader (to
            # validate a mock provider's knobs) may reach it.
            assert module in ("gateway.app", "gateway.cli", "gateway.config.load"), module
            continue
        other = _rank(imported)
        if other is not None and other > rank:
            upward.append(imported)
    assert upward == [], f"{module} imports from a layer above it: {upward}"


@pytest.mark.parametrize("module", [m for m in _modules() if m.startswith("gateway.decide")])
def test_decisions_do_no_io(module: str) -> None:
    io = {m for m in _imports(module) if m.split(".")[0] in IO_LIBRARIES}
    assert io == set(), f"{module} imports {io}"


@pytest.mark.parametrize("module", [m for m in _modules() if m.startswith("gateway.mock")])
def test_mock_stands_alone(module: str) -> None:
    gateway_imports = {m for m in _imports(module) if m.startswith("gateway.")}
    assert all(m.startswith("gateway.mock") for m in gateway_imports), gateway_imports


def test_only_the_composition_root_builds_concrete_stores_and_providers() -> None:
    concrete = ("gateway.stores.sqlite", "gateway.stores.redis", "gateway.providers.openai")
    users = {m for m in _modules() if any(c in _imports(m) for c in concrete)}
    assert users == {"gateway.app"}
