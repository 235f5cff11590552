"""Human-readable tables (rich) beside machine-readable JSON."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from .io import atomic_write_json

stdout = Console()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(str(c), justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    stdout.print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_result(path: Path, result: dict) -> Path:
    """Write ``result`` as JSON at ``path`` (atomically) and return the path."""
    atomic_write_json(Path(path), result)
    return Path(path)
