"""Rich progress bars with rate and ETA; ``quiet`` turns them off."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"? {self.unit}/s", style="cyan")


class Bar:
    """Handle returned by :func:`progress_bar`; ``advance(n, info=...)`` moves it on."""

    def __init__(self, progress: Progress | None = None, task=None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **({"info": info} if info is not None else {}))


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False, unit: str = "it") -> Iterator[Bar]:
    if quiet:
        yield Bar()
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=console) as progress:
        yield Bar(progress, progress.add_task(description, total=total, info=""))
