"""``rdistill evaluate``: per-point predictions on a split and the per-class IoU table.

A distilled checkpoint is evaluated zero-shot (argmax of cosine similarity between a point's feature and the
16 CLIP text embeddings stored with the teacher features); a finetuned one through its segmentation head, on
the dataset it was finetuned for (nuScenes or SemanticKITTI, each with its own mIoU convention). With
``save_predictions`` the predictions are also written in the benchmark's own format (engine/predictions.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointMeta, load_checkpoint
from ..data.dataset import load_sample
from ..data.datasets import open_index
from ..data.fingerprint import dataset_fingerprint
from ..data.sim.writer import is_synthetic_town
from ..data.splits import require_labels
from ..errors import UserError
from ..metrics.segmentation import confusion_matrix, miou, miou_semantickitti
from ..progress import progress_bar
from ..teachers.store import FeatureStore
from .predictions import PredictionWriter
from .training import resolve_device

# How each benchmark averages classes absent from both prediction and ground truth (docs/datasets.md).
ABSENT_RULE = {"nuscenes": "left out of the mean (absent from both prediction and ground truth)",
               "semantickitti": "counted as 0 in the mean, the SemanticKITTI convention (absent from both "
                                "prediction and ground truth)"}


def load_student(checkpoint: Path, device: str) -> tuple[torch.nn.Module, CheckpointMeta]:
    """(model in eval mode on ``device``, the checkpoint's meta)."""
    from .distill import build_student

    state = load_checkpoint(checkpoint)
    try:
        model = build_student(state.meta, "cuda" if device.startswith("cuda") else "cpu")
        model.load_state_dict(state.model)
    except (RuntimeError, TypeError, KeyError) as err:
        raise UserError(f"{checkpoint}: its weights do not fit the student its meta describes "
                        f"({str(err).splitlines()[0]}); the checkpoint is corrupt") from None
    return model.to(device).eval(), state.meta


@torch.no_grad()
def point_outputs(model, points: torch.Tensor) -> torch.Tensor:
    """(N, out_dim) float32 outputs of the student for one point cloud (N, 5)."""
    return model(points, torch.zeros(len(points), dtype=torch.long, device=points.device)).float()


@torch.no_grad()
def predict(model, meta: CheckpointMeta, points: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """(N,) predicted classes in 1..C for one point cloud (C = 16 zero-shot)."""
    out = point_outputs(model, points)
    if meta.kind == "distill":
        return (F.normalize(out, dim=1) @ text.T).argmax(1) + 1
    return out.argmax(1) + 1


def evaluate(checkpoint: Path, zero_shot: bool = False, dataroot: Path | None = None, version: str | None = None,
             split: str = "val", device: str = "cpu", quiet: bool = False, dataset: str | None = None,
             save_predictions: Path | None = None, features: Path | None = None) -> dict:
    """Scores of ``checkpoint`` on ``split``; ``dataroot`` / ``version`` / ``features`` override the dataset and
    feature store recorded in the checkpoint (moved data, or another dataset)."""
    device = resolve_device(device)
    model, meta = load_student(checkpoint, device)
    if meta.kind == "distill" and not zero_shot:
        raise UserError(f"{checkpoint}: a distilled checkpoint has no segmentation head; pass --zero-shot, or "
                        f"finetune it first with 'rdistill finetune {checkpoint}'")
    if meta.kind != "distill" and zero_shot:
        raise UserError(f"{checkpoint}: --zero-shot needs a distilled checkpoint (this one is '{meta.kind}')")
    if save_predictions is None:  # predictions for the benchmark's server need no labels (docs/splits.md)
        require_labels(version or meta.version, "evaluate", "--save-predictions DIR to write predictions for "
                                                            "the benchmark's server")
    index = open_index(dataroot or meta.dataroot, version or meta.version, dataset)
    classes_of = "nuscenes" if zero_shot else meta.dataset
    if index.dataset != classes_of:
        raise UserError(f"{checkpoint}: predicts the classes of {classes_of}, but {index.dataroot} is {index.dataset}; "
                        f"finetune it there first with 'rdistill finetune CHECKPOINT --dataroot {index.dataroot}'")
    if not zero_shot and meta.class_names is not None and list(meta.class_names) != list(index.class_names):
        raise UserError(f"{checkpoint}: its head predicts the classes {', '.join(meta.class_names)}, not those of "
                        f"{index.dataroot} ({', '.join(index.class_names)}); finetune it there first")
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    scored = all(index.has_labels(s) for s in samples)
    if save_predictions is None:
        index.require_labels(samples, f"scoring split '{split}' (pass --save-predictions DIR to write predictions "
                                      f"for the benchmark's server instead)")
    text = None
    if zero_shot:
        store = FeatureStore.open(features or meta.features, teacher=meta.teacher_id)
        _, text = store.text_embeddings()
        text = text.to(device)
    writer = PredictionWriter(index, split, save_predictions, meta) if save_predictions is not None else None
    try:
        conf = segmentation_confusion(model, meta, index, samples, text, device, quiet, f"evaluate ({split})",
                                      writer.add if writer else None)
        written = writer.commit() if writer else None
    except BaseException:
        if writer:
            writer.abort()
        raise
    result = {"checkpoint": str(checkpoint), "mode": "zero-shot" if zero_shot else "head", "split": split,
              "dataset": index.dataset, "dataroot": index.dataroot, "samples": len(samples),
              "class_names": list(index.class_names), "miou_convention": ABSENT_RULE[index.dataset],
              "predictions": written, "notes": list(index.notes), "synthetic": is_synthetic_town(index.dataroot)}
    if not scored:  # a split without labels (test): predictions only
        return {**result, "miou": None, "per_class_iou": None, "absent_classes": None, "confusion": None}
    return {**result, **segmentation_result(conf, index)}


def segmentation_result(conf: torch.Tensor, index) -> dict:
    """mIoU by the dataset's convention, per-class IoU (None for a class absent from prediction and ground truth
    where that convention leaves it out), the absent classes and the confusion matrix. Without a single labelled
    point the mIoU is None, with ``miou_null_reason``."""
    iou, mean = (miou_semantickitti if index.dataset == "semantickitti" else miou)(conf)
    union = conf.sum(0) + conf.sum(1) - conf.diagonal()
    absent = [name for i, name in enumerate(index.class_names, 1) if union[i] == 0]
    score = ({"miou": None, "miou_null_reason": "no labelled point in the split"} if math.isnan(mean)
             else {"miou": mean})  # JSON has no NaN
    return {**score, "absent_classes": absent, "confusion": conf.tolist(),
            "per_class_iou": {n: (None if math.isnan(iou[i]) else float(iou[i]))
                              for i, n in enumerate(index.class_names, 1)}}


@torch.no_grad()
def segmentation_confusion(model, meta: CheckpointMeta, index, samples: list[dict], text: torch.Tensor | None,
                           device: str, quiet: bool = True, label: str = "evaluate", on_prediction=None) -> torch.Tensor:
    """(C+1, C+1) point-level confusion matrix of the student's predictions over ``samples`` (every point; zero
    where a sample has no labels). ``on_prediction(sample, labels (N,) numpy)`` sees each sample's prediction."""
    num_classes = len(index.class_names) + 1
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with progress_bar(label, len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample)
            pred = predict(model, meta, item["points"].to(device), text).cpu()
            conf += confusion_matrix(pred, item["labels"], num_classes)
            if on_prediction:
                on_prediction(sample, pred.numpy())
            bar.advance()
    return conf


def teacher_confusion(index, samples: list[dict], store: FeatureStore, quiet: bool = True) -> torch.Tensor:
    """(17, 17) confusion matrix of the teacher's own zero-shot labels at the lidar-paired pixels of ``samples``.

    Each lidar-pixel pair votes once (a point seen by two cameras votes twice): the argmax of the pixel's feature
    against the text embeddings, scored with the point's lidar label (docs/convergence.md, "the teacher ceiling").
    """
    _, text = store.text_embeddings()
    num_classes = len(index.class_names) + 1
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with progress_bar("teacher zero-shot", len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample, store)
            pred = (item["pair_teacher"] @ text.T).argmax(1) + 1
            conf += confusion_matrix(pred, item["labels"][item["pair_point"]], num_classes)
            bar.advance()
    return conf


def evaluate_teacher(features: Path, dataroot: Path | None = None, version: str | None = None, split: str = "val",
                     quiet: bool = False) -> dict:
    """The teacher ceiling: the teacher's zero-shot mIoU at the lidar-paired points of ``split``."""
    store = FeatureStore.open(features)
    require_labels(version or store.manifest.dataset_version, "evaluate --teacher")
    index = open_index(dataroot or store.manifest.dataroot, version or store.manifest.dataset_version, "nuscenes")
    store.require_dataset(index.dataroot, dataset_fingerprint(index))
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    index.require_labels(samples, f"scoring the teacher on split '{split}'")
    conf = teacher_confusion(index, samples, store, quiet)
    return {"features": str(features), "teacher": store.manifest.teacher_id, "mode": "teacher zero-shot",
            "split": split, "dataroot": index.dataroot, "samples": len(samples), **segmentation_result(conf, index),
            "miou_convention": ABSENT_RULE[index.dataset],
            "synthetic": is_synthetic_town(index.dataroot)}
