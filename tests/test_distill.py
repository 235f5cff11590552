"""Distillation: every loss trains, resume is exact, torchrun DDP keeps ranks identical, NaN stops cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.engine import distill as distill_module
from relational_distill.engine.distill import distill
from relational_distill.checkpoint import load_checkpoint
from relational_distill.engine.training import TrainingDiverged

from .conftest import tiny_distill_config

runner = CliRunner()


@pytest.mark.parametrize("loss", ["contrastive", "similarity", "relational"])
def test_each_loss_lowers_its_loss(town, store_dir, tmp_path, loss):
    cfg = tiny_distill_config(loss=loss, epochs=4, augment=False, block_size=128 if loss != "similarity" else None)
    result = distill(town, store_dir, tmp_path / loss, cfg, quiet=True)
    losses = [e["mean_loss"] for e in result["epochs"]]
    assert losses[-1] < losses[0], losses
    log = [json.loads(line) for line in (tmp_path / loss / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, result["steps"] + 1))
    assert json.loads((tmp_path / loss / "distill.json").read_text())["loss"] == loss


def test_killed_run_resumes_to_the_same_weights(town, store_dir, tmp_path):
    cfg = tiny_distill_config(loss="relational", epochs=2)
    distill(town, store_dir, tmp_path / "straight", cfg, quiet=True)

    def kill(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(town, store_dir, tmp_path / "killed", cfg, quiet=True, on_epoch_end=kill)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt").epoch == 1
    resumed = distill(town, store_dir, tmp_path / "killed", cfg, quiet=True, resume=True)
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt").model
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt").model
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows = [json.loads(x) for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps))
    assert [r["event"] for r in rows if "event" in r] == ["resume"]  # appended, nothing emptied


def test_nan_loss_stops_and_keeps_last_good_checkpoint(town, store_dir, tmp_path, monkeypatch):
    real = distill_module.make_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(k, q):
            calls["n"] += 1
            value = fn(k, q)
            return value * float("nan") if calls["n"] > 2 else value
        return wrapped

    monkeypatch.setattr(distill_module, "make_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        distill(town, store_dir, tmp_path / "nan", tiny_distill_config(epochs=3), quiet=True)
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt").epoch == 1


def test_store_of_another_teacher_is_refused(town, store_dir, tmp_path):
    result = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(tmp_path / "x"),
                                 "--teacher", "openclip:ViT-B-16/openai", "-q"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "openclip:ViT-B-16/openai" in result.output


def test_torchrun_two_processes_end_with_identical_weights(town, store_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "relational_distill.cli", "distill", str(town), "--features", str(store_dir), "--out", str(out),
           "--epochs", "1", "--batch-size", "2", "--num-pairs", "128", "--preset", "small", "--workers", "0", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "distill.json").read_text())
    assert result["world_size"] == 2
    assert len(result["rank_checksums"]) == 2 and len(set(result["rank_checksums"])) == 1


def test_slidr_superpixel_contrastive_trains(town, store_dir, tmp_path):
    cfg = tiny_distill_config(loss="contrastive", epochs=1, superpixels=30)
    result = distill(town, store_dir, tmp_path / "slidr", cfg, quiet=True)
    assert result["steps"] > 0 and all(e["mean_loss"] > 0 for e in result["epochs"])
    with pytest.raises(Exception, match="contrastive only"):
        distill(town, store_dir, tmp_path / "bad", tiny_distill_config(loss="relational", superpixels=30), quiet=True)
