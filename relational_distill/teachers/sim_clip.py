"""``sim-clip``: stand-in CLIP teachers for the synthetic town (no CLIP weights can be downloaded here).

They read the town's per-pixel side-car maps (class and instance ids) and produce 512-d dense features at patch
resolution (docs/teachers.md, "The simulated teachers"):

    f_patch = normalize(a * mean_patch(c_class) + b * mean_patch(e_instance) + s * noise_patch + g_image
                        [+ the CLIP-like terms below])
    t_class = normalize(c_class + g_text)

Class directions carry semantic structure (vehicles near vehicles, flat classes near flat classes), the patch
average mixes classes at boundaries as a ViT token does, and the shared offsets g_image / g_text make a modality
gap. ``sim-clip:clean`` (configs/sim_clip_clean.yaml) is that alone: per-patch i.i.d. noise, far cleaner than any
real dense CLIP. ``sim-clip`` (configs/sim_clip.yaml) adds the errors of dense CLIP on driving images:

* confusion: each region (an object instance, or one stuff class of an image) is pulled towards another class,
  a semantically near one (same group) with probability ``near_share``, by a strength drawn in
  [0, ``confusion_weight``]; a share ``systematic_share`` of it (in variance) is the teacher's own pull of the
  region's class towards a near class, the same in every view, frame and place (a CLIP's class-level
  confusions), the rest is drawn per image and region (view-dependent, towards a near class with probability
  ``near_share``);
* context: every patch takes a share ``context_share`` of its image's mean semantic, as a ViT token sees its
  context; it pulls small objects hardest towards the large classes around them;
* blobs: smooth noise at a scale of ``blob_patches`` patches (``blob_weight``) and a per-image bias
  (``image_bias_weight``), both view-dependent.

A weight of 0 leaves its term out, so ``sim-clip:clean`` computes exactly what the teacher computed before those
terms existed. Every number measured with either teacher is synthetic.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..classes import CLASS_NAMES
from ..config import CONFIG_DIR, read_yaml
from ..data.index import camera_list
from ..data.town import SIDECAR_DIR
from ..errors import UserError
from ..io import NPY_ERRORS

SKY = 255
# Simulated teachers by spec, and the configuration each is built from.
SIM_TEACHERS = {"sim-clip": "sim_clip.yaml", "sim-clip:clean": "sim_clip_clean.yaml"}
# The CLIP-like terms; each is left out of the features, and out of the digest, at its default.
CLIP_LIKE_DEFAULTS = {"confusion_weight": 0.0, "near_share": 0.0, "systematic_share": 0.0, "context_share": 0.0,
                      "blob_weight": 0.0, "blob_patches": 4.0, "image_bias_weight": 0.0}


@dataclass(frozen=True)
class SimClipConfig:
    """Parameters of a simulated teacher; the calibrated values live in configs/sim_clip*.yaml."""

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
    confusion_weight: float = 0.0   # largest pull of a region towards its confused class (1 = all the way)
    near_share: float = 0.0         # probability that the confused class is in the region's semantic group
    systematic_share: float = 0.0   # share (in variance) of the confusion drawn per place, not per image
    context_share: float = 0.0      # share of a patch's semantic taken from its image's mean semantic
    blob_weight: float = 0.0        # smooth view-dependent noise
    blob_patches: float = 4.0       # its correlation length, in patches
    image_bias_weight: float = 0.0  # a view-dependent offset shared by every patch of an image

    @classmethod
    def from_yaml(cls, path: Path) -> "SimClipConfig":
        data = read_yaml(path, "sim-clip configuration")
        try:
            groups = tuple((g, tuple(members)) for g, members in data.pop("groups", {}).items())
            return cls(**data, groups=groups)
        except (TypeError, AttributeError, ValueError) as err:
            raise UserError(f"{path}: not a valid sim-clip configuration ({str(err)[:200]}); compare it with "
                            f"configs/sim_clip.yaml") from None

    @classmethod
    def named(cls, spec: str) -> "SimClipConfig":
        """The configuration of a simulated teacher of :data:`SIM_TEACHERS`."""
        return cls.from_yaml(CONFIG_DIR / SIM_TEACHERS[spec])

    @property
    def clip_like(self) -> bool:
        return any(getattr(self, k) != v for k, v in CLIP_LIKE_DEFAULTS.items() if k != "blob_patches")

    def digest(self) -> str:
        """SHA-1 of the parameters; a CLIP-like term at its default is left out, so a teacher without them keeps
        the digest (and the teacher id of its stores) it had before they existed."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in CLIP_LIKE_DEFAULTS or getattr(self, f.name) != CLIP_LIKE_DEFAULTS[f.name]}
        return hashlib.sha1(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()


def sim_teacher_id(cfg: SimClipConfig) -> str:
    return f"sim-clip:{cfg.digest()[:12]}"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _key(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def _patch_fractions(ids: np.ndarray, gh: int, gw: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values of ``ids`` (H, W) over the patch grid, their share of each patch (gh, gw, R))."""
    crop = ids[: gh * p, : gw * p]
    values, local = np.unique(crop, return_inverse=True)
    frac = np.eye(len(values), dtype=np.float32)[local.reshape(crop.shape)].reshape(gh, p, gw, p, -1).mean((1, 3))
    return values, frac


def smooth_noise(rng: np.random.Generator, gh: int, gw: int, dim: int, scale: float) -> np.ndarray:
    """(gh, gw, dim) Gaussian noise correlated over about ``scale`` patches: i.i.d. N(0, 1/dim) vectors on a grid
    of spacing ``scale``, bilinearly interpolated at the patch centres."""
    ch, cw = int(np.ceil((gh - 1) / scale)) + 2, int(np.ceil((gw - 1) / scale)) + 2
    coarse = rng.normal(size=(ch, cw, dim)) / np.sqrt(dim)
    y, x = np.arange(gh) / scale + rng.uniform(0, 1), np.arange(gw) / scale + rng.uniform(0, 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    wy, wx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


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
        # label (1..16) -> the other labels of its semantic group
        self.near = {i + 1: [j + 1 for j, other in enumerate(CLASS_NAMES) if other != name and
                             group_of.get(other) is not None and group_of.get(other) == group_of.get(name)]
                     for i, name in enumerate(CLASS_NAMES)}
        # the systematic confusion: one pull per class towards a near class, the same in every view, frame and place
        self.class_pulls = np.stack([self._confusion(np.random.default_rng([cfg.seed, 4, c]), c, 1.0)
                                     for c in range(1, len(CLASS_NAMES) + 1)])

    @property
    def teacher_id(self) -> str:
        return sim_teacher_id(self.cfg)

    def text_embeddings(self) -> torch.Tensor:
        """(16, D) L2-normalised text embeddings of the 16 classes."""
        return torch.from_numpy(_unit(self.class_dirs + self.text_gap)).float()

    def _label_dirs(self) -> np.ndarray:
        """(18, D): ignore, the 16 classes, sky — indexed by 16-class label, sky = 17."""
        return np.concatenate([self.ignore_dir[None], self.class_dirs, self.sky_dir[None]])

    def _confusion(self, rng: np.random.Generator, label: int, near_share: float) -> np.ndarray:
        """(D,) the pull of a region of class ``label`` (1..16) towards the class it is confused with: one of its
        semantic group with probability ``near_share`` (where the group has another class), else any other."""
        near = self.near[label]
        if near and rng.random() < near_share:
            other = near[rng.integers(len(near))]
        else:
            other = [c for c in range(1, len(CLASS_NAMES) + 1) if c != label][rng.integers(len(CLASS_NAMES) - 1)]
        strength = self.cfg.confusion_weight * rng.random()
        return strength * (self.class_dirs[other - 1] - self.class_dirs[label - 1])

    def _region_confusion(self, label: np.ndarray, instance: np.ndarray, gh: int, gw: int,
                          view_key: int) -> np.ndarray:
        """(gh, gw, D) the confusion term of every patch: each region's pull, averaged over the patch."""
        p = self.cfg.patch
        # a region: an object instance, or for stuff (no instance) one class of the scene
        region = np.where(instance >= 0, instance.astype(np.int64) + 1000, label.astype(np.int64))
        ids, frac = _patch_fractions(region, gh, gw, p)
        label_of = {}
        crop_r, crop_l = region[: gh * p, : gw * p].ravel(), label[: gh * p, : gw * p].ravel()
        first = np.unique(crop_r, return_index=True)[1]
        for r, i in zip(crop_r[first], first):
            label_of[int(r)] = int(crop_l[i])
        sys_w, view_w = np.sqrt(self.cfg.systematic_share), np.sqrt(1 - self.cfg.systematic_share)
        pulls = np.zeros((len(ids), self.dim))
        for n, r in enumerate(ids):
            lab = label_of[int(r)]
            if not 1 <= lab <= len(CLASS_NAMES):
                continue  # ignore and sky are not confused
            view = np.random.default_rng([self.instance_seed, view_key, int(r), 3])
            pulls[n] = sys_w * self.class_pulls[lab - 1] + view_w * self._confusion(view, lab, self.cfg.near_share)
        return frac @ pulls

    def image_features(self, category: np.ndarray, instance: np.ndarray, image_key: str) -> np.ndarray:
        """Patch features (D, H/p, W/p) float32, L2-normalised, of one image from its side-car maps.

        ``category`` (H, W) holds nuScenes fine indices (255 = sky), ``instance`` (H, W) instance ids;
        ``image_key`` (``scene|image``) makes instance and noise vectors distinct per scene and image.
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
        scene_key = _key(image_key.split("|")[0])
        inst_dirs = np.stack([_unit(np.random.default_rng([self.instance_seed, scene_key, int(i) + 10_000]).normal(size=self.dim))
                              if i >= 0 else np.zeros(self.dim) for i in ids])
        view_key = _key(image_key)
        noise_rng = np.random.default_rng([self.instance_seed, view_key])
        noise = noise_rng.normal(size=(gh, gw, self.dim)) / np.sqrt(self.dim)
        if cfg.confusion_weight:
            semantic = semantic + self._region_confusion(label, instance, gh, gw, view_key)
        if cfg.context_share:
            semantic = (1 - cfg.context_share) * semantic + cfg.context_share * semantic.mean((0, 1))
        f = (cfg.class_weight * semantic + cfg.instance_weight * (inst_frac @ inst_dirs)
             + cfg.noise_weight * noise + self.image_gap)
        view_rng = np.random.default_rng([self.instance_seed, view_key, 1])
        if cfg.blob_weight:
            f = f + cfg.blob_weight * smooth_noise(view_rng, gh, gw, self.dim, cfg.blob_patches)
        if cfg.image_bias_weight:
            f = f + cfg.image_bias_weight * _unit(view_rng.normal(size=self.dim))
        return _unit(f).transpose(2, 0, 1).astype(np.float32)

    def sample_features(self, dataroot: str, sample: dict) -> np.ndarray:
        """(num_cameras, D, gh, gw) patch features of every camera of an index sample."""
        out = []
        for cam in camera_list(sample):
            path = Path(dataroot) / SIDECAR_DIR / (cam["image"][:-4] + ".npz")
            if not path.exists():
                raise UserError(f"{path}: missing side-car map; the sim-clip teacher only works on a town made by "
                                f"'rdistill make-sim' — use an openclip: teacher for other data")
            try:
                with np.load(path, allow_pickle=False) as side:
                    category, instance = side["category"], side["instance"]
            except NPY_ERRORS as err:
                raise UserError(f"{path}: unreadable side-car map ({type(err).__name__}); regenerate the town with "
                                f"'rdistill make-sim'") from None
            width, height = cam["image_size"]
            if category.shape != (height, width) or instance.shape != (height, width) \
                    or category.dtype.kind not in "iu" or instance.dtype.kind not in "iu" \
                    or not np.isin(category, [*range(32), SKY]).all():
                raise UserError(f"{path}: not a side-car map of this {width}x{height} camera (shapes "
                                f"{category.shape} {instance.shape}, or categories other than 0-31 and 255 = sky); regenerate the town "
                                f"with 'rdistill make-sim'")
            out.append(self.image_features(category, instance, f"{sample['scene']}|{cam['image']}"))
        return np.stack(out)
