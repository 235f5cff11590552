"""Zero-shot evaluation, few-shot finetuning (in and out of distribution), linear probe, analyze and toy."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from relational_distill.checkpoint import load_checkpoint
from relational_distill.cli import app
from relational_distill.data.nuscenes import load_index
from relational_distill.engine.analyze import analyze
from relational_distill.engine.distill import distill
from relational_distill.engine.evaluate import evaluate
from relational_distill.engine.finetune import FinetuneConfig, finetune
from relational_distill.engine.toy import ToyConfig, run_toy
from relational_distill.errors import UserError

from .conftest import tiny_distill_config
from .helpers import one_line

runner = CliRunner()


@pytest.fixture(scope="module")
def distilled(town, store_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled")
    distill(town, store_dir, out, tiny_distill_config(loss="similarity", epochs=2), quiet=True)
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def town64(tmp_path_factory):
    from relational_distill.sim.writer import SimConfig, make_town

    root = tmp_path_factory.mktemp("town64") / "town"
    make_town(root, SimConfig(scenes=2, samples_per_scene=2, seed=5, lidar="hdl64", image_size=(192, 112)))
    return root


def test_zero_shot_evaluation(distilled):
    result = evaluate(distilled, zero_shot=True, quiet=True)
    assert result.mode == "zero-shot" and 0 <= result.miou <= 1
    ious = [v for v in result.per_class_iou.values() if v is not None]
    assert result.miou == pytest.approx(sum(ious) / len(ious))
    assert sum(map(sum, result.confusion)) > 1000


def test_distilled_checkpoint_needs_zero_shot_flag(distilled):
    with pytest.raises(UserError, match="--zero-shot"):
        evaluate(distilled, quiet=True)


def test_evaluate_refuses_the_unlabelled_test_version(distilled, town):
    with pytest.raises(UserError, match="no labels"):
        evaluate(distilled, zero_shot=True, dataroot=town, version="v1.0-test", quiet=True)


def test_test_version_predictions_pass_the_label_policy(distilled, town, tmp_path):
    """With --save-predictions the label policy lets v1.0-test through (predictions for the server); this town has
    no v1.0-test tables, so what stops it is the folder check, not the policy."""
    with pytest.raises(UserError) as err:
        evaluate(distilled, zero_shot=True, dataroot=town, version="v1.0-test", split="test",
                 save_predictions=tmp_path / "pred", quiet=True)
    assert "no labels" not in str(err.value) and "v1.0-test: no such table folder" in str(err.value)
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("mode", ["in-distribution", "out-of-distribution", "linear-probe", "from-scratch"])
def test_finetune_modes(distilled, town, town64, tmp_path, mode):
    cfg = FinetuneConfig(fraction=0.01, epochs=1, batch_size=1, workers=0,
                         linear_probe=mode == "linear-probe", from_scratch=mode == "from-scratch", lovasz=True)
    ckpt = None if mode == "from-scratch" else distilled
    root = town64 if mode == "out-of-distribution" else (town if mode == "from-scratch" else None)
    result = finetune(ckpt, tmp_path / "ft", cfg, dataroot=root, quiet=True)
    ev = result.evaluation
    assert ev.mode == "head" and not math.isnan(ev.miou)
    # 1 % of a town with 2 training scenes: SLidR's rule keeps none, so the first training scene in table order
    town_index = load_index(town64 if mode == "out-of-distribution" else town, "v1.0-sim")
    first = next(name for name in town_index.scenes if name in {s["scene"] for s in town_index.split("train")})
    assert result.train_scenes == [first] and "keeps none" in result.few_shot_rule
    if mode == "out-of-distribution":
        assert ev.dataroot == str(town64.resolve())
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert saved["evaluation"]["miou"] == ev.miou and saved["train_scenes"] == [first]


def test_linear_probe_keeps_backbone_frozen(distilled, tmp_path):
    import torch

    cfg = FinetuneConfig(fraction=1.0, epochs=1, batch_size=1, workers=0, linear_probe=True)
    finetune(distilled, tmp_path / "lp", cfg, quiet=True)
    before = load_checkpoint(distilled).model
    after = load_checkpoint(tmp_path / "lp" / "checkpoint.pt").model
    for key, value in before.items():
        if key.startswith("backbone."):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_analyze_writes_json_and_plot(distilled, tmp_path):
    result = analyze(distilled, per_class=300, out=tmp_path / "an", quiet=True)
    for key in ("uniformity_3d", "uniformity_2d", "tolerance_3d", "tolerance_2d", "modality_gap"):
        assert isinstance(getattr(result, key), float)
    assert result.null_reasons == {} and result.pairs == sum(result.class_counts.values())
    assert (tmp_path / "an" / "analysis.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert saved == result.to_json() and saved["synthetic"] is True
    # a metric not asked for is null with its reason, in the file as in the result
    gap_only = analyze(distilled, metrics=("gap",), per_class=300, out=tmp_path / "gap", quiet=True, plot=False)
    assert gap_only.modality_gap == pytest.approx(result.modality_gap, rel=1e-6) and gap_only.uniformity_3d is None
    assert set(gap_only.null_reasons) == {"uniformity_3d", "uniformity_2d", "tolerance_3d", "tolerance_2d"}
    assert json.loads((tmp_path / "gap" / "analysis.json").read_text())["tolerance_2d"] is None


def test_cli_evaluate_and_analyze(distilled, tmp_path):
    r = runner.invoke(app, ["evaluate", str(distilled), "--zero-shot", "-q", "--out", str(tmp_path / "zs")])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and (tmp_path / "zs" / "zero_shot.json").exists()
    # --out is a folder in every command: a file name is refused in one line, before any work
    r = runner.invoke(app, ["evaluate", str(distilled), "--zero-shot", "-q", "--out", str(tmp_path / "zs.json")])
    assert r.exit_code == 2 and "a folder, not a file" in r.output and not (tmp_path / "zs.json").exists()
    r = runner.invoke(app, ["analyze", str(distilled), "--metrics", "uniformity,gap", "--per-class", "200",
                            "--out", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(distilled), "--metrics", "bogus", "-q"])
    assert r.exit_code == 2


def test_toy_runs_and_contrastive_overspreads(tmp_path):
    summary = run_toy(tmp_path, ToyConfig(points_per_cluster=120, iterations=120))
    for setup in ("1-cluster", "3-cluster"):
        s = summary.setups[setup]
        assert s["contrastive"]["final_uniformity"] > s["source_uniformity"]
    assert all((tmp_path / name).exists() for name in ("toy.json", "toy_spaces.png", "toy_uniformity.png"))


def test_teacher_ceiling_is_spelled_with_features(store_dir, tmp_path):
    """``evaluate --features STORE --teacher-ceiling`` scores the teacher; the old ``--teacher STORE`` says how to
    spell it now, in one line."""
    from relational_distill.engine.evaluate import evaluate_teacher

    from .test_cli_errors import _one_line_error

    r = runner.invoke(app, ["evaluate", "--features", str(store_dir), "--teacher-ceiling", "-q",
                            "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "t" / "teacher_zero_shot_val.json").read_text())["miou"] == evaluate_teacher(store_dir, quiet=True).miou
    _one_line_error(runner.invoke(app, ["evaluate", "--teacher", str(store_dir)]), "--teacher-ceiling")
    _one_line_error(runner.invoke(app, ["evaluate", "--teacher-ceiling"]), "--features STORE")


# -- moved data -------------------------------------------------------------------------------------------------------
def test_evaluate_and_analyze_find_moved_data(run, town, store_dir, tmp_path):
    moved_town, moved_store = tmp_path / "moved-town", tmp_path / "moved-features"
    shutil.copytree(town, moved_town)
    shutil.copytree(store_dir, moved_store)
    from dataclasses import replace

    from relational_distill.checkpoint import save_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    state = load_checkpoint(run / "checkpoint.pt")
    gone = replace(state.meta, dataroot=str(tmp_path / "gone-town"), features=str(tmp_path / "gone-features"))
    save_checkpoint(ckpt, gone, state.model, state.epoch, state.step, state.training)
    one_line(runner.invoke(app, ["evaluate", str(ckpt), "--zero-shot", "-q"]), 2, "gone-")
    r = runner.invoke(app, ["evaluate", str(ckpt), "--zero-shot", "--features", str(moved_store), "--dataroot",
                            str(moved_town), "--out", str(tmp_path / "zs"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(ckpt), "--features", str(moved_store), "--dataroot", str(moved_town),
                            "--per-class", "100", "--out", str(tmp_path / "an"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "an" / "analysis.json").read_text())["pairs"] > 0


