"""Bad input ends with one clear line naming the file, exit code 2, no traceback."""
from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from relational_distill.cli import app

from .helpers import copy_run, one_line, snapshot

runner = CliRunner()


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0]


def test_missing_dataroot(tmp_path):
    _one_line_error(runner.invoke(app, ["inspect", str(tmp_path / "nope"), "-q"]), str(tmp_path / "nope"))


def test_not_nuscenes(tmp_path):
    (tmp_path / "v1.0-sim").mkdir()
    _one_line_error(runner.invoke(app, ["inspect", str(tmp_path), "-q"]), "sample.json")


def test_unknown_version(town):
    _one_line_error(runner.invoke(app, ["inspect", str(town), "--version", "v9.9", "-q"]), "v9.9", "v1.0-sim")


def test_truncated_pcd(town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    victim = sorted((copy / "samples/LIDAR_TOP").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-7])
    _one_line_error(runner.invoke(app, ["inspect", str(copy), "-q"]), victim.name, "truncated")


def test_make_sim_refuses_non_empty_folder(town):
    _one_line_error(runner.invoke(app, ["make-sim", str(town), "-q"]), str(town))


# -- answers instead of tracebacks ------------------------------------------------------------------------------------
def test_dataset_without_lidarseg_labels(run, town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    (copy / "v1.0-sim" / "lidarseg.json").unlink()
    r = runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--dataroot", str(copy),
                            "--out", str(tmp_path / "zs"), "-q"])
    one_line(r, 2, "no lidarseg labels")
    assert not (tmp_path / "zs" / "zero_shot.json").exists()


def test_nan_miou_is_written_as_null_with_a_reason(run, town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    for f in (copy / "lidarseg").rglob("*.bin"):  # every point labelled 0 (noise -> ignored)
        f.write_bytes(bytes(f.stat().st_size))
    r = runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--dataroot", str(copy),
                            "--out", str(tmp_path / "zs"), "-q"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "zs" / "zero_shot.json").read_text()
    assert "NaN" not in text
    result = json.loads(text)
    assert result["miou"] is None and "no labelled point" in result["miou_null_reason"]


def test_truncated_table_json(town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    table = copy / "v1.0-sim" / "sample_data.json"
    table.write_bytes(table.read_bytes()[:-50])
    one_line(runner.invoke(app, ["inspect", str(copy), "-q"]), 2, str(table), "not valid JSON")


def test_unknown_device(run, town, store_dir, tmp_path):
    one_line(runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--device", "gpu", "-q"]), 2,
             "--device gpu", "cpu, cuda or cuda:N")
    one_line(runner.invoke(app, ["precompute", str(town), "--out", str(tmp_path / "f"), "--device", "gpu", "-q"]), 2,
             "--device gpu")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left")])
def test_read_only_or_full_output_folder(run, town, store_dir, tiny_config, tmp_path, monkeypatch, code, words):
    """Tests run as root here, where chmod cannot make a folder read-only: the OS error is injected where every
    checkpoint write ends (the fsync of its temporary file)."""
    import relational_distill.io as rio

    out = copy_run(run, tmp_path)
    before = snapshot(out)

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rio.os, "fsync", fail)
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--resume", "--epochs", "2", "-q"])
    one_line(r, 2, words, "checkpoint.pt")
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


