"""results.py: the typed results write the JSON their commands document, and read a summary back."""
from __future__ import annotations

import json

import pytest
import torch

from relational_distill.results import Evaluation, Finetuning, Precomputation, Score, TeacherSummary
from relational_distill.scoring import segmentation_result

SUMMARY = dict(uniformity=1.5, tolerance=0.7, mean_cosine_between_classes=0.6, zero_shot_pixel_accuracy=0.5,
               near_class_error_share=None, accuracy_small_classes=0.1, accuracy_large_classes=0.9,
               summary_features=10, samples=4, bytes_on_disk=100, bytes_per_sample=25.0, min_depth=1.0,
               synthetic=True, teacher_zero_shot_miou=0.25, teacher_zero_shot_split="val",
               teacher_zero_shot_per_class_iou={"car": 0.5})


def test_a_reason_is_written_only_with_its_missing_value(index):
    empty = segmentation_result(torch.zeros(17, 17, dtype=torch.long), index)
    assert empty.miou is None and empty.scored and empty.to_json()["miou_null_reason"] == "no labelled point in the split"
    conf = torch.zeros(17, 17, dtype=torch.long)
    conf[1, 1], conf[2, 1] = 3, 1  # class 1: 3 right, 1 of class 2 labelled as 1
    scored = segmentation_result(conf, index)
    assert "miou_null_reason" not in scored.to_json()
    assert scored.per_class_iou[index.class_names[0]] == pytest.approx(3 / 4)  # 3 / (3 + 1 + 0)
    unscored = Score.unscored()
    assert not unscored.scored and "miou_null_reason" not in unscored.to_json()
    assert Score.unscored("no labels").scored and Score.unscored("no labels").to_json()["miou_null_reason"] == "no labels"


def test_an_evaluation_is_flat_json_and_names_its_source():
    ev = Evaluation(miou=0.5, per_class_iou={"car": 0.5}, absent_classes=[], confusion=[[0]], mode="zero-shot",
                    split="val", dataset="nuscenes", dataroot="/t", samples=2, miou_convention="rule", synthetic=True,
                    checkpoint="c.pt", class_names=["car"])
    data = json.loads(json.dumps(ev.to_json()))
    assert data["checkpoint"] == "c.pt" and data["miou"] == 0.5 and data["notes"] == []
    assert "features" not in data and "teacher" not in data and "predictions" not in data


def test_a_precomputation_writes_its_summary_flat_and_reads_it_back():
    summary = TeacherSummary(**SUMMARY)
    done = Precomputation(teacher="sim-clip", computed=4, skipped=0, store="/s", complete=True, seconds=1.0,
                          summary=summary)
    data = json.loads(json.dumps(done.to_json()))
    assert data["uniformity"] == 1.5 and data["teacher"] == "sim-clip" and "summary" not in data
    assert "teacher_zero_shot_note" not in data and "superpixels" not in data and "missing" not in data
    assert TeacherSummary.from_json(data) == summary
    with pytest.raises(TypeError):  # a summary of an older version lacks a key: precompute measures it again
        TeacherSummary.from_json({k: v for k, v in data.items() if k != "near_class_error_share"})
    partial = Precomputation(teacher="sim-clip", computed=2, skipped=0, store="/s", complete=False, seconds=1.0,
                             missing=2).to_json()
    assert partial["missing"] == 2 and "uniformity" not in partial


def test_a_finetuning_nests_its_evaluation_and_names_scenes_or_frames():
    ev = Evaluation(miou=0.5, per_class_iou={}, absent_classes=[], confusion=[], mode="head", split="val",
                    dataset="semantickitti", dataroot="/k", samples=1, miou_convention="rule", synthetic=False)
    run = dict(epochs=[], steps=1, seconds=1.0, samples_per_second=1.0, checkpoint="c.pt", world_size=1,
               resume_changes={}, rank_checksums=None, train_samples=2, few_shot_rule="every 2nd", fraction=0.5,
               mode="finetune", from_scratch=False, dataset="semantickitti", notes=[], config={})
    frames = Finetuning(**run, train_frames=["00/000000"], evaluation=ev)
    assert frames.trained_on == "1 frames" and frames.to_json()["evaluation"]["dataset"] == "semantickitti"
    assert "train_scenes" not in frames.to_json()
    scenes = Finetuning(**run, train_scenes=["scene-0", "scene-1"])
    assert scenes.trained_on == "2 scenes" and "evaluation" not in scenes.to_json()
