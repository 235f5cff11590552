"""Point-level confusion matrix and IoU; label 0 is ignored. Pure tensor math.

Two conventions for classes absent from both prediction and ground truth (docs/datasets.md): nuScenes-lidarseg
leaves them out of the mean (:func:`miou`), SemanticKITTI counts them as 0 (:func:`miou_semantickitti`).
"""
from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 17,
                     ignore_index: int | None = 0) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Points whose target is ``ignore_index`` are dropped; so is the prediction column ``ignore_index`` (a
    point predicted as ignore counts nowhere, like the devkit's ConfusionMatrix).
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = (target != ignore_index) & (pred != ignore_index)
        pred, target = pred[keep], target[keep]
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def miou(confusion: torch.Tensor, ignore_index: int | None = 0) -> tuple[torch.Tensor, float]:
    """Per-class IoU (NaN for a class absent from both prediction and ground truth, and for ``ignore_index``)
    and their mean over the classes that are present."""
    conf = confusion.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    if ignore_index is not None:
        iou[ignore_index] = float("nan")
    present = ~torch.isnan(iou)
    return iou, float(iou[present].mean()) if present.any() else float("nan")


def miou_semantickitti(confusion: torch.Tensor, ignore_index: int = 0) -> tuple[torch.Tensor, float]:
    """SemanticKITTI's convention: per-class IoU = TP / (TP + FP + FN), 0 for a class absent from both prediction
    and ground truth, and the mean over every class but ``ignore_index`` (19 for SemanticKITTI).

    ``confusion`` (C, C), rows = ground truth, columns = prediction, as :func:`confusion_matrix` makes it. The
    returned per-class tensor has NaN at ``ignore_index`` only.
    """
    conf = confusion.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    iou[ignore_index] = float("nan")
    return iou, float(iou[~torch.isnan(iou)].mean())
