"""Which dataset, in which state: a fingerprint that feature stores and checkpoints record, so that features made
for one dataset (or for the town that used to live at the same path) are never used with another
(docs/reliability.md)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError
from .nuscenes import DatasetIndex


def dataset_fingerprint(index: DatasetIndex) -> str:
    """sha256 (hex) of the table version and, per keyframe in index order, its token, scene, split and the name
    and size in bytes of its lidar and lidarseg files.

    Independent of where the dataset lives, so a moved dataset keeps its fingerprint; a regenerated or
    re-downloaded one with other content does not. Costs one ``stat`` per file.
    """
    h = hashlib.sha256(f"{index.version}\n".encode())
    root = Path(index.dataroot)
    for s in index.samples:
        sizes = []
        for rel in (s["lidar"], s.get("lidarseg")):
            if rel is None:
                sizes.append("-")
                continue
            try:
                sizes.append(str((root / rel).stat().st_size))
            except FileNotFoundError:
                raise UserError(f"{root / rel}: missing; re-download or regenerate the dataset") from None
        h.update(f"{s['token']}|{s['scene']}|{s['split']}|{s['lidar']}|{s.get('lidarseg')}|{'|'.join(sizes)}\n".encode())
    return h.hexdigest()
