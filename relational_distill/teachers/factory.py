"""A teacher from its spec string: ``sim-clip`` (the synthetic town's simulated CLIP, configs/sim_clip.yaml) or
``sim-clip:clean`` (its clean predecessor, configs/sim_clip_clean.yaml) or ``openclip:MODEL/TAG`` (open_clip with
MaskCLIP dense features, docs/teachers.md), behind one interface that
``precompute`` fills a feature store with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import CONFIG_DIR
from ..data.images import read_rgb
from ..data.index import CAMERAS, DatasetIndex, camera_list
from ..errors import UserError
from .prompts import load_prompts
from .sim_clip import SIM_TEACHERS, SimClipConfig, SimClipTeacher


class _TeacherAdapter:
    """What precompute needs of a teacher: id, hashes, activation, feature dim, patch size (pixels per feature
    cell), features and text embeddings."""

    teacher_id: str
    patch: int

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (rows, columns) of a teacher input of ``image_size`` = (width, height) pixels; a size that is
        not a multiple of the patch size is refused, naming the nearest valid sizes (features would not line up
        with their pixels)."""
        width, height = image_size
        if width <= 0 or height <= 0 or width % self.patch or height % self.patch:
            options = sorted(((w, h) for w in _near_multiples(width, self.patch)
                              for h in _near_multiples(height, self.patch)),
                             key=lambda s: (abs(s[0] - width) + abs(s[1] - height), s))
            raise UserError(f"--image-size {width}x{height}: not a multiple of the patch size {self.patch} of teacher "
                            f"'{self.teacher_id}'; nearest valid sizes: {', '.join(f'{w}x{h}' for w, h in options)}")
        return height // self.patch, width // self.patch


def _near_multiples(value: int, step: int) -> list[int]:
    """``value`` if it is a positive multiple of ``step``, else the multiples just below and above it."""
    if value > 0 and value % step == 0:
        return [value]
    low = value // step * step
    return [m for m in (low, low + step) if m >= step]


class SimClipAdapter(_TeacherAdapter):
    """The simulated teacher behind the common teacher interface."""

    def __init__(self, index: DatasetIndex, config: Path) -> None:
        self.cfg = SimClipConfig.from_yaml(config)
        self.teacher = SimClipTeacher(self.cfg, index.fine_to_coarse)
        self.teacher_id = self.teacher.teacher_id
        self.weights_hash = self.cfg.digest()
        self.templates_hash = "sim-clip"
        self.activation = "none"
        self.dim, self.patch = self.cfg.dim, self.cfg.patch
        self.index = index

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        for s in self.index.samples:
            native = tuple(camera_list(s)[0]["image_size"])
            if native != tuple(image_size):
                raise UserError(f"sim-clip reads side-car maps at the town's image size {native[0]}x{native[1]}; "
                                f"pass --image-size {native[0]}x{native[1]}")
        return super().grid(image_size)

    def features(self, samples: list[dict], image_size: tuple[int, int]) -> list[np.ndarray]:
        return [self.teacher.sample_features(self.index.dataroot, s) for s in samples]

    def text_embeddings(self) -> torch.Tensor:
        return self.teacher.text_embeddings()


class OpenClipAdapter(_TeacherAdapter):
    """open_clip CLIP with MaskCLIP dense features; images are resized to the teacher input size with the filter,
    and normalised with the mean and std, of the weights' own preprocessing."""

    def __init__(self, spec: str, index: DatasetIndex, prompts: Path, device: str, activation: str = "auto",
                 image_size: tuple[int, int] | None = None) -> None:
        from .maskclip import load_openclip, plan_openclip

        self.teacher_id = spec
        self.patch = plan_openclip(spec, activation).stride
        if image_size is not None:  # refuse a bad input size before downloading or reading any weights
            self.grid(image_size)
        self.clip = load_openclip(spec, device, activation)
        self.model, self.tokenizer, self.weights_hash = self.clip.model, self.clip.tokenizer, self.clip.weights_hash
        self.activation = self.clip.activation
        self.class_prompts, self.templates_hash = load_prompts(prompts)
        self.patch = self.clip.stride
        self.dim = self.clip.dim
        self.index, self.device = index, device

    def features(self, samples: list[dict], image_size: tuple[int, int]) -> list[np.ndarray]:
        from PIL import Image

        from .maskclip import dense_features, normalise_images

        resample = Image.BILINEAR if self.clip.interpolation == "bilinear" else Image.BICUBIC
        images = []
        for s in samples:
            for cam in camera_list(s):
                img = read_rgb(Path(self.index.dataroot) / cam["image"]).resize(tuple(image_size), resample)
                images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        batch = normalise_images(torch.stack(images).to(self.device), self.clip.mean, self.clip.std)
        feats = dense_features(self.model, batch).half().cpu().numpy()
        per = len(CAMERAS)
        return [feats[i * per:(i + 1) * per] for i in range(len(samples))]

    def text_embeddings(self) -> torch.Tensor:
        from .maskclip import text_embeddings

        return text_embeddings(self.model, self.tokenizer, self.class_prompts).cpu()


def make_teacher(spec: str, index: DatasetIndex, device: str = "cpu", prompts: Path | None = None,
                 sim_config: Path | None = None, activation: str = "auto", image_size: tuple[int, int] | None = None):
    """The teacher behind ``spec``: a name of :data:`SIM_TEACHERS` (``sim_config`` overrides its file) or an
    ``openclip:`` spec; with ``image_size``, an open_clip teacher checks it before loading weights."""
    if spec in SIM_TEACHERS:
        if activation != "auto":
            raise UserError(f"--activation {activation}: only for openclip: teachers")
        return SimClipAdapter(index, sim_config or CONFIG_DIR / SIM_TEACHERS[spec])
    return OpenClipAdapter(spec, index, prompts or CONFIG_DIR / "prompts.yaml", device, activation, image_size)
