"""Which dataset, in which state: a fingerprint that feature stores and checkpoints record, so that features made
for one dataset (or for the town that used to live at the same path) are never used with another
(docs/reliability.md). It works on any compact index (nuScenes or SemanticKITTI, data/datasets.py)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError
from .index import DatasetIndex


def dataset_fingerprint(index: DatasetIndex) -> str:
    """sha256 (hex) of the dataset kind and version and, per sample in index order, its token, scene, split and
    the name and size in bytes of its lidar file and label file (lidarseg for nuScenes, ``.label`` for
    SemanticKITTI; ``-`` for a sample without labels).

    Independent of where the dataset lives, so a moved dataset keeps its fingerprint; a regenerated or
    re-downloaded one with other content does not. Costs one ``stat`` per file.
    """
    h = hashlib.sha256(f"{index.dataset}\n{index.version}\n".encode())
    root = Path(index.dataroot)
    for s in index.samples:
        files = (s["lidar"], index.label_file(s))
        sizes = []
        for rel in files:
            if rel is None:
                sizes.append("-")
                continue
            try:
                sizes.append(str((root / rel).stat().st_size))
            except FileNotFoundError:
                raise UserError(f"{root / rel}: missing; re-download or regenerate the dataset") from None
        h.update(f"{s['token']}|{s['scene']}|{s['split']}|{files[0]}|{files[1]}|{'|'.join(sizes)}\n".encode())
    return h.hexdigest()
