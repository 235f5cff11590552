"""Data flows one way: data -> teachers -> engine. A lower layer never imports a higher one (read with ast)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "relational_distill"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against its package)."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # the package a relative import starts from
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer, forbidden", [
    ("data", ("relational_distill.teachers", "relational_distill.engine")),
    ("teachers", ("relational_distill.engine",)),
])
def test_lower_layers_do_not_import_higher_ones(layer, forbidden):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    offences = [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in files
                for name in sorted(imported_modules(path)) if name.startswith(forbidden)]
    assert not offences, offences


def test_the_checker_sees_relative_imports():
    """The parser must resolve ``from ..teachers.store import X`` inside data/ to relational_distill.teachers."""
    names = imported_modules(PACKAGE / "data" / "dataset.py")
    assert "relational_distill.data.nuscenes" in names and "relational_distill.data.projection" in names
    names = imported_modules(PACKAGE / "engine" / "distill.py")
    assert "relational_distill.teachers.store.FeatureStore" in names
