"""``rdistill inspect``: what a dataset holds — scenes, samples, points per class, pairs per camera."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.datasets import open_index
from ..data.index import camera_list
from ..data.projection import DEFAULT_MIN_DEPTH, pair_points
from ..progress import progress_bar
from ..results import Inspection


def inspect_dataset(dataroot: Path, version: str, *, min_depth: float = DEFAULT_MIN_DEPTH, quiet: bool = False,
                    dataset: str | None = None) -> Inspection:
    """Counts for a nuScenes or SemanticKITTI dataroot (scenes are SemanticKITTI's sequences)."""
    index = open_index(dataroot, version, dataset)
    class_points = np.zeros(len(index.class_names) + 1, np.int64)
    pairs_per_camera: dict[str, int] = {}
    total_points = paired_points = 0
    with progress_bar("inspect", len(index.samples), quiet, unit="samples") as bar:
        for sample in index.samples:
            points = index.read_points(sample)
            total_points += len(points)
            labels = index.read_labels(sample, len(points))
            if labels is not None:
                class_points += np.bincount(labels, minlength=len(class_points))
            cams = camera_list(sample)
            point_idx, cam_idx, _ = pair_points(points[:, :3], cams, min_depth)
            for c, cam in enumerate(cams):
                pairs_per_camera[cam["name"]] = pairs_per_camera.get(cam["name"], 0) + int((cam_idx == c).sum())
            paired_points += len(np.unique(point_idx))
            bar.advance()
    scenes = sorted({s["scene"] for s in index.samples})
    splits = sorted({s["split"] for s in index.samples if s["split"]} | {"train", "val"})
    return Inspection(
        dataroot=index.dataroot, dataset=index.dataset, version=index.version, scenes=len(scenes),
        samples=len(index.samples),
        samples_per_split={k: sum(s["split"] == k for s in index.samples) for k in splits},
        points=total_points, paired_points=paired_points, paired_fraction=paired_points / max(total_points, 1),
        points_per_class={"ignore": int(class_points[0]),
                          **{n: int(c) for n, c in zip(index.class_names, class_points[1:])}},
        pairs_per_camera=pairs_per_camera, notes=list(index.notes))
