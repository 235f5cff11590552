"""``sim-clip``: a stand-in CLIP teacher for the synthetic town (no CLIP weights can be downloaded here).

It reads the town's per-pixel side-car maps (class and instance ids) and produces 512-d dense features at
patch resolution with CLIP-like statistics (SPEC 2.3):

    f_patch = normalize(a * mean_patch(c_class) + b * mean_patch(e_instance) + s * noise_patch + g_image)
    t_class = normalize(c_class + g_text)

Class directions carry semantic structure (vehicles near vehicles, flat classes near flat classes), the
patch average mixes classes at boundaries as a ViT token does, and the shared offsets g_image / g_text make
a modality gap. Every number measured with this teacher is synthetic.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..classes import CLASS_NAMES
from ..data.nuscenes import camera_list
from ..data.town import SIDECAR_DIR
from ..errors import UserError

SKY = 255


@dataclass(frozen=True)
class SimClipConfig:
    """Parameters of the simulated teacher; the calibrated values live in configs/sim_clip.yaml."""

    dim: int
    seed: int
    patch: int
    class_weight: float      # a
    instance_weight: float   # b
    noise_weight: float      # s
    image_gap: float         # |g_image|
    text_gap: float          # |g_text|
    group_share: float       # share of a class direction taken from its semantic group
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_yaml(cls, path: Path) -> "SimClipConfig":
        data = yaml.safe_load(Path(path).read_text())
        groups = tuple((g, tuple(members)) for g, members in data.pop("groups", {}).items())
        return cls(**data, groups=groups)

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class SimClipTeacher:
    """Dense features for images of the synthetic town, from their side-car maps."""

    def __init__(self, cfg: SimClipConfig, fine_to_coarse: list[int]) -> None:
        self.cfg = cfg
        self.fine_to_coarse = np.asarray(fine_to_coarse, dtype=np.int64)
        rng = np.random.default_rng(cfg.seed)
        d = cfg.dim
        group_of = {c: g for g, members in cfg.groups for c in members}
        group_dirs = {g: _unit(rng.normal(size=d)) for g, _ in cfg.groups}
        rows = []
        for name in CLASS_NAMES:
            own = _unit(rng.normal(size=d))
            if name in group_of:
                own = _unit(cfg.group_share * group_dirs[group_of[name]] + np.sqrt(1 - cfg.group_share ** 2) * own)
            rows.append(own)
        # Directions of everything that is not one of the 16 classes: ignore (0) and sky.
        self.ignore_dir = _unit(rng.normal(size=d))
        self.sky_dir = _unit(rng.normal(size=d))
        self.class_dirs = np.stack(rows)                     # (16, D)
        self.image_gap = cfg.image_gap * _unit(rng.normal(size=d))
        self.text_gap = cfg.text_gap * _unit(rng.normal(size=d))
        self.instance_seed = int(rng.integers(2 ** 31))
        self.dim = d

    @property
    def teacher_id(self) -> str:
        return f"sim-clip:{self.cfg.digest()[:12]}"

    def text_embeddings(self) -> torch.Tensor:
        """(16, D) L2-normalised text embeddings of the 16 classes."""
        return torch.from_numpy(_unit(self.class_dirs + self.text_gap)).float()

    def _label_dirs(self) -> np.ndarray:
        """(18, D): ignore, the 16 classes, sky — indexed by 16-class label, sky = 17."""
        return np.concatenate([self.ignore_dir[None], self.class_dirs, self.sky_dir[None]])

    def image_features(self, category: np.ndarray, instance: np.ndarray, image_key: str) -> np.ndarray:
        """Patch features (D, H/p, W/p) float32, L2-normalised, of one image from its side-car maps.

        ``category`` (H, W) holds nuScenes fine indices (255 = sky), ``instance`` (H, W) instance ids;
        ``image_key`` (e.g. the scene name) makes instance and noise vectors distinct per scene and image.
        """
        cfg, p = self.cfg, self.cfg.patch
        h, w = category.shape
        gh, gw = h // p, w // p
        label = np.where(category == SKY, len(CLASS_NAMES) + 1, self.fine_to_coarse[np.minimum(category, 31)])
        onehot = np.eye(len(CLASS_NAMES) + 2, dtype=np.float32)[label[: gh * p, : gw * p]]
        class_frac = onehot.reshape(gh, p, gw, p, -1).mean((1, 3))          # (gh, gw, 18)
        semantic = class_frac @ self._label_dirs()
        inst = instance[: gh * p, : gw * p]
        ids, local = np.unique(inst, return_inverse=True)
        inst_frac = np.eye(len(ids), dtype=np.float32)[local.reshape(inst.shape)].reshape(gh, p, gw, p, -1).mean((1, 3))
        scene_key = int(hashlib.sha1(image_key.split("|")[0].encode()).hexdigest()[:8], 16)
        inst_dirs = np.stack([_unit(np.random.default_rng([self.instance_seed, scene_key, int(i) + 10_000]).normal(size=self.dim))
                              if i >= 0 else np.zeros(self.dim) for i in ids])
        noise_rng = np.random.default_rng([self.instance_seed, int(hashlib.sha1(image_key.encode()).hexdigest()[:8], 16)])
        noise = noise_rng.normal(size=(gh, gw, self.dim)) / np.sqrt(self.dim)
        f = (cfg.class_weight * semantic + cfg.instance_weight * (inst_frac @ inst_dirs)
             + cfg.noise_weight * noise + self.image_gap)
        return _unit(f).transpose(2, 0, 1).astype(np.float32)

    def sample_features(self, dataroot: str, sample: dict) -> np.ndarray:
        """(num_cameras, D, gh, gw) patch features of every camera of an index sample."""
        out = []
        for cam in camera_list(sample):
            path = Path(dataroot) / SIDECAR_DIR / (cam["image"][:-4] + ".npz")
            if not path.exists():
                raise UserError(f"{path}: missing side-car map; the sim-clip teacher only works on a town made by "
                                f"'rdistill make-sim' — use an openclip: teacher for other data")
            side = np.load(path)
            out.append(self.image_features(side["category"], side["instance"], f"{sample['scene']}|{cam['image']}"))
        return np.stack(out)
