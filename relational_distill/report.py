"""Human-readable tables (rich) beside machine-readable JSON."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from .io import atomic_write, atomic_write_json
from .results import Result

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


def write_result(path: Path, result: dict | Result) -> Path:
    """Write ``result`` (a dict, or a typed result of results.py) as JSON at ``path`` (atomically) and return the
    path."""
    atomic_write_json(Path(path), result.to_json() if isinstance(result, Result) else result)
    return Path(path)


EVAL_KEYS = ("val_zero_shot_miou", "uniformity", "tolerance", "modality_gap")  # what an --eval-every row holds


def _is_number(value, integer: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integer else (int, float))


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """The rows of a run's log.jsonl that describe its current state: (training steps with a loss, evaluations
    written by distill --eval-every), each in step order.

    The log is append-only (docs/reliability.md), so this reader applies what its event lines mean: a ``start``
    event (a run started again after a kill before its first checkpoint) drops every row before it; a ``resume``
    event at step s drops the rows after step s (steps the killed run did after its last checkpoint, and their
    evaluations), which the resumed run writes again; of two rows of one kind at the same step the last counts. A
    line cut short by a kill, lines that are not UTF-8 or too deeply nested, lines without an integer step and rows
    whose values are not numbers are skipped."""
    import json

    steps: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(row, dict) or (row.get("event") != "start" and not _is_number(row.get("step"), integer=True)):
            continue
        if row.get("event") == "start":
            steps.clear()
            evals.clear()
        elif row.get("event") == "resume":
            for rows in (steps, evals):
                for s in [s for s in rows if s > row["step"]]:
                    del rows[s]
        elif "loss" in row and _is_number(row["loss"]):
            steps[row["step"]] = row
        elif "val_zero_shot_miou" in row and all(_is_number(row.get(k)) for k in EVAL_KEYS):
            evals[row["step"]] = row
    return [steps[s] for s in sorted(steps)], [evals[s] for s in sorted(evals)]


def plot_runs(runs: Sequence[Path], path: Path, smooth: int = 10) -> Path:
    """One PNG of the learning curves of ``runs`` (run folders with a log.jsonl): loss (running mean over
    ``smooth`` steps), val zero-shot mIoU, and U / T / G of the student's features, each against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = plt.get_cmap("tab10")
    for i, run in enumerate(runs):
        steps, evals = read_log(Path(run) / "log.jsonl")
        name, colour = Path(run).name, colours(i % 10)
        if steps:
            loss = np.array([r["loss"] for r in steps])
            kernel = np.ones(min(smooth, len(loss))) / min(smooth, len(loss))
            axes[0].plot([r["step"] for r in steps][len(kernel) - 1:], np.convolve(loss, kernel, "valid"),
                         color=colour, label=name)
        if evals:
            x = [r["step"] for r in evals]
            axes[1].plot(x, [100 * r["val_zero_shot_miou"] for r in evals], "o-", color=colour, label=name)
            for key, style in (("uniformity", "-"), ("tolerance", "--"), ("modality_gap", ":")):
                axes[2].plot(x, [r[key] for r in evals], style, marker=".", color=colour)
    axes[0].set(title="distillation loss", xlabel="step")
    axes[1].set(title="val zero-shot mIoU (%)", xlabel="step")
    axes[2].set(title="U (solid), T (dashed), G (dotted)", xlabel="step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG at ``path`` atomically (:func:`atomic_write`), close it, return path."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    return Path(path)
