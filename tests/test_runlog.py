"""The run log (engine/runlog.py): log.jsonl, and TensorBoard scalars equal to it, read back with tensorboard's own
reader."""
from __future__ import annotations

import json
import sys

import pytest

from relational_distill.engine.distill import distill
from relational_distill.engine.runlog import RunLog

from .conftest import tiny_distill_config


def test_tensorboard_scalars_equal_the_log(town, store_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    distill(town, store_dir, out, tiny_distill_config(loss="similarity", epochs=2, eval_every=1), quiet=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    board = EventAccumulator(str(out / "tensorboard"))
    board.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if "step" in row and key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                expected.setdefault(key, []).append((row["step"], value))
    assert {"loss", "lr", "val_zero_shot_miou", "uniformity", "tolerance", "modality_gap"} <= set(expected)
    assert set(board.Tags()["scalars"]) == set(expected)
    for key, points in expected.items():
        events = board.Scalars(key)
        assert [e.step for e in events] == [s for s, _ in points]
        assert [e.value for e in events] == pytest.approx([v for _, v in points], rel=1e-6)  # stored as float32


def test_without_tensorboard_the_log_is_written_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it now fails
    log = RunLog(tmp_path)
    log.write({"step": 1, "epoch": 0, "loss": 0.5})
    log.close()
    assert "not installed" in log.notice and "pip install" in log.notice
    assert not (tmp_path / "tensorboard").exists()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 1, "epoch": 0, "loss": 0.5}
