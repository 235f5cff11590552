"""SLIC superpixels of the camera images, for SLidR's superpixel pooling (``superpixels:`` in DistillConfig).

SLIC costs seconds per image at 1600x900, so the maps are computed once, by ``rdistill precompute --superpixels N``,
into their own validated, resumable store beside the teacher features, and the dataset only reads them.

Layout of a superpixel store (``<feature store>/superpixels-<N>/``)::

    manifest.json        segments, compactness, dataset version and root, camera order, format
    <token>.npz          one (H, W) uint16 map of superpixel ids per camera of the sample (``cam0``, ``cam1``, ... in
                         camera order), at the camera's image size, compressed
    <token>.npz.sha256   its sha256 (relational_distill/store.py: the feature store's integrity)
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import NPY_ERRORS
from ..store import MANIFEST, HashedStore
from .images import read_rgb
from .index import camera_list

SUPERPIXEL_FORMAT = 2  # 1: no sha256 per file
COMPACTNESS = 10.0  # SLidR's SLIC setting


def slic_superpixels(image_path: Path, segments: int, compactness: float = COMPACTNESS) -> np.ndarray:
    """(H, W) uint16 SLIC superpixel ids of an image (SLidR uses 150 segments per nuScenes image)."""
    from skimage.segmentation import slic

    image = np.asarray(read_rgb(image_path))
    return slic(image, n_segments=segments, compactness=compactness, start_label=0).astype(np.uint16)


def sample_superpixels(dataroot: str | Path, sample: dict, segments: int,
                       compactness: float = COMPACTNESS) -> list[np.ndarray]:
    """Superpixel maps of every camera of an index sample, in :func:`camera_list` order."""
    return [slic_superpixels(Path(dataroot) / cam["image"], segments, compactness) for cam in camera_list(sample)]


@dataclass(frozen=True)
class SuperpixelManifest:
    segments: int
    compactness: float
    dataset_version: str
    dataroot: str
    cameras: tuple[str, ...]
    format: int = SUPERPIXEL_FORMAT


class SuperpixelStore(HashedStore):
    """Superpixel maps per sample; ``read(token)`` is what the dataset needs."""

    what = "superpixel store"

    def __init__(self, root: Path, manifest: SuperpixelManifest) -> None:
        super().__init__(root)
        self.manifest = manifest

    def rerun(self) -> str:
        return (f"run 'rdistill precompute' again with --out {self.root.parent} --superpixels "
                f"{self.manifest.segments} (it redoes only what is missing or changed)")

    @staticmethod
    def folder(features: Path, segments: int) -> Path:
        """Where the maps of ``segments`` superpixels live beside the feature store ``features``."""
        return Path(features) / f"superpixels-{segments}"

    @classmethod
    def create(cls, root: Path, manifest: SuperpixelManifest) -> "SuperpixelStore":
        """Open ``root`` for writing; an existing store there must have been made the same way (then we resume)."""
        root = Path(root)
        path = root / MANIFEST
        if path.exists():
            existing = cls._read_manifest(root)
            for key in ("format", "segments", "compactness", "dataset_version", "cameras"):
                if getattr(existing, key) != getattr(manifest, key):
                    raise UserError(f"{path}: these superpixels were made differently ({key} is "
                                    f"{getattr(existing, key)!r}, expected {getattr(manifest, key)!r}); delete {root}")
        else:
            cls.make_folder(root, asdict(manifest), cls.what)
        return cls(root, manifest)

    @classmethod
    def open(cls, root: Path, segments: int, version: str) -> "SuperpixelStore":
        """Open the maps of ``segments`` superpixels made for dataset ``version``; refuse anything else."""
        root = Path(root)
        path = root / MANIFEST
        fix = f"run 'rdistill precompute DATAROOT --version {version} --out {root.parent} --superpixels {segments}'"
        if not path.exists():
            raise UserError(f"{path}: no superpixels of {segments} segments here; {fix} (it keeps the features)")
        manifest = cls._read_manifest(root)
        if manifest.segments != segments or manifest.dataset_version != version:
            raise UserError(f"{path}: superpixels of {manifest.segments} segments for '{manifest.dataset_version}', "
                            f"not {segments} for '{version}'; {fix}")
        return cls(root, manifest)

    @classmethod
    def _read_manifest(cls, root: Path) -> SuperpixelManifest:
        fix = f"delete {root} and run precompute --superpixels again"
        data = cls.read_manifest(root, SUPERPIXEL_FORMAT, "superpixel", fix)
        try:
            return SuperpixelManifest(**{**data, "cameras": tuple(data["cameras"])})
        except (TypeError, KeyError) as err:
            raise UserError(f"{root / MANIFEST}: unreadable manifest ({type(err).__name__}: {str(err)[:120]}); "
                            f"{fix}") from None

    @staticmethod
    def relpath(token: str) -> str:
        return f"{token}.npz"

    def path(self, token: str) -> Path:
        return self.root / self.relpath(token)

    def _load(self, token: str, image_sizes: list[tuple[int, int]] | None = None
              ) -> tuple[list[np.ndarray] | None, str | None]:
        """(maps, None), or (None, what is wrong: missing, changed, not one 2-D uint16 map per camera of the
        manifest, or, with ``image_sizes`` ((width, height) per camera), of other sizes)."""
        data, problem = self.read_verified(self.relpath(token))
        if problem:
            return None, problem
        names = [f"cam{c}" for c in range(len(self.manifest.cameras))]
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                if sorted(archive.files) != sorted(names):
                    return None, f"members {sorted(archive.files)[:8]}, expected {names}"
                maps = [archive[name] for name in names]
        except NPY_ERRORS as err:
            return None, f"not a readable .npz archive ({type(err).__name__})"
        if not all(m.ndim == 2 and m.dtype == np.uint16 and m.size for m in maps):
            return None, "not one non-empty 2-D uint16 map per camera"
        sizes = [m.shape[::-1] for m in maps]
        if image_sizes is not None and sizes != [tuple(s) for s in image_sizes]:
            return None, f"maps of {sizes[:6]}, the images are {[tuple(s) for s in image_sizes][:6]}"
        return maps, None

    def is_valid(self, token: str, image_sizes: list[tuple[int, int]]) -> bool:
        """True if the sample's maps exist, verify and have the cameras' (width, height) sizes."""
        return self._load(token, image_sizes)[1] is None

    def write(self, token: str, maps: list[np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{f"cam{c}": m for c, m in enumerate(maps)})
        self.write_hashed(self.relpath(token), buf.getvalue())

    def read(self, token: str, image_sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """(H, W) superpixel ids per camera of one sample, in camera order, verified against their sha256; with
        ``image_sizes`` ((width, height) per camera), maps of other sizes are refused."""
        maps, problem = self._load(token, image_sizes)
        if problem:
            raise self.refuse(self.relpath(token), problem)
        return maps
