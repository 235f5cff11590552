"""Per-point predictions in the benchmarks' own formats, for their official scorers (docs/datasets.md).

- nuScenes-lidarseg: ``DIR/lidarseg/<eval set>/<lidar sample_data token>_lidarseg.bin`` (uint8 class 1-16 per
  point, in the point order of the ``.pcd.bin``) and ``DIR/<eval set>/submission.json`` with the challenge's
  ``meta`` block; ``<eval set>`` is the devkit's split name (``val``, ``test``, ``mini_val``, ...).
- SemanticKITTI: ``DIR/sequences/NN/predictions/NNNNNN.label`` (uint32 raw id per point, through the inverse
  learning map; instance bits 0).

Files are written into a temporary folder inside DIR; each output folder (``lidarseg/<eval set>``,
``sequences/NN/predictions``) replaces an older one of the same name only when the whole split is written.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointMeta
from ..data.index import DatasetIndex
from ..data.nuscenes import eval_set_name
from ..data.semantickitti import learning_map
from ..io import atomic_write_json, staging_folder


def submission_meta(meta: CheckpointMeta) -> dict:
    """The nuScenes-lidarseg ``meta`` block for a checkpoint's ``meta``. At test time the student reads the lidar
    only (cameras are used to train it, which the challenge allows); a backbone distilled from a pretrained
    image model (CLIP) carries external data, so ``use_external`` is true unless it was trained from scratch."""
    return {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
            "use_external": meta.teacher_id != "none"}


class PredictionWriter:
    """Collects one split's predictions (:meth:`add`) and moves them into place (:meth:`commit`)."""

    def __init__(self, index: DatasetIndex, split: str, out: Path, meta: CheckpointMeta) -> None:
        self.index, self.out, self.meta = index, Path(out), meta
        self.eval_set = eval_set_name(index.version, split)
        self.tmp = staging_folder(self.out / "predictions")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.folders: set[str] = set()
        self.files = 0
        self.raw = learning_map().raw_lut() if index.dataset == "semantickitti" else None

    def add(self, sample: dict, pred: np.ndarray) -> None:
        """``pred`` (N,) evaluation classes 1..C of the sample's points, in file order."""
        pred = np.asarray(pred)
        if self.raw is not None:
            folder = f"sequences/{sample['scene']}/predictions"
            name, data = f"{sample['frame']:06d}.label", self.raw[pred].astype(np.uint32)
        else:
            folder = f"lidarseg/{self.eval_set}"
            name, data = f"{sample['lidar_token']}_lidarseg.bin", pred.astype(np.uint8)
        (self.tmp / folder).mkdir(parents=True, exist_ok=True)
        data.tofile(self.tmp / folder / name)
        self.folders.add(folder)
        self.files += 1

    def commit(self) -> dict:
        """Replace the output folders by the new ones; returns what was written."""
        for folder in sorted(self.folders):
            target = self.out / folder
            target.parent.mkdir(parents=True, exist_ok=True)
            old = self.tmp / "old" / folder
            if target.exists():
                old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, old)
            os.replace(self.tmp / folder, target)
        written = {"folder": str(self.out), "files": self.files, "folders": sorted(self.folders)}
        if self.raw is None:
            path = self.out / self.eval_set / "submission.json"
            atomic_write_json(path, {"meta": submission_meta(self.meta)})
            written.update({"eval_set": self.eval_set, "submission": str(path)})
        shutil.rmtree(self.tmp, ignore_errors=True)
        return written

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
