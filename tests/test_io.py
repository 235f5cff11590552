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




def test_every_unfinished_write_is_named_by_one_rule(tmp_path, monkeypatch):
    """An atomic write's temporary file, a staged folder and a figure being saved all read as scratch, and an
    interrupted figure leaves no file under its name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from relational_distill.io import atomic_write, folder_lock, is_scratch_file, staging_folder
    from relational_distill.report import save_figure

    seen = []

    def write(f):  # what the folder holds mid-write
        f.write(b"half")
        seen.extend(tmp_path.iterdir())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.json", write)
    assert len(seen) == 1 and is_scratch_file(seen[0]) and not list(tmp_path.iterdir())  # removed again
    assert is_scratch_file(staging_folder(tmp_path / "town")) and staging_folder(tmp_path / "town").parent == tmp_path
    with folder_lock(tmp_path / "run", "run"):
        assert [is_scratch_file(p) for p in (tmp_path / "run").iterdir()] == [True]
    assert not any(is_scratch_file(tmp_path / name) for name in ("a.json", "summary.json", ".hidden", "x.tmp"))
    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", lambda f, **kw: write(f))
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, tmp_path / "plot.png")
    assert is_scratch_file(seen[-1]) and seen[-1].name.startswith(".plot.png.") and not list(tmp_path.glob("*.png"))
    assert not list(tmp_path.glob(".*"))
    assert save_figure(plt.figure(), tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
