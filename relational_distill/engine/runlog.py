"""``log.jsonl``, the step log of a training run: one JSON object a line, only ever appended to (a line cut short
by a kill stays alone on its line), flushed after every row so that a watcher and a resumed run see every step.
Read back by report.read_log (``rdistill plot``)."""
from __future__ import annotations

import json
from pathlib import Path

LOG = "log.jsonl"


class RunLog:
    """The one writer of a run folder's ``log.jsonl``."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOG
        self._file = open(self.path, "a")
        if self._file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")

    @property
    def empty(self) -> bool:
        """True when nothing was ever written to the log."""
        return self._file.tell() == 0

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
