"""Bad input ends with one clear line naming the file, exit code 2, no traceback."""
from __future__ import annotations

import shutil

from typer.testing import CliRunner

from relational_distill.cli import app

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
