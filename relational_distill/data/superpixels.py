"""SLIC superpixels of the camera images, for SLidR's superpixel pooling (``superpixels:`` in DistillConfig).

SLIC costs seconds per image at 1600x900, so the maps are computed once, by ``rdistill precompute --superpixels N``,
into their own validated, resumable store beside the teacher features, and the dataset only reads them.

Layout of a superpixel store (``<feature store>/superpixels-<N>/``)::

    manifest.json   segments, compactness, dataset version and root, camera order, format
    <token>.npz     one (H, W) uint16 map of superpixel ids per camera of the sample (``cam0``, ``cam1``, ... in
                    camera order), at the camera's image size, compressed
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import NPY_ERRORS, atomic_write, atomic_write_json
from .images import read_rgb
from .index import camera_list

SUPERPIXEL_FORMAT = 1
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


class SuperpixelStore:
    """Superpixel maps per sample; ``read(token)`` is what the dataset needs."""

    def __init__(self, root: Path, manifest: SuperpixelManifest) -> None:
        self.root = Path(root)
        self.manifest = manifest

    @staticmethod
    def folder(features: Path, segments: int) -> Path:
        """Where the maps of ``segments`` superpixels live beside the feature store ``features``."""
        return Path(features) / f"superpixels-{segments}"

    @classmethod
    def create(cls, root: Path, manifest: SuperpixelManifest) -> "SuperpixelStore":
        """Open ``root`` for writing; an existing store there must have been made the same way (then we resume)."""
        root = Path(root)
        path = root / "manifest.json"
        if path.exists():
            existing = cls._read_manifest(path)
            for key in ("format", "segments", "compactness", "dataset_version", "cameras"):
                if getattr(existing, key) != getattr(manifest, key):
                    raise UserError(f"{path}: these superpixels were made differently ({key} is "
                                    f"{getattr(existing, key)!r}, expected {getattr(manifest, key)!r}); delete {root}")
        else:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, asdict(manifest))
        return cls(root, manifest)

    @classmethod
    def open(cls, root: Path, segments: int, version: str) -> "SuperpixelStore":
        """Open the maps of ``segments`` superpixels made for dataset ``version``; refuse anything else."""
        root = Path(root)
        path = root / "manifest.json"
        fix = f"run 'rdistill precompute DATAROOT --version {version} --out {root.parent} --superpixels {segments}'"
        if not path.exists():
            raise UserError(f"{path}: no superpixels of {segments} segments here; {fix} (it keeps the features)")
        manifest = cls._read_manifest(path)
        if manifest.segments != segments or manifest.dataset_version != version:
            raise UserError(f"{path}: superpixels of {manifest.segments} segments for '{manifest.dataset_version}', "
                            f"not {segments} for '{version}'; {fix}")
        return cls(root, manifest)

    @staticmethod
    def _read_manifest(path: Path) -> SuperpixelManifest:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != SUPERPIXEL_FORMAT:
                raise UserError(f"{path}: superpixel format {data.get('format')}, this rdistill reads "
                                f"{SUPERPIXEL_FORMAT}; delete {path.parent} and run precompute --superpixels again")
            return SuperpixelManifest(**{**data, "cameras": tuple(data["cameras"])})
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
            raise UserError(f"{path}: unreadable manifest ({type(err).__name__}: {str(err)[:120]}); delete {path.parent} and run precompute "
                            f"--superpixels again") from None

    def path(self, token: str) -> Path:
        return self.root / f"{token}.npz"

    def _load(self, token: str) -> list[np.ndarray] | None:
        """The sample's maps: one 2-D uint16 map per camera of the manifest, or None (missing, truncated, other)."""
        try:
            with np.load(self.path(token), allow_pickle=False) as data:
                if sorted(data.files) != sorted(f"cam{c}" for c in range(len(self.manifest.cameras))):
                    return None
                maps = [data[f"cam{c}"] for c in range(len(data.files))]
        except NPY_ERRORS:
            return None
        return maps if all(m.ndim == 2 and m.dtype == np.uint16 and m.size for m in maps) else None

    def is_valid(self, token: str, image_sizes: list[tuple[int, int]]) -> bool:
        """True if the sample's maps exist, are complete and have the cameras' (width, height) sizes."""
        maps = self._load(token)
        return maps is not None and [m.shape[::-1] for m in maps] == [tuple(s) for s in image_sizes]

    def write(self, token: str, maps: list[np.ndarray]) -> None:
        atomic_write(self.path(token), lambda f: np.savez_compressed(f, **{f"cam{c}": m for c, m in enumerate(maps)}))

    def read(self, token: str, image_sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """(H, W) superpixel ids per camera of one sample, in camera order; with ``image_sizes`` ((width, height)
        per camera), maps of other sizes are refused."""
        maps = self._load(token)
        if maps is not None and image_sizes is not None and [m.shape[::-1] for m in maps] != [tuple(s) for s in image_sizes]:
            maps = None
        if maps is None:
            raise UserError(f"{self.path(token)}: missing, truncated or not this store's superpixel file; run 'rdistill precompute' "
                            f"again with --out {self.root.parent} --superpixels {self.manifest.segments} "
                            f"(it redoes only what is missing)")
        return maps
