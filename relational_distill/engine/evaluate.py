"""``rdistill evaluate``: per-point predictions on a split and the per-class IoU table.

A distilled checkpoint is evaluated zero-shot (argmax of cosine similarity between a point's feature and the
16 CLIP text embeddings stored with the teacher features); a finetuned one through its segmentation head.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointMeta, load_checkpoint
from ..classes import CLASS_NAMES, NUM_CLASSES
from ..data.dataset import load_sample
from ..data.nuscenes import load_index
from ..data.sim.writer import is_synthetic_town
from ..errors import UserError
from ..metrics.segmentation import confusion_matrix, miou
from ..progress import progress_bar
from ..teachers.store import FeatureStore
from .training import resolve_device


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


def require_labels(index, samples: list[dict], split: str) -> None:
    """Refuse (one line) to score or train on a split without lidarseg labels."""
    if not any(s.get("lidarseg") for s in samples):
        raise UserError(f"{index.dataroot}: the {split} split of {index.version} has no lidarseg labels; this "
                        f"command needs them (install nuScenes-lidarseg into the dataroot)")


@torch.no_grad()
def point_outputs(model, points: torch.Tensor) -> torch.Tensor:
    """(N, out_dim) float32 outputs of the student for one point cloud (N, 5)."""
    return model(points, torch.zeros(len(points), dtype=torch.long, device=points.device)).float()


@torch.no_grad()
def predict(model, meta: CheckpointMeta, points: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """(N,) predicted 16-class labels in 1..16 for one point cloud."""
    out = point_outputs(model, points)
    if meta.kind == "distill":
        return (F.normalize(out, dim=1) @ text.T).argmax(1) + 1
    return out.argmax(1) + 1


def evaluate(checkpoint: Path, zero_shot: bool = False, dataroot: Path | None = None, version: str | None = None,
             split: str = "val", device: str = "cpu", quiet: bool = False, features: Path | None = None) -> dict:
    """Scores of ``checkpoint`` on ``split``; ``dataroot`` / ``features`` override the dataset and feature store
    recorded in the checkpoint (moved data, or another dataset)."""
    device = resolve_device(device)
    model, meta = load_student(checkpoint, device)
    if meta.kind == "distill" and not zero_shot:
        raise UserError(f"{checkpoint}: a distilled checkpoint has no segmentation head; pass --zero-shot, or "
                        f"finetune it first with 'rdistill finetune {checkpoint}'")
    if meta.kind != "distill" and zero_shot:
        raise UserError(f"{checkpoint}: --zero-shot needs a distilled checkpoint (this one is '{meta.kind}')")
    text = None
    if zero_shot:
        store = FeatureStore.open(features or meta.features, teacher=meta.teacher_id)
        _, text = store.text_embeddings()
        text = text.to(device)
    index = load_index(dataroot or meta.dataroot, version or meta.version)
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    require_labels(index, samples, split)
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    with progress_bar(f"evaluate ({split})", len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample)
            pred = predict(model, meta, item["points"].to(device), text).cpu()
            conf += confusion_matrix(pred, item["labels"])
            bar.advance()
    iou, mean = miou(conf)
    absent = [CLASS_NAMES[i - 1] for i in range(1, NUM_CLASSES) if math.isnan(iou[i])]
    null = {"miou": None, "miou_null_reason": "no labelled point in the split"} if math.isnan(mean) else {"miou": mean}
    return {"checkpoint": str(checkpoint), "mode": "zero-shot" if zero_shot else "head", "split": split,
            "dataroot": index.dataroot, "samples": len(samples), **null,
            "per_class_iou": {n: (None if math.isnan(iou[i + 1]) else float(iou[i + 1])) for i, n in enumerate(CLASS_NAMES)},
            "absent_classes": absent, "confusion": conf.tolist(),
            "synthetic": is_synthetic_town(index.dataroot)}
