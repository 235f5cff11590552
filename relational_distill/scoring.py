"""Scores over the samples of a split: the student's and the teacher's point-level confusion matrices, and the
mIoU by each benchmark's rule for a class absent from prediction and ground truth (docs/datasets.md)."""
from __future__ import annotations

import math

import torch

from .checkpoint import CheckpointMeta
from .data.dataset import load_sample
from .metrics.segmentation import confusion_matrix, miou, miou_semantickitti
from .progress import progress_bar
from .results import Score
from .student import predict, zero_shot_labels
from .teachers.store import FeatureStore

# How each benchmark averages classes absent from both prediction and ground truth (docs/datasets.md).
ABSENT_RULE = {"nuscenes": "left out of the mean (absent from both prediction and ground truth)",
               "semantickitti": "counted as 0 in the mean, the SemanticKITTI convention (absent from both "
                                "prediction and ground truth)"}


def segmentation_result(conf: torch.Tensor, index) -> Score:
    """The :class:`Score` of confusion matrix ``conf`` by the dataset's convention: per-class IoU (None for a class
    absent from prediction and ground truth where that convention leaves it out), the absent classes and the
    matrix. Without a single labelled point the mIoU is None, with ``miou_null_reason``."""
    iou, mean = (miou_semantickitti if index.dataset == "semantickitti" else miou)(conf)
    union = conf.sum(0) + conf.sum(1) - conf.diagonal()
    absent = [name for i, name in enumerate(index.class_names, 1) if union[i] == 0]
    unscored = math.isnan(mean)  # JSON has no NaN
    return Score(miou=None if unscored else mean, miou_null_reason="no labelled point in the split" if unscored else None,
                 absent_classes=absent, confusion=conf.tolist(),
                 per_class_iou={n: (None if math.isnan(iou[i]) else float(iou[i]))
                                for i, n in enumerate(index.class_names, 1)})


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


def teacher_confusion(index, samples: list[dict], store: FeatureStore, min_depth: float,
                      quiet: bool = True) -> torch.Tensor:
    """(17, 17) confusion matrix of the teacher's own zero-shot labels at the lidar-paired pixels of ``samples``
    (pairs at least ``min_depth`` metres in front of a camera).

    Each lidar-pixel pair votes once (a point seen by two cameras votes twice): the argmax of the pixel's feature
    against the text embeddings, scored with the point's lidar label (docs/convergence.md, "the teacher ceiling").
    """
    _, text = store.text_embeddings()
    num_classes = len(index.class_names) + 1
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with progress_bar("teacher zero-shot", len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample, store, min_depth)
            conf += confusion_matrix(zero_shot_labels(item["pair_teacher"], text),
                                     item["labels"][item["pair_point"]], num_classes)
            bar.advance()
    return conf
