"""``rdistill evaluate``: per-point predictions on a split and the per-class IoU table.

A distilled checkpoint is evaluated zero-shot (argmax of cosine similarity between a point's feature and the
16 CLIP text embeddings stored with the teacher features); a finetuned one through its segmentation head.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..classes import CLASS_NAMES, NUM_CLASSES
from ..data.dataset import load_sample
from ..data.nuscenes import DatasetIndex, load_index
from ..data.sim.writer import is_synthetic_town
from ..errors import UserError
from ..metrics.segmentation import confusion_matrix, miou
from ..progress import progress_bar
from ..teachers.store import FeatureStore
from .training import load_checkpoint, resolve_device


def load_student(checkpoint: Path, device: str):
    """(model in eval mode on ``device``, the checkpoint's meta)."""
    from .distill import build_student

    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    model = build_student(meta, "cuda" if device.startswith("cuda") else "cpu")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


@torch.no_grad()
def point_outputs(model, points: torch.Tensor) -> torch.Tensor:
    """(N, out_dim) float32 outputs of the student for one point cloud (N, 5)."""
    return model(points, torch.zeros(len(points), dtype=torch.long, device=points.device)).float()


@torch.no_grad()
def predict(model, meta: dict, points: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """(N,) predicted 16-class labels in 1..16 for one point cloud."""
    out = point_outputs(model, points)
    if meta["kind"] == "distill":
        return (F.normalize(out, dim=1) @ text.T).argmax(1) + 1
    return out.argmax(1) + 1


def segmentation_result(conf: torch.Tensor) -> dict:
    """mIoU, per-class IoU (None for a class absent from prediction and ground truth) and the confusion matrix."""
    iou, mean = miou(conf)
    absent = [CLASS_NAMES[i - 1] for i in range(1, NUM_CLASSES) if math.isnan(iou[i])]
    return {"miou": mean,
            "per_class_iou": {n: (None if math.isnan(iou[i + 1]) else float(iou[i + 1])) for i, n in enumerate(CLASS_NAMES)},
            "absent_classes": absent, "confusion": conf.tolist()}


@torch.no_grad()
def segmentation_confusion(model, meta: dict, index: DatasetIndex, samples: list[dict], text: torch.Tensor | None,
                           device: str, quiet: bool = True, label: str = "evaluate") -> torch.Tensor:
    """(17, 17) point-level confusion matrix of the student's predictions over ``samples`` (every point)."""
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    with progress_bar(label, len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample)
            pred = predict(model, meta, item["points"].to(device), text).cpu()
            conf += confusion_matrix(pred, item["labels"])
            bar.advance()
    return conf


def evaluate(checkpoint: Path, zero_shot: bool = False, dataroot: Path | None = None, version: str | None = None,
             split: str = "val", device: str = "cpu", quiet: bool = False) -> dict:
    device = resolve_device(device)
    model, meta = load_student(checkpoint, device)
    if meta["kind"] == "distill" and not zero_shot:
        raise UserError(f"{checkpoint}: a distilled checkpoint has no segmentation head; pass --zero-shot, or "
                        f"finetune it first with 'rdistill finetune {checkpoint}'")
    if meta["kind"] != "distill" and zero_shot:
        raise UserError(f"{checkpoint}: --zero-shot needs a distilled checkpoint (this one is '{meta['kind']}')")
    text = None
    if zero_shot:
        store = FeatureStore.open(meta["features"], teacher=meta["teacher_id"])
        _, text = store.text_embeddings()
        text = text.to(device)
    index = load_index(dataroot or meta["dataroot"], version or meta["version"])
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    conf = segmentation_confusion(model, meta, index, samples, text, device, quiet, f"evaluate ({split})")
    return {"checkpoint": str(checkpoint), "mode": "zero-shot" if zero_shot else "head", "split": split,
            "dataroot": index.dataroot, "samples": len(samples), **segmentation_result(conf),
            "synthetic": is_synthetic_town(index.dataroot)}


def teacher_confusion(index: DatasetIndex, samples: list[dict], store: FeatureStore, quiet: bool = True) -> torch.Tensor:
    """(17, 17) confusion matrix of the teacher's own zero-shot labels at the lidar-paired pixels of ``samples``.

    Each lidar-pixel pair votes once (a point seen by two cameras votes twice): the argmax of the pixel's feature
    against the text embeddings, scored with the point's lidar label (docs/convergence.md, "the teacher ceiling").
    """
    _, text = store.text_embeddings()
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    with progress_bar("teacher zero-shot", len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample, store)
            pred = (item["pair_teacher"] @ text.T).argmax(1) + 1
            conf += confusion_matrix(pred, item["labels"][item["pair_point"]])
            bar.advance()
    return conf


def evaluate_teacher(features: Path, dataroot: Path | None = None, version: str | None = None, split: str = "val",
                     quiet: bool = False) -> dict:
    """The teacher ceiling: the teacher's zero-shot mIoU at the lidar-paired points of ``split``."""
    store = FeatureStore.open(features)
    index = load_index(dataroot or store.manifest.dataroot, version or store.manifest.dataset_version)
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    conf = teacher_confusion(index, samples, store, quiet)
    return {"features": str(features), "teacher": store.manifest.teacher_id, "mode": "teacher zero-shot",
            "split": split, "dataroot": index.dataroot, "samples": len(samples), **segmentation_result(conf),
            "synthetic": is_synthetic_town(index.dataroot)}
