"""Checkpoints (checkpoint.py): files that carry code, damaged files and checkpoints of the wrong kind are one-line
errors, and nothing is run or changed (docs/reliability.md)."""
from __future__ import annotations

from pathlib import Path
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from relational_distill.checkpoint import load_checkpoint
from relational_distill.cli import app

from .helpers import copy_run, one_line

runner = CliRunner()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("command", ["evaluate", "finetune", "analyze"])
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, command):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": 2, "model": _Evil(str(marker))}, evil)
    args = {"evaluate": ["evaluate", str(evil), "--zero-shot"], "analyze": ["analyze", str(evil)],
            "finetune": ["finetune", str(evil), "--out", str(tmp_path / "ft")]}[command]
    one_line(runner.invoke(app, args + ["-q"]), 2, str(evil), "nothing in it was run")
    assert not marker.exists()
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "flipped byte", "no format", "older format",
                                    "weights do not fit"])
def test_damaged_checkpoint_is_one_line(run, tmp_path, damage):
    ckpt = copy_run(run, tmp_path) / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    if damage == "random bytes":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":  # inside the first weight tensor's storage; the file keeps its size
        with zipfile.ZipFile(ckpt) as z:
            info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
        name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
        data[info.header_offset + 30 + int(name_len) + int(extra_len) + 16] ^= 0x40  # local header, then the bytes
        ckpt.write_bytes(data)
    elif damage == "no format":
        torch.save({"model": {}, "meta": {}}, ckpt)
    elif damage == "older format":  # rdistill 0.1 stored the numpy RNG state as an ndarray: not weights-only
        torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}}, ckpt)
    else:  # a well-formed checkpoint whose meta names another student than its weights
        from dataclasses import replace

        from relational_distill.checkpoint import save_checkpoint

        state = load_checkpoint(ckpt)
        save_checkpoint(ckpt, replace(state.meta, preset="minkunet34"), state.model, state.epoch, state.step)
    before = ckpt.read_bytes()
    expected = {"random bytes": "nothing in it was run", "truncated": "truncated", "flipped byte": "sha256",
                "no format": "no format version", "older format": "older rdistill",
                "weights do not fit": "do not fit the student"}[damage]
    one_line(runner.invoke(app, ["evaluate", str(ckpt), "--zero-shot", "-q"]), 2, str(ckpt), expected)
    assert ckpt.read_bytes() == before


def test_checkpoint_of_the_wrong_kind(run, tmp_path):
    ft = tmp_path / "ft"
    torch.manual_seed(0)
    r = runner.invoke(app, ["finetune", str(run / "checkpoint.pt"), "--out", str(ft), "--epochs", "0", "-q"])
    assert r.exit_code == 0, r.output
    one_line(runner.invoke(app, ["finetune", str(ft / "checkpoint.pt"), "--out", str(tmp_path / "ft2"), "-q"]), 2,
             "'finetune' checkpoint", "distill")


