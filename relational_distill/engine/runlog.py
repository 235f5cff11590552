"""``log.jsonl``, the step log of a training run: one JSON object a line, only ever appended to (a line cut short
by a kill stays alone on its line), flushed after every row so that a watcher and a resumed run see every step.
Read back by report.read_log (``rdistill plot``); it is the source of truth.

With ``tensorboard`` installed (``pip install "relational_distill[tensorboard]"``) every numeric field of a row
that has a ``step`` (loss, lr, the ``--eval-every`` mIoU and U / T / G) is also written as a TensorBoard scalar
into ``RUN/tensorboard/``, the event files the field's tools write, for watching a run while it goes."""
from __future__ import annotations

import json
from pathlib import Path

LOG = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"
NOT_SCALARS = ("step", "epoch", "time")


def _summary_writer(folder: Path):
    """A TensorBoard writer into ``folder``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder), flush_secs=10)


class RunLog:
    """The one writer of a run folder's ``log.jsonl`` (and of its TensorBoard scalars)."""

    def __init__(self, folder: Path, tensorboard: bool = True) -> None:
        self.path = Path(folder) / LOG
        self._file = open(self.path, "a")
        if self._file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")
        self.board_dir = Path(folder) / TENSORBOARD_DIR
        self._board = _summary_writer(self.board_dir) if tensorboard else None

    @property
    def empty(self) -> bool:
        """True when nothing was ever written to the log."""
        return self._file.tell() == 0

    @property
    def notice(self) -> str:
        """One line saying where the TensorBoard event files are, or why there are none."""
        if self._board is None:
            return (f"tensorboard is not installed: no event files (pip install \"relational_distill[tensorboard]\"); "
                    f"{self.path} has every step")
        return f"TensorBoard event files: {self.board_dir} (tensorboard --logdir {self.board_dir})"

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._board is not None and "step" in row:
            for key, value in row.items():
                if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._board is not None:
            self._board.close()
