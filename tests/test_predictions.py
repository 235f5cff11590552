"""nuScenes-lidarseg predictions (``evaluate --save-predictions``) read and scored by the devkit's own
validate_submission and LidarSegEval, zero-shot and finetuned."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.lidarseg.evaluate import LidarSegEval
from nuscenes.eval.lidarseg.validate_submission import validate_submission
from nuscenes.utils.data_classes import LidarPointCloud

from relational_distill.engine.evaluate import evaluate
from relational_distill.engine.finetune import FinetuneConfig, finetune


def town_eval_set(nusc, eval_set: str) -> list[str]:
    """The devkit's get_samples_in_eval_set for the town: its scenes come from the town's splits.json, since
    create_splits_scenes only knows real nuScenes scene names."""
    names = json.loads((Path(nusc.dataroot) / "splits.json").read_text())[eval_set]
    tokens = []
    for scene in nusc.scene:
        if scene["name"] in names:
            token = scene["first_sample_token"]
            while token:
                tokens.append(token)
                token = nusc.get("sample", token)["next"]
    return tokens


@pytest.fixture(scope="module")
def finetuned(town, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft-scratch")
    finetune(None, out, FinetuneConfig(fraction=1.0, epochs=1, batch_size=1, workers=0, from_scratch=True),
             dataroot=town, quiet=True)
    return out / "checkpoint.pt"


@pytest.mark.parametrize("mode", ["zero-shot", "finetuned"])
def test_devkit_scores_saved_predictions_like_rdistill(mode, nusc, distilled_checkpoint, finetuned, tmp_path,
                                                       monkeypatch):
    checkpoint = distilled_checkpoint if mode == "zero-shot" else finetuned
    out = tmp_path / "results"
    result = evaluate(checkpoint, zero_shot=mode == "zero-shot", save_predictions=out, quiet=True)
    monkeypatch.setattr("nuscenes.eval.lidarseg.evaluate.get_samples_in_eval_set", town_eval_set)
    monkeypatch.setattr("nuscenes.eval.lidarseg.validate_submission.get_samples_in_eval_set", town_eval_set)
    validate_submission(nusc, str(out), "val")  # folder layout, meta block, one file per point cloud, 1..16
    meta = json.loads((out / "val" / "submission.json").read_text())["meta"]
    assert meta == {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                    "use_external": mode == "zero-shot"}  # from scratch: no pretrained image model
    tokens = town_eval_set(nusc, "val")
    assert len(list((out / "lidarseg" / "val").iterdir())) == len(tokens) == result.samples
    sd = nusc.get("sample_data", nusc.get("sample", tokens[0])["data"]["LIDAR_TOP"])
    pred = np.fromfile(out / "lidarseg" / "val" / f"{sd['token']}_lidarseg.bin", np.uint8)
    assert len(pred) == LidarPointCloud.from_file(str(Path(nusc.dataroot) / sd["filename"])).points.shape[1]
    evaluator = LidarSegEval(nusc, str(out), "val")
    devkit = evaluator.evaluate()
    np.testing.assert_array_equal(evaluator.global_cm.global_cm, np.array(result.confusion))
    assert result.miou == pytest.approx(devkit["miou"], rel=1e-6)  # the devkit divides in float32
