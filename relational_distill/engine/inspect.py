"""``rdistill inspect``: what a dataset holds — scenes, samples, points per class, pairs per camera."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classes import CLASS_NAMES
from ..data.nuscenes import CAMERAS, camera_list, load_index, read_labels, read_lidar
from ..data.projection import pair_points
from ..progress import progress_bar


def inspect_dataset(dataroot: Path, version: str, min_depth: float = 1.0, quiet: bool = False) -> dict:
    index = load_index(dataroot, version)
    class_points = np.zeros(len(CLASS_NAMES) + 1, np.int64)
    pairs_per_camera = dict.fromkeys(CAMERAS, 0)
    total_points = paired_points = 0
    with progress_bar("inspect", len(index.samples), quiet, unit="samples") as bar:
        for sample in index.samples:
            points = read_lidar(index.dataroot, sample["lidar"])
            total_points += len(points)
            if sample["lidarseg"]:
                labels = read_labels(index.dataroot, sample["lidarseg"], len(points), index.fine_to_coarse)
                class_points += np.bincount(labels, minlength=len(class_points))
            cams = camera_list(sample)
            point_idx, cam_idx, _ = pair_points(points[:, :3], cams, min_depth)
            for c, cam in enumerate(cams):
                pairs_per_camera[cam["name"]] += int((cam_idx == c).sum())
            paired_points += len(np.unique(point_idx))
            bar.advance()
    scenes = sorted({s["scene"] for s in index.samples})
    return {
        "dataroot": index.dataroot, "version": version, "scenes": len(scenes),
        "samples": len(index.samples),
        "samples_per_split": {k: sum(s["split"] == k for s in index.samples) for k in ("train", "val")},
        "points": total_points, "paired_points": paired_points,
        "paired_fraction": paired_points / max(total_points, 1),
        "points_per_class": {"ignore": int(class_points[0]),
                             **{n: int(c) for n, c in zip(CLASS_NAMES, class_points[1:])}},
        "pairs_per_camera": pairs_per_camera,
    }
