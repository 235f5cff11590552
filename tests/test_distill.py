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
    losses = [e["mean_loss"] for e in result.epochs]
    assert losses[-1] < losses[0], losses
    log = [json.loads(line) for line in (tmp_path / loss / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, result.steps + 1))
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
    assert [e["epoch"] for e in resumed.epochs] == [0, 1]
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


def test_slidr_superpixel_contrastive_trains_from_stored_superpixels(town, store_dir, tmp_path, monkeypatch):
    """Superpixels come from their store (made by precompute --superpixels); training never runs SLIC."""
    import shutil

    from relational_distill.data import superpixels as superpixel_module
    from relational_distill.engine.precompute import PrecomputeConfig, precompute
    from relational_distill.errors import UserError

    from .conftest import TOWN_IMAGE

    features = tmp_path / "features"
    shutil.copytree(store_dir, features)
    cfg = tiny_distill_config(loss="contrastive", epochs=1, superpixels=30)
    with pytest.raises(UserError, match="--superpixels 30"):
        distill(town, features, tmp_path / "missing", cfg, quiet=True)
    result = precompute(PrecomputeConfig(dataroot=town, out=features, teacher="sim-clip:clean", image_size=TOWN_IMAGE,
                                         superpixels=30, summary_per_class=100, quiet=True))
    assert result.computed == 0 and result.superpixels["computed"] > 0

    def no_slic(*args, **kwargs):
        raise AssertionError("SLIC ran during training")

    monkeypatch.setattr(superpixel_module, "slic_superpixels", no_slic)
    result = distill(town, features, tmp_path / "slidr", cfg, quiet=True)
    assert result.steps > 0 and all(e["mean_loss"] > 0 for e in result.epochs)
    with pytest.raises(Exception, match="contrastive only"):
        distill(town, features, tmp_path / "bad", tiny_distill_config(loss="relational", superpixels=30), quiet=True)


def test_log_reader_applies_resume_and_start_events(tmp_path):
    """report.read_log on an append-only log: a resume at step s drops the rows after s written before it (steps
    and --eval-every rows alike), a redone step counts once with its last line, a start event drops all before it."""
    from relational_distill.report import read_log

    def ev(step: int, epoch: int, miou: float) -> dict:
        return {"step": step, "epoch": epoch, "val_zero_shot_miou": miou, "uniformity": 1.0, "tolerance": 0.5,
                "modality_gap": 0.1}

    lines = [{"step": 1, "epoch": 0, "loss": 5.0}, {"step": 2, "epoch": 0, "loss": 4.0}, ev(2, 0, 0.1),
             {"step": 3, "epoch": 1, "loss": 9.0}, {"step": 4, "epoch": 1, "loss": 9.0}, ev(4, 1, 0.9)]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 5, "ep\n'  # killed before epoch 1's checkpoint
    text += json.dumps({"event": "resume", "epoch": 1, "step": 2, "changed": {}}) + "\n"
    text += "".join(json.dumps(x) + "\n" for x in [{"step": 3, "epoch": 1, "loss": 3.0},
                                                    {"step": 4, "epoch": 1, "loss": 2.0}, ev(4, 1, 0.2)])
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    steps, evals = read_log(path)
    assert [(r["step"], r["loss"]) for r in steps] == [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.0)]
    assert [(r["step"], r["val_zero_shot_miou"]) for r in evals] == [(2, 0.1), (4, 0.2)]
    path.write_text(text + '{"event": "start"}\n' + json.dumps({"step": 1, "epoch": 0, "loss": 7.0}) + "\n")
    assert read_log(path) == ([{"step": 1, "epoch": 0, "loss": 7.0}], [])


def test_eval_every_rows_survive_a_kill_and_resume(town, store_dir, tmp_path):
    from relational_distill.report import plot_runs, read_log

    cfg = tiny_distill_config(loss="relational", epochs=2, eval_every=1)

    def kill(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after epoch 0's checkpoint and evaluation
        distill(town, store_dir, tmp_path / "run", cfg, quiet=True, on_epoch_end=kill)
    resumed = distill(town, store_dir, tmp_path / "run", cfg, quiet=True, resume=True)
    steps, evals = read_log(tmp_path / "run" / "log.jsonl")
    per_epoch = resumed.steps // 2
    assert [r["step"] for r in steps] == list(range(1, resumed.steps + 1))
    assert [(r["step"], r["epoch"]) for r in evals] == [(per_epoch, 0), (2 * per_epoch, 1)]
    assert all(set(r) == {"step", "epoch", "val_zero_shot_miou", "uniformity", "tolerance", "modality_gap"}
               for r in evals)
    assert all(0.0 <= r["val_zero_shot_miou"] <= 1.0 for r in evals)
    means = [sum(r["loss"] for r in steps if r["epoch"] == e) / per_epoch for e in (0, 1)]
    assert [e["mean_loss"] for e in resumed.epochs] == pytest.approx(means, rel=1e-12)
    assert plot_runs([tmp_path / "run"], tmp_path / "curves.png").stat().st_size > 0


def test_eval_every_logs_the_zero_shot_miou_evaluate_reports(town, store_dir, tmp_path):
    from relational_distill.engine.evaluate import evaluate
    from relational_distill.report import read_log

    cfg = tiny_distill_config(loss="similarity", epochs=1, eval_every=1)
    distill(town, store_dir, tmp_path / "run", cfg, quiet=True)
    _, evals = read_log(tmp_path / "run" / "log.jsonl")
    want = evaluate(tmp_path / "run" / "checkpoint.pt", zero_shot=True, quiet=True).miou
    assert len(evals) == 1 and evals[0]["val_zero_shot_miou"] == pytest.approx(want, abs=1e-12)


def test_teacher_mean_head_bias_is_the_mean_paired_teacher_feature(town, store_dir, index, tmp_path):
    """head_bias teacher-mean: teacher_mean over every pair equals a brute-force mean over the pairs of every train
    sample, and the distilled checkpoint's head bias is teacher_mean's value, unchanged by training."""
    from relational_distill.data.dataset import load_sample
    from relational_distill.engine.distill import teacher_mean
    from relational_distill.teachers.store import FeatureStore

    store = FeatureStore.open(store_dir)
    train = index.split("train")
    total, count = 0.0, 0
    for sample in train:
        for q in load_sample(index, sample, store)["pair_teacher"].double():
            total, count = total + q, count + 1
    torch.testing.assert_close(teacher_mean(index, train, store, 1.0, pairs_per_sample=10**9).double(), total / count,
                               atol=1e-6, rtol=0)
    cfg = tiny_distill_config(loss="relational", epochs=1)
    distill(town, store_dir, tmp_path / "run", cfg, quiet=True)
    bias = load_checkpoint(tmp_path / "run" / "checkpoint.pt").model["head.bias"]
    assert torch.equal(bias, teacher_mean(index, train, store, 1.0))


def test_min_depth_reaches_every_pairing(town, index, store_dir, tmp_path, monkeypatch):
    """A min_depth other than the default pairs the same way in the head's anchor, training, --eval-every,
    analyze, and the teacher summary and ceiling: every pairing of each sees it."""
    from relational_distill.data import dataset as dataset_module
    from relational_distill.engine.analyze import analyze
    from relational_distill.engine.precompute import teacher_ceiling, teacher_summary
    from relational_distill.teachers.store import FeatureStore

    seen = []
    real = dataset_module.pair_points

    def recording(points, cams, min_depth=1.0):
        seen.append(min_depth)
        return real(points, cams, min_depth)

    monkeypatch.setattr(dataset_module, "pair_points", recording)

    def calls(run) -> list[float]:
        seen.clear()
        run()
        return list(seen)

    out = tmp_path / "run"
    cfg = tiny_distill_config(loss="similarity", epochs=1, eval_every=1, min_depth=2.5)
    trained = calls(lambda: distill(town, store_dir, out, cfg, quiet=True))
    # anchor (every train sample), one epoch of training, the monitor's val samples
    assert len(trained) >= len(index.split("train")) * 2 + len(index.split("val"))
    assert set(trained) == {2.5}
    assert set(calls(lambda: analyze(out / "checkpoint.pt", per_class=50, quiet=True, plot=False))) == {2.5}
    store = FeatureStore.open(store_dir)
    assert set(calls(lambda: teacher_summary(index, store, 2.5, per_class=50, quiet=True))) == {2.5}
    assert set(calls(lambda: teacher_ceiling(index, store, 2.5, quiet=True))) == {2.5}
    # and the pairs do change: fewer points are paired at 2.5 m than at 1 m
    sample = index.split("val")[0]
    from relational_distill.data.dataset import load_sample

    assert len(load_sample(index, sample, store, 2.5)["pair_point"]) < len(load_sample(index, sample, store, 1.0)["pair_point"])
