"""What every dataset index gives the engines, whatever the dataset (docs/datasets.md): the :class:`DatasetIndex`
base that nuScenes (data/nuscenes.py) and SemanticKITTI (data/semantickitti.py) fill in, the cameras of a sample
as arrays, and the reader of headerless float32 point files both datasets use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import UserError

# The six cameras of the nuScenes rig, in the order feature stores and pairing use; another dataset's cameras
# (SemanticKITTI's image_2) come after them.
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


@dataclass
class DatasetIndex:
    """A dataset as the engines see it: ``samples`` is a list of plain dicts (JSON-able) in scene order and by
    time within a scene, ``scenes`` the scene names in the dataset's order. Engines read points and labels only
    through :meth:`read_points` and :meth:`read_labels`, so every dataset's index stands in for another."""

    dataroot: str
    version: str
    fine_to_coarse: list[int]       # the dataset's label ids -> evaluation classes (0 = ignore)
    samples: list[dict]
    scenes: list[str]

    dataset: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]   # evaluation class i + 1 (0 = ignore)
    notes: tuple[str, ...] = ()     # what to report about the folder (e.g. absent sequences)

    def split(self, name: str) -> list[dict]:
        return [s for s in self.samples if s["split"] == name]

    def has_labels(self, sample: dict) -> bool:
        return self.label_file(sample) is not None

    def read_points(self, sample: dict) -> np.ndarray:
        """(N, C) float32 points of the sample, x, y, z in metres first."""
        raise NotImplementedError

    def label_file(self, sample: dict) -> str | None:
        """The sample's label file, relative to the dataroot, or None without labels."""
        raise NotImplementedError

    def read_labels(self, sample: dict, num_points: int) -> np.ndarray | None:
        """(N,) int64 evaluation classes (0 = ignore), or None for a sample without labels."""
        raise NotImplementedError

    def require_labels(self, samples: list[dict], use: str) -> None:
        """Raise a one-line :class:`UserError` if a sample has no labels; ``use`` says what they are for."""
        raise NotImplementedError


MAX_COORDINATE_M = 1000.0  # a lidar point farther than this along an axis is a corrupt file (nuScenes: < 100 m)
MAX_CHANNEL_VALUE = 1e6    # intensity (0-255), remission (0-1), ring index: far larger is a corrupt file


def read_float32_rows(path: Path, columns: int, what: str) -> np.ndarray:
    """(N, columns) float32 rows of a headerless binary point file (a ``.pcd.bin`` or a velodyne ``.bin``); a
    missing, empty or truncated file is a one-line :class:`UserError` calling it ``what``."""
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} missing; re-download or regenerate the dataset") from None
    if raw.size == 0 or raw.size % columns:
        raise UserError(f"{path}: truncated or corrupt {what} ({path.stat().st_size} bytes, not a multiple of "
                        f"{4 * columns}); re-download or regenerate it")
    rows = raw.reshape(-1, columns)
    bad = ~np.isfinite(rows).all(1) | (np.abs(rows[:, :3]) > MAX_COORDINATE_M).any(1) \
        | (np.abs(rows[:, 3:]) > MAX_CHANNEL_VALUE).any(1)
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"{path}: point {row} is {rows[row].tolist()} (a NaN, infinite, over {MAX_COORDINATE_M:g} m "
                        f"coordinate or an intensity out of range); the {what} is corrupt, re-download or regenerate it")
    return rows


def camera_list(sample: dict) -> list[dict]:
    """The sample's cameras as arrays, in :data:`CAMERAS` order, then any other camera (SemanticKITTI's
    ``image_2``); what :func:`pair_points` takes."""
    names = [n for n in CAMERAS if n in sample["cameras"]] + [n for n in sample["cameras"] if n not in CAMERAS]
    return [{"name": name, "lidar_to_camera": np.asarray(c["lidar_to_camera"]), "intrinsic": np.asarray(c["intrinsic"]),
             "image_size": tuple(c["image_size"]), "image": c["image"]}
            for name, c in ((n, sample["cameras"][n]) for n in names)]
