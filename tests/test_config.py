"""Configs (config.py): bad values are one line naming the key, YAML's exponents, null, configs by name or path."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.errors import UserError

from .helpers import ROOT, one_line

runner = CliRunner()


@pytest.mark.parametrize("text, fragments", [
    ("lr: '1e-3'", ["lr = '1e-3' (str)", "a number > 0"]),
    ("lr: -0.1", ["lr = -0.1", "a number > 0"]),
    ("batch_size: 0", ["batch_size = 0", "an integer >= 1"]),
    ("epochs: 2.5", ["epochs = 2.5", "an integer >= 0"]),
    ("augment: 'yes'", ["augment = 'yes'", "true or false"]),
    ("warmup_fraction: 1.5", ["warmup_fraction = 1.5", "in [0, 1]"]),
    ("optimizer: adam", ["optimizer = 'adam'", "one of adamw, sgd"]),
    ("eval_every: -1", ["eval_every = -1", "an integer >= 0"]),
    ("num_pairs: 0", ["num_pairs = 0", "an integer >= 1 (or null)"]),
    ("epochs: 1\nbogus: 3", ["unknown key(s) bogus"]),
])
def test_bad_config_values_are_one_line(town, store_dir, tmp_path, text, fragments):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(tmp_path / "x"),
                            "--config", str(bad), "-q"])
    one_line(r, 2, str(bad), *fragments)
    assert not (tmp_path / "x").exists()


def test_bad_flag_values_are_one_line(town, store_dir, tmp_path):
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(tmp_path / "x"),
                            "--lr", "-1", "-q"])
    one_line(r, 2, "--lr", "lr = -1.0", "a number > 0")
    r = runner.invoke(app, ["make-sim", str(tmp_path / "t"), "--samples-per-scene", "0", "-q"])
    one_line(r, 2, "samples_per_scene=0")
    assert not (tmp_path / "t").exists() and not (tmp_path / "x").exists()


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    from relational_distill.config import load_config
    from relational_distill.engine.distill import DistillConfig

    (tmp_path / "c.yaml").write_text("lr: 1e-3\nweight_decay: 5E-5\n")
    cfg = load_config(DistillConfig, tmp_path / "c.yaml", {})
    assert cfg.lr == 0.001 and cfg.weight_decay == 5e-5


def test_null_means_every_pair(tmp_path):
    from relational_distill.config import load_config
    from relational_distill.engine.distill import DistillConfig

    (tmp_path / "c.yaml").write_text("num_pairs: null\npairs_per_sample: null\neval_every: 2\n")
    cfg = load_config(DistillConfig, tmp_path / "c.yaml", {})
    assert cfg.num_pairs is None and cfg.pairs_per_sample is None and cfg.eval_every == 2


def test_config_by_name_or_path(tmp_path):
    from relational_distill.config import CONFIG_DIR, load_config
    from relational_distill.engine.distill import DistillConfig

    by_name = load_config(DistillConfig, Path("distill_cpu"), {})
    by_path = load_config(DistillConfig, ROOT / "configs" / "distill_cpu.yaml", {})
    assert by_name == by_path and CONFIG_DIR.resolve() == (ROOT / "configs").resolve()
    with pytest.raises(UserError, match="distill_cpu, distill_gpu"):
        load_config(DistillConfig, Path("distill_nope"), {})


