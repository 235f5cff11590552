"""Data flows one way (README "Layout"): a module imports only from its own layer or lower ones, and no chain of
imports leads back to where it started. Imports are read with ast, inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "relational_distill"

# Lowest first. A module may import modules of its own layer and of the layers before it.
LAYERS = [
    ("base", ["errors", "io", "store", "classes", "interrupt", "progress", "threads", "config", "checkpoint", "report",
              "results"]),
    ("data", ["data"]),
    ("sim", ["sim"]),
    ("teachers", ["teachers"]),
    ("models", ["models", "losses", "metrics"]),
    ("student", ["student", "scoring"]),
    ("engine", ["engine"]),
    ("cli", ["cli"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against its package; for
    ``from X import Y`` both X and X.Y, since Y may be a module)."""
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


def package_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in files and m != name} for name, path in files.items()}


def layer_of(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for rank, (_, tops) in enumerate(LAYERS):
        if first in tops:
            return rank
    raise AssertionError(f"{module}: in no layer of test_layers.LAYERS; add it to one")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (each reported once, from where the walk met it)."""
    found, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return found


def test_no_import_circle():
    assert cycles(package_graph()) == []


def test_no_module_imports_a_higher_layer():
    graph = package_graph()
    offences = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                for a, targets in sorted(graph.items()) for b in sorted(targets)
                if a != "relational_distill" and layer_of(b) > layer_of(a)]
    assert not offences, offences


def test_readers_do_not_import_the_town_generator():
    """A reader needs to know what a synthetic town is (data/town.py), never how one is made (sim/)."""
    graph = package_graph()
    offences = [(a, b) for a, targets in graph.items() for b in targets
                if not a.startswith(("relational_distill.sim", "relational_distill.cli")) and
                b.startswith("relational_distill.sim")]
    assert not offences, offences


def test_each_dataset_reader_stands_alone():
    """nuScenes and SemanticKITTI share what is dataset-neutral through data/index.py, never through each other."""
    graph = package_graph()
    readers = ("relational_distill.data.nuscenes", "relational_distill.data.semantickitti")
    assert not [(a, b) for a in readers for b in readers if b in graph[a]]
    assert all("relational_distill.data.index" in graph[a] for a in readers)


def test_the_checker_sees_relative_imports_and_circles():
    names = imported_modules(PACKAGE / "data" / "dataset.py")
    assert "relational_distill.data.index" in names and "relational_distill.data.projection" in names
    names = imported_modules(PACKAGE / "engine" / "distill.py")
    assert "relational_distill.teachers.store.FeatureStore" in names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
