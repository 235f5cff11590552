"""The wheel: every package listed, the configs and data files shipped."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from typer.testing import CliRunner

from .helpers import ROOT

runner = CliRunner()


def test_every_package_is_in_the_wheel_list():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "relational_distill").rglob("__init__.py")}
    assert found | {"relational_distill.configs"} == listed


def test_wheel_ships_the_configs(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    for name in ("relational_distill", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PIP_NO_CACHE_DIR="1"))
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))).namelist()
    for config in sorted(p.name for p in (ROOT / "configs").glob("*.yaml")):
        assert f"relational_distill/configs/{config}" in names
    assert "relational_distill/checkpoint.py" in names
    assert "relational_distill/data/semantic_kitti.yaml" in names  # the SemanticKITTI learning map


