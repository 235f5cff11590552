"""``rdistill evaluate``: per-point predictions on a split and the per-class IoU table.

A distilled checkpoint is evaluated zero-shot (argmax of cosine similarity between a point's feature and the
16 CLIP text embeddings stored with the teacher features); a finetuned one through its segmentation head, on
the dataset it was finetuned for (nuScenes or SemanticKITTI, each with its own mIoU convention). With
``save_predictions`` the predictions are also written in the benchmark's own format (engine/predictions.py).
"""
from __future__ import annotations

from pathlib import Path

from ..data.datasets import open_index
from ..data.fingerprint import dataset_fingerprint
from ..data.projection import DEFAULT_MIN_DEPTH
from ..data.splits import require_labels
from ..data.submission import PredictionWriter
from ..data.town import is_synthetic_town
from ..errors import UserError
from ..results import Evaluation, Score
from ..scoring import ABSENT_RULE, segmentation_confusion, segmentation_result, teacher_confusion
from ..student import load_student, require_same_classes
from ..teachers.store import FeatureStore
from .runtime import resolve_device

def evaluate(checkpoint: Path, *, zero_shot: bool = False, dataroot: Path | None = None, version: str | None = None,
             split: str = "val", device: str = "cpu", quiet: bool = False, dataset: str | None = None,
             save_predictions: Path | None = None, features: Path | None = None) -> Evaluation:
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
    require_same_classes(checkpoint, meta, index)
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
    score = (segmentation_result(conf, index) if scored  # a split without labels (test): predictions only
             else Score.unscored())
    return Evaluation(**vars(score), checkpoint=str(checkpoint), mode="zero-shot" if zero_shot else "head",
                      split=split, dataset=index.dataset, dataroot=index.dataroot, samples=len(samples),
                      class_names=list(index.class_names), miou_convention=ABSENT_RULE[index.dataset],
                      predictions=written, notes=list(index.notes), synthetic=is_synthetic_town(index.dataroot))


def evaluate_teacher(features: Path, *, dataroot: Path | None = None, version: str | None = None, split: str = "val",
                     quiet: bool = False, min_depth: float = DEFAULT_MIN_DEPTH) -> Evaluation:
    """The teacher ceiling: the teacher's zero-shot mIoU at the lidar-paired points of ``split`` (pairs at least
    ``min_depth`` metres in front of a camera)."""
    store = FeatureStore.open(features)
    require_labels(version or store.manifest.dataset_version, "evaluate --teacher-ceiling")
    index = open_index(dataroot or store.manifest.dataroot, version or store.manifest.dataset_version, "nuscenes")
    store.require_dataset(index.dataroot, dataset_fingerprint(index))
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    index.require_labels(samples, f"scoring the teacher on split '{split}'")
    conf = teacher_confusion(index, samples, store, min_depth, quiet)
    return Evaluation(**vars(segmentation_result(conf, index)), features=str(features),
                      teacher=store.manifest.teacher_id, mode="teacher zero-shot", split=split, dataset=index.dataset,
                      dataroot=index.dataroot, samples=len(samples), miou_convention=ABSENT_RULE[index.dataset],
                      synthetic=is_synthetic_town(index.dataroot))
