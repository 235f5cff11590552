"""Writing files (io.py): every file follows the umask."""
from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

runner = CliRunner()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    from relational_distill.io import atomic_torch_save, atomic_write_json

    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save(tmp_path / "b.pt", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


