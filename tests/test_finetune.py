"""The finetuning loss (engine/finetune.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from relational_distill.engine.finetune import lovasz_softmax


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    """On one-hot probabilities the Lovasz extension equals the Jaccard loss it extends: the mean over the classes
    present in the labels of 1 - IoU (Berman et al. 2018), counted here with a loop."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=g)
    labels[labels == 3] = 2  # class 3 absent from the labels
    pred = torch.randint(0, 4, (200,), generator=g)
    probs = F.one_hot(pred, 4).float()
    losses = []
    for c in sorted(set(labels.tolist())):
        inter = sum(1 for p, y in zip(pred.tolist(), labels.tolist()) if p == c and y == c)
        union = sum(1 for p, y in zip(pred.tolist(), labels.tolist()) if p == c or y == c)
        losses.append(1 - inter / union)
    assert lovasz_softmax(probs, labels).item() == torch.tensor(sum(losses) / len(losses)).item()


def test_lovasz_is_zero_at_the_labels_and_has_a_gradient():
    labels = torch.tensor([0, 1, 1, 2, 0])
    assert lovasz_softmax(F.one_hot(labels, 3).float(), labels).item() == 0.0
    logits = torch.zeros(5, 3, requires_grad=True)
    lovasz_softmax(F.softmax(logits, 1), labels).backward()
    assert logits.grad.abs().sum() > 0
