"""Samples for distill / finetune / evaluate: points, labels, point-pixel pairs and the teacher features there.

Everything is read from the compact index and from the readers the engine hands over (teacher features,
superpixels: objects with ``.read(token)``), never through the devkit, so data-loader workers stay light.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from .index import DatasetIndex, camera_list
from .projection import DEFAULT_MIN_DEPTH, pair_points, sample_at_pixels


class Reader(Protocol):
    """Per-sample data by sample token: teacher features (cameras, D, gh, gw), or superpixel maps per camera."""

    def read(self, token: str): ...


def load_sample(index: DatasetIndex, sample: dict, store: Reader | None = None, min_depth: float = DEFAULT_MIN_DEPTH,
                pairs_per_sample: int | None = None, rng: np.random.Generator | None = None,
                superpixels: Reader | None = None) -> dict:
    """One sample as tensors.

    Returns a dict with ``points`` (N, 5) float32 (x, y, z metres in the lidar frame, intensity 0-255, ring;
    SemanticKITTI: (N, 4), no ring), ``labels`` (N,) int64 evaluation classes (0 = ignore or unlabelled),
    ``pair_point`` (M,) int64 index of the paired point, and with a feature reader ``store``, ``pair_teacher``
    (M, D) float32 L2-normalised teacher features. With ``pairs_per_sample``, at most that many pairs, drawn with
    ``rng``.
    With a ``superpixels`` reader, ``pair_segment`` (M,) gives each pair's SLIC superpixel, unique within the
    sample (camera x segment).
    """
    points = index.read_points(sample)
    labels = index.read_labels(sample, len(points))
    if labels is None:
        labels = np.zeros(len(points), np.int64)
    out = {"token": sample["token"], "points": torch.from_numpy(points.copy()), "labels": torch.from_numpy(labels)}
    if store is None:
        return out
    cams = camera_list(sample)
    point_idx, cam_idx, uv = pair_points(points[:, :3], cams, min_depth)
    if pairs_per_sample is not None and len(point_idx) > pairs_per_sample:
        keep = np.sort((rng or np.random.default_rng()).choice(len(point_idx), pairs_per_sample, replace=False))
        point_idx, cam_idx, uv = point_idx[keep], cam_idx[keep], uv[keep]
    features = torch.from_numpy(store.read(sample["token"]))
    out["pair_point"] = torch.from_numpy(point_idx)
    if superpixels is not None:
        segment = np.empty(len(point_idx), np.int64)
        maps = superpixels.read(sample["token"], [c["image_size"] for c in cams])
        for c, seg in enumerate(maps):
            sel = cam_idx == c
            u = np.clip(np.round(uv[sel, 0]).astype(np.int64), 0, seg.shape[1] - 1)
            v = np.clip(np.round(uv[sel, 1]).astype(np.int64), 0, seg.shape[0] - 1)
            segment[sel] = c * 100_000 + seg[v, u]
        out["pair_segment"] = torch.from_numpy(segment)
    out["pair_teacher"] = sample_at_pixels(features, torch.from_numpy(cam_idx), torch.from_numpy(uv),
                                           [c["image_size"] for c in cams])
    return out


class PointCloudDataset(Dataset):
    """Samples of one split, keyed by ``(epoch, i)``: sample ``i`` as drawn in ``epoch``. ``augment`` applies a
    random rotation about z and a random flip to the points (pairs were computed before, so they stay valid).
    Pair subsampling and augmentation are seeded by (seed, epoch, i), so a resumed run sees exactly the same data."""

    def __init__(self, index: DatasetIndex, samples: list[dict], store: Reader | None = None,
                 pairs_per_sample: int | None = None, augment: bool = False, seed: int = 0,
                 min_depth: float = DEFAULT_MIN_DEPTH,
                 superpixels: Reader | None = None):
        self.index, self.samples, self.store = index, samples, store
        self.superpixels = superpixels
        self.pairs_per_sample, self.augment, self.seed, self.min_depth = pairs_per_sample, augment, seed, min_depth

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        rng = np.random.default_rng([self.seed, epoch, i])
        item = load_sample(self.index, self.samples[i], self.store, self.min_depth, self.pairs_per_sample, rng,
                           self.superpixels)
        if self.augment:
            angle = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(angle), np.sin(angle)
            rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float32)
            if rng.random() < 0.5:
                rot = rot @ torch.diag(torch.tensor([1.0, -1.0, 1.0]))
            item["points"][:, :3] = item["points"][:, :3] @ rot.T
        return item


def collate(items: list[dict]) -> dict:
    """Concatenate samples; ``batch`` (N,) is each point's sample, pair indices are shifted to the concatenation."""
    out = {"tokens": [it["token"] for it in items],
           "points": torch.cat([it["points"] for it in items]),
           "labels": torch.cat([it["labels"] for it in items]),
           "batch": torch.cat([torch.full((len(it["points"]),), b, dtype=torch.long) for b, it in enumerate(items)])}
    if "pair_point" in items[0]:
        offsets = np.cumsum([0] + [len(it["points"]) for it in items[:-1]])
        out["pair_point"] = torch.cat([it["pair_point"] + int(o) for it, o in zip(items, offsets)])
        out["pair_teacher"] = torch.cat([it["pair_teacher"] for it in items])
    if "pair_segment" in items[0]:  # make superpixel ids unique across the batch
        out["pair_segment"] = torch.cat([it["pair_segment"] + b * 10_000_000 for b, it in enumerate(items)])
    return out
