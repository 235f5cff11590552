"""The teacher feature store: one float16 file per sample, a manifest, the text embeddings, a summary.

Layout of a store folder::

    manifest.json          teacher id + weights hash + MLP activation, teacher input size, patch grid, dim,
                           dataset version and root, prompt-templates hash, camera order
    text_embeddings.pt     {"classes", "embeddings" (16, D) float32, "teacher_id", "templates_hash"}
    features/<token>.npy   (cameras, D, gh, gw) float16 patch features of one sample
    summary.json           what precompute measured (written when every sample is present)

Each file is written atomically. Opening a store for training validates the manifest against what the caller
expects and refuses a mismatch with one clear line.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_write, atomic_write_json, atomic_torch_save

STORE_FORMAT = 2  # 2: the manifest records the teacher's MLP activation


@dataclass(frozen=True)
class Manifest:
    teacher_id: str
    weights_hash: str
    image_size: tuple[int, int]     # teacher input (width, height), pixels
    grid: tuple[int, int]           # patch grid (gh, gw)
    dim: int
    dataset_version: str
    dataroot: str
    templates_hash: str
    cameras: tuple[str, ...]
    activation: str                 # gelu or quick_gelu for open_clip teachers (docs/teachers.md), none for sim-clip
    format: int = STORE_FORMAT

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        data = dict(data)
        for key in ("image_size", "grid", "cameras"):
            data[key] = tuple(data[key])
        return cls(**data)

    def mismatch(self, other: "Manifest") -> str | None:
        """The first field that differs from ``other``, described, or None."""
        for key in ("format", "teacher_id", "weights_hash", "activation", "dataset_version", "image_size",
                    "templates_hash", "dim", "cameras"):
            if getattr(self, key) != getattr(other, key):
                return f"{key} is {getattr(self, key)!r}, expected {getattr(other, key)!r}"
        return None


class FeatureStore:
    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = Path(root)
        self.manifest = manifest

    # -- creation and opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, manifest: Manifest) -> "FeatureStore":
        """Open ``root`` for writing; an existing store there must have been made the same way (then we resume)."""
        root = Path(root)
        path = root / "manifest.json"
        if path.exists():
            existing = cls.open(root).manifest
            problem = existing.mismatch(manifest)
            if problem:
                raise UserError(f"{path}: this store was made differently ({problem}); "
                                f"pass a new --out folder or delete {root}")
        else:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, asdict(manifest))
        return cls(root, manifest)

    @classmethod
    def open(cls, root: Path, teacher: str | None = None, version: str | None = None) -> "FeatureStore":
        """Open an existing store, checking (when given) that it was made by ``teacher`` for ``version``."""
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise UserError(f"{path}: no feature store here; run 'rdistill precompute DATAROOT --out {root}' first")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != STORE_FORMAT:
                raise UserError(f"{path}: store format {data.get('format')}, this rdistill reads {STORE_FORMAT}; "
                                f"run precompute again into a new folder")
            manifest = Manifest.from_json(data)
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(f"{path}: unreadable manifest ({err}); delete {root} and run precompute again") from None
        if teacher is not None and not _same_teacher(manifest.teacher_id, teacher):
            raise UserError(f"{path}: features were made by teacher '{manifest.teacher_id}', not '{teacher}'; "
                            f"pass the matching --teacher or precompute features for '{teacher}'")
        if version is not None and manifest.dataset_version != version:
            raise UserError(f"{path}: features were made for dataset version '{manifest.dataset_version}', "
                            f"not '{version}'; pass the matching --version or precompute again")
        return cls(root, manifest)

    # -- per-sample features --------------------------------------------------------------------------------------
    def path(self, token: str) -> Path:
        return self.root / "features" / f"{token}.npy"

    def expected_shape(self) -> tuple[int, ...]:
        m = self.manifest
        return (len(m.cameras), m.dim, *m.grid)

    def is_valid(self, token: str) -> bool:
        """True if the sample's file exists, is complete and has the manifest's shape and dtype."""
        try:
            arr = np.load(self.path(token), mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return False
        return arr.shape == self.expected_shape() and arr.dtype == np.float16

    def write(self, token: str, features: np.ndarray) -> None:
        if features.shape != self.expected_shape():
            raise ValueError(f"features of shape {features.shape}, store expects {self.expected_shape()}")
        atomic_write(self.path(token), lambda f: np.save(f, features.astype(np.float16)))

    def read(self, token: str) -> np.ndarray:
        """(cameras, D, gh, gw) float16 features of one sample."""
        path = self.path(token)
        if not self.is_valid(token):
            raise UserError(f"{path}: missing or truncated feature file; run 'rdistill precompute' again "
                            f"with --out {self.root} (it redoes only what is missing)")
        return np.load(path)

    # -- text embeddings and summary ------------------------------------------------------------------------------
    def write_text_embeddings(self, classes: list[str], embeddings: torch.Tensor) -> None:
        atomic_torch_save(self.root / "text_embeddings.pt",
                          {"classes": list(classes), "embeddings": embeddings.float().cpu(),
                           "teacher_id": self.manifest.teacher_id, "templates_hash": self.manifest.templates_hash})

    def text_embeddings(self) -> tuple[list[str], torch.Tensor]:
        path = self.root / "text_embeddings.pt"
        if not path.exists():
            raise UserError(f"{path}: missing; run 'rdistill precompute' again with --out {self.root}")
        data = torch.load(path, weights_only=True)
        if data["teacher_id"] != self.manifest.teacher_id:
            raise UserError(f"{path}: text embeddings of '{data['teacher_id']}' in a store of "
                            f"'{self.manifest.teacher_id}'; run precompute again into a new folder")
        return data["classes"], data["embeddings"]

    def discard_if_empty(self) -> None:
        """Remove what :meth:`create` and :meth:`write_text_embeddings` wrote while no sample is stored yet (and the
        folder when that leaves it empty), so a run that fails before its first sample leaves no half-made store."""
        features = self.root / "features"
        if features.is_dir() and any(features.glob("*.npy")):
            return
        for name in ("manifest.json", "text_embeddings.pt"):
            (self.root / name).unlink(missing_ok=True)
        for folder in (features, self.root):
            try:
                folder.rmdir()
            except OSError:  # absent, or holds files that are not ours
                pass

    def bytes_on_disk(self) -> int:
        """Bytes of the store's own files (not of superpixels kept beside it)."""
        files = [*self.root.glob("*"), *(self.root / "features").glob("*")]
        return sum(p.stat().st_size for p in files if p.is_file())


def _same_teacher(stored: str, requested: str) -> bool:
    """``sim-clip`` matches any ``sim-clip:<digest>``; otherwise the ids must be equal."""
    return stored == requested or stored.split(":")[0] == requested == "sim-clip"

