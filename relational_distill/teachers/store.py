"""The teacher feature store: one float16 file per sample, a manifest, the text embeddings, a summary.

Layout of a store folder::

    manifest.json          teacher id + weights hash + MLP activation, teacher input size, patch grid, dim,
                           dataset version, root and fingerprint (data/fingerprint.py), prompt-templates hash,
                           camera order; once every sample is present also "files": the sha256 of every file below
    text_embeddings.pt     {"classes", "embeddings" (16, D) float32, "teacher_id", "templates_hash"}
    features/<token>.npy   (cameras, D, gh, gw) float16 patch features of one sample
    <file>.sha256          the sha256 of <file>, written right after it (what a resumed precompute verifies)
    summary.json           what precompute measured (written when every sample is present)

Each file is written atomically. Opening a store validates the manifest against what the caller expects (teacher,
version, dataset fingerprint) and refuses a mismatch with one clear line; every read verifies the file's sha256,
so a file whose bytes changed is refused, not used (docs/reliability.md).
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import NPY_ERRORS, atomic_write_json, is_scratch_file
from ..store import HashedStore

STORE_FORMAT = 3  # 1: rdistill 0.1; 2: activation alone, or dataset fingerprint and content hashes alone
TEXT_EMBEDDINGS = "text_embeddings.pt"


@dataclass(frozen=True)
class Manifest:
    teacher_id: str
    weights_hash: str
    image_size: tuple[int, int]     # teacher input (width, height), pixels
    grid: tuple[int, int]           # patch grid (gh, gw)
    dim: int
    dataset_version: str
    dataroot: str
    dataset_fingerprint: str        # data/fingerprint.py
    templates_hash: str
    cameras: tuple[str, ...]
    activation: str                 # gelu or quick_gelu for open_clip teachers (docs/teachers.md), none for sim-clip
    format: int = STORE_FORMAT

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        data = {k: v for k, v in data.items() if k != "files"}
        for key in ("image_size", "grid", "cameras"):
            data[key] = tuple(data[key])
        return cls(**data)

    def mismatch(self, other: "Manifest") -> str | None:
        """The first field that differs from ``other``, described, or None."""
        if self.dataset_fingerprint != other.dataset_fingerprint:
            return (f"it was made for dataset {self.dataset_fingerprint[:12]} ({self.dataroot}), not for "
                    f"{other.dataset_fingerprint[:12]} ({other.dataroot})")
        for key in ("format", "teacher_id", "weights_hash", "activation", "dataset_version", "image_size",
                    "templates_hash", "dim", "cameras"):
            if getattr(self, key) != getattr(other, key):
                return f"{key} is {getattr(self, key)!r}, expected {getattr(other, key)!r}"
        return None


class FeatureStore(HashedStore):
    what = "feature store"

    def __init__(self, root: Path, manifest: Manifest, files: dict[str, str] | None = None) -> None:
        super().__init__(root, files)
        self.manifest = manifest

    # -- creation and opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, manifest: Manifest) -> "FeatureStore":
        """Open ``root`` for writing; an existing store there must have been made the same way (then we resume)."""
        root = Path(root)
        path = root / "manifest.json"
        if path.exists():
            existing = cls.open(root)
            problem = existing.manifest.mismatch(manifest)
            if problem:
                raise UserError(f"{path}: this store was made differently ({problem}); "
                                f"pass a new --out folder or delete {root}")
            return existing
        cls.make_folder(root, asdict(manifest), cls.what)
        return cls(root, manifest)

    @classmethod
    def open(cls, root: Path, teacher: str | None = None, version: str | None = None,
             dataset: tuple[str, str] | None = None) -> "FeatureStore":
        """Open an existing store, checking (when given) that it was made by ``teacher`` for ``version`` and for
        ``dataset`` = (dataroot, fingerprint) in its current state."""
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise UserError(f"{path}: no feature store here; run 'rdistill precompute DATAROOT --out {root}' first")
        data = cls.read_manifest(root, STORE_FORMAT, "store", f"delete {root} and run precompute again into a "
                                                                  f"new folder")
        try:
            manifest, files = Manifest.from_json(data), dict(data.get("files", {}))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise UserError(f"{path}: unreadable manifest ({type(err).__name__}: {str(err)[:120]}); delete {root} "
                            f"and run precompute again") from None
        if teacher is not None and not _same_teacher(manifest.teacher_id, teacher):
            raise UserError(f"{path}: features were made by teacher '{manifest.teacher_id}', not '{teacher}'; "
                            f"pass the matching --teacher or precompute features for '{teacher}'")
        if version is not None and manifest.dataset_version != version:
            raise UserError(f"{path}: features were made for dataset version '{manifest.dataset_version}', "
                            f"not '{version}'; pass the matching --version or precompute again")
        store = cls(root, manifest, files)
        if dataset is not None:
            store.require_dataset(*dataset)
        return store

    def require_dataset(self, dataroot: str, fingerprint: str) -> None:
        """Refuse (one line) features made for another dataset than the one ``dataroot`` holds now (its
        data/fingerprint.py ``fingerprint``)."""
        if self.manifest.dataset_fingerprint != fingerprint:
            raise UserError(f"{self.root / 'manifest.json'}: features were made for dataset "
                            f"{self.manifest.dataset_fingerprint[:12]} ({self.manifest.dataroot}), but {dataroot} now "
                            f"holds dataset {fingerprint[:12]}; precompute features for it into a new --out folder")

    # -- per-sample features --------------------------------------------------------------------------------------
    @staticmethod
    def relpath(token: str) -> str:
        return f"features/{token}.npy"

    def path(self, token: str) -> Path:
        return self.root / self.relpath(token)

    def expected_shape(self) -> tuple[int, ...]:
        m = self.manifest
        return (len(m.cameras), m.dim, *m.grid)

    def problem(self, token: str) -> str | None:
        """What is wrong with a sample's file (missing, changed, wrong shape or dtype), or None if it is good."""
        data, problem = self.read_verified(self.relpath(token))
        if problem:
            return problem
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except NPY_ERRORS:
            return "not a readable .npy file"
        if arr.shape != self.expected_shape() or arr.dtype != np.float16:
            return f"shape {arr.shape} {arr.dtype}, the store holds {self.expected_shape()} float16"
        return None

    def is_valid(self, token: str) -> bool:
        """True if the sample's file exists, matches its recorded sha256 and has the manifest's shape and dtype."""
        return self.problem(token) is None

    def write(self, token: str, features: np.ndarray) -> None:
        if features.shape != self.expected_shape():
            raise ValueError(f"features of shape {features.shape}, store expects {self.expected_shape()}")
        buf = io.BytesIO()
        np.save(buf, features.astype(np.float16))
        self.write_hashed(self.relpath(token), buf.getvalue())

    def read(self, token: str) -> np.ndarray:
        """(cameras, D, gh, gw) float16 features of one sample, verified against their recorded sha256."""
        rel = self.relpath(token)
        data, problem = self.read_verified(rel)
        if problem:
            raise self.refuse(rel, problem)
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except NPY_ERRORS as err:
            raise self.refuse(rel, f"not a readable .npy file ({type(err).__name__})") from None
        if not isinstance(arr, np.ndarray) or arr.shape != self.expected_shape() or arr.dtype != np.float16:
            raise self.refuse(rel, f"shape {arr.shape} {arr.dtype}, the store holds {self.expected_shape()} float16")
        return arr

    def record_files(self, tokens: list[str]) -> bool:
        """Write the sha256 of the text embeddings and of every sample into the manifest (the store is complete).
        Returns False when the manifest already recorded exactly these hashes."""
        files = {rel: self.recorded_hash(rel) for rel in [TEXT_EMBEDDINGS] + [self.relpath(t) for t in tokens]}
        if files == self.files:
            return False
        atomic_write_json(self.root / "manifest.json", {**asdict(self.manifest), "files": files})
        self.files = files
        return True

    # -- text embeddings and summary ------------------------------------------------------------------------------
    def write_text_embeddings(self, classes: list[str], embeddings: torch.Tensor) -> None:
        buf = io.BytesIO()
        torch.save({"classes": list(classes), "embeddings": embeddings.float().cpu(),
                    "teacher_id": self.manifest.teacher_id, "templates_hash": self.manifest.templates_hash}, buf)
        self.write_hashed(TEXT_EMBEDDINGS, buf.getvalue())

    def text_embeddings_problem(self) -> str | None:
        return self.read_verified(TEXT_EMBEDDINGS)[1]

    def text_embeddings(self) -> tuple[list[str], torch.Tensor]:
        data, problem = self.read_verified(TEXT_EMBEDDINGS)
        if problem:
            raise self.refuse(TEXT_EMBEDDINGS, problem)
        try:
            loaded = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as err:  # noqa: BLE001  random bytes or a pickle: refused by the unpickler, nothing run
            raise self.refuse(TEXT_EMBEDDINGS, f"not a tensor file ({type(err).__name__})") from None
        expected = {"classes", "embeddings", "teacher_id", "templates_hash"}
        if not isinstance(loaded, dict) or set(loaded) != expected:
            raise self.refuse(TEXT_EMBEDDINGS, f"not the store's text embeddings (keys {sorted(map(str, loaded))[:6]})"
                               if isinstance(loaded, dict) else "not the store's text embeddings")
        classes, embeddings = loaded["classes"], loaded["embeddings"]
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                and isinstance(embeddings, torch.Tensor) and embeddings.shape == (len(classes), self.manifest.dim)
                and embeddings.is_floating_point() and torch.isfinite(embeddings).all()):
            raise self.refuse(TEXT_EMBEDDINGS, f"not {self.manifest.dim}-d finite embeddings of its class names")
        if loaded["teacher_id"] != self.manifest.teacher_id:
            raise UserError(f"{self.root / TEXT_EMBEDDINGS}: text embeddings of '{str(loaded['teacher_id'])[:60]}' in "
                            f"a store of '{self.manifest.teacher_id}'; run precompute again into a new folder")
        return classes, embeddings

    def discard_if_empty(self) -> None:
        """Remove what :meth:`create` and :meth:`write_text_embeddings` wrote while no sample is stored yet (and the
        folder when that leaves it empty), so a run that fails before its first sample leaves no half-made store."""
        features = self.root / "features"
        if features.is_dir() and any(features.glob("*.npy")):
            return
        for name in ("manifest.json", TEXT_EMBEDDINGS, f"{TEXT_EMBEDDINGS}.sha256"):
            (self.root / name).unlink(missing_ok=True)
        for folder in (features, self.root):
            try:
                folder.rmdir()
            except OSError:  # absent, or holds files that are not ours
                pass

    def bytes_on_disk(self) -> int:
        """Bytes of the store's own files (not of superpixels kept beside it)."""
        files = [*self.root.glob("*"), *(self.root / "features").glob("*")]
        return sum(p.stat().st_size for p in files if p.is_file() and not is_scratch_file(p))


def _same_teacher(stored: str, requested: str) -> bool:
    """A simulated teacher's spec (``sim-clip``, ``sim-clip:clean``) matches the id its configuration gives
    (``sim-clip:<digest>``); otherwise the ids must be equal."""
    from .sim_clip import SIM_TEACHERS, SimClipConfig, sim_teacher_id

    if requested in SIM_TEACHERS:
        return stored == sim_teacher_id(SimClipConfig.named(requested))
    return stored == requested

