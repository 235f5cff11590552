"""How a teacher's zero-shot labels go wrong at the lidar-paired pixels: the statistics the simulated teacher is
calibrated to beside its mIoU, U and T (docs/teachers.md). Pure tensor math."""
from __future__ import annotations

import torch

from ..classes import CLASS_NAMES, SEMANTIC_GROUPS


def group_of_labels() -> torch.Tensor:
    """(17,) the semantic group index of each label 1..16 (entry 0, ignore, is -1)."""
    index = {name: g for g, members in enumerate(SEMANTIC_GROUPS.values()) for name in members}
    return torch.tensor([-1] + [index[name] for name in CLASS_NAMES])


def error_statistics(pred: torch.Tensor, labels: torch.Tensor, small_classes: int = 5) -> dict:
    """Statistics of zero-shot labels ``pred`` (N,) against lidar labels ``labels`` (N,), both 1..16 (0 = ignore,
    left out).

    * ``near_class_error_share``: of the wrong labels, the share that names a class of the true class's semantic
      group (:data:`SEMANTIC_GROUPS`);
    * ``accuracy_small_classes`` / ``accuracy_large_classes``: the mean per-class accuracy (recall) over the
      ``small_classes`` classes with the fewest and the most labelled points present.

    A statistic without anything to average (no wrong label; fewer than two classes present) is None.
    """
    keep = labels > 0
    pred, labels = pred[keep], labels[keep]
    wrong = pred != labels
    groups = group_of_labels()
    near = (groups[pred[wrong]] == groups[labels[wrong]]).double().mean().item() if wrong.any() else None
    present = [c for c in range(1, len(CLASS_NAMES) + 1) if (labels == c).any()]
    by_count = sorted(present, key=lambda c: int((labels == c).sum()))
    recall = {c: (pred[labels == c] == c).double().mean().item() for c in present}
    k = min(small_classes, len(present) // 2)
    mean = (lambda cs: sum(recall[c] for c in cs) / len(cs) if cs else None)
    return {"near_class_error_share": near, "accuracy_small_classes": mean(by_count[:k]),
            "accuracy_large_classes": mean(by_count[len(by_count) - k:])}


def mean_cosine_between_classes(z: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine of pairs of L2-normalised features (N, D) of different classes (the counterpart of tolerance,
    which averages over same-class pairs)."""
    z = z.double()
    total = z.sum(0) @ z.sum(0)
    same = 0.0
    for c in torch.unique(labels):
        s = z[labels == c].sum(0)
        same += float(s @ s)
    n = len(z)
    counts = torch.bincount(labels)
    pairs_between = n * n - float((counts.double() ** 2).sum())
    return float((total - same) / pairs_between)
