"""SemanticKITTI as it is distributed -> the same compact per-sample index as nuScenes' (docs/datasets.md).

Layout: ``DATAROOT/sequences/NN/{velodyne/NNNNNN.bin, labels/NNNNNN.label, image_2/NNNNNN.png, calib.txt,
poses.txt}``. A scan is float32 (x, y, z metres, remission 0-1) per point; a label is uint32 per point, the
semantic id in the low 16 bits and the instance id in the high 16. Raw ids map to the 19 evaluation classes
through the official learning map (``semantic_kitti.yaml`` beside this module, its source named there).

Remission is scaled by 255 when read, so the fourth input feature means the same as nuScenes' 0-255 intensity.
Listing the folders is fast, so unlike nuScenes' the index is built on every call and not cached.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..errors import UserError
from ..io import read_text
from .images import image_size
from .index import DatasetIndex, read_float32_rows

LEARNING_MAP_FILE = Path(__file__).with_name("semantic_kitti.yaml")
LEARNING_MAP_FORMAT = 2  # 2: the official color_map
CAMERA = "image_2"               # the left colour camera; its projection is P2 . Tr
CALIB_KEYS = ("P0", "P1", "P2", "P3", "Tr")
REMISSION_SCALE = 255.0          # remission 0-1 -> the 0-255 range of nuScenes intensity


@dataclass(frozen=True)
class LearningMap:
    """The official label tables: ``names`` raw id -> name, ``to_class`` raw id -> 0..19 (0 = ignore),
    ``to_raw`` class -> raw id (for prediction files), ``split`` split name -> sequence numbers, ``colors_bgr``
    raw id -> the official (blue, green, red) colour."""

    names: dict[int, str]
    to_class: dict[int, int]
    to_raw: dict[int, int]
    split: dict[str, tuple[int, ...]]
    source: str
    colors_bgr: dict[int, tuple[int, int, int]]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of evaluation classes 1..19."""
        return tuple(self.names[self.to_raw[c]] for c in range(1, len(self.to_raw)))

    def class_lut(self) -> np.ndarray:
        """(65536,) uint8 lookup raw id -> class; ids the map does not name are ignored (0), like the official
        evaluation's lookup table."""
        lut = np.zeros(1 << 16, np.uint8)
        lut[list(self.to_class)] = list(self.to_class.values())
        return lut

    def raw_lut(self) -> np.ndarray:
        """(20,) uint32 lookup class -> raw id."""
        return np.array([self.to_raw[c] for c in range(len(self.to_raw))], np.uint32)

    def class_colors(self) -> np.ndarray:
        """(20, 3) uint8 RGB colour of classes 0..19: that of the class's raw id (``to_raw``), as the official
        visualiser colours learned classes (semantic_kitti.yaml)."""
        return np.array([self.colors_bgr[self.to_raw[c]][::-1] for c in range(len(self.to_raw))], np.uint8)


@functools.lru_cache(maxsize=1)
def learning_map() -> LearningMap:
    """The learning map shipped with rdistill (``semantic_kitti.yaml``)."""
    data = yaml.safe_load(LEARNING_MAP_FILE.read_text())
    if data.get("format") != LEARNING_MAP_FORMAT:
        raise UserError(f"{LEARNING_MAP_FILE}: format {data.get('format')}, this rdistill reads format "
                        f"{LEARNING_MAP_FORMAT}; reinstall rdistill")
    return LearningMap({int(k): str(v) for k, v in data["labels"].items()},
                       {int(k): int(v) for k, v in data["learning_map"].items()},
                       {int(k): int(v) for k, v in data["learning_map_inv"].items()},
                       {k: tuple(int(s) for s in v) for k, v in data["split"].items()}, data["source"],
                       {int(k): tuple(int(s) for s in v) for k, v in data["color_map"].items()})


def is_semantickitti(dataroot: Path) -> bool:
    """True when ``dataroot`` has the SemanticKITTI layout (a ``sequences/`` folder)."""
    return (Path(dataroot) / "sequences").is_dir()


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """``calib.txt`` -> {P0..P3: (3, 4), Tr: (4, 4) velodyne -> camera 0} float64."""
    if not path.exists():
        raise UserError(f"{path}: missing; every sequence needs its calib.txt (P0-P3, Tr: KITTI odometry "
                        f"'calibration files', or 'rdistill make-sim --format semantickitti')")
    calib = {}
    for line in read_text(path, "calibration file").splitlines():
        key, _, values = line.partition(":")
        if key.strip() in CALIB_KEYS:
            try:
                calib[key.strip()] = np.array([float(v) for v in values.split()], np.float64).reshape(3, 4)
            except ValueError:
                raise UserError(f"{path}: line '{key.strip()}' is not 12 numbers; the calibration file is corrupt") from None
            if not np.isfinite(calib[key.strip()]).all():
                raise UserError(f"{path}: line '{key.strip()}' holds a NaN or infinite number; the calibration file "
                                f"is corrupt")
    missing = [k for k in CALIB_KEYS if k not in calib]
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)} line; a calib.txt needs P0, P1, P2, P3 and Tr")
    calib["Tr"] = np.vstack([calib["Tr"], [0.0, 0.0, 0.0, 1.0]])
    return calib


def camera_record(calib: dict[str, np.ndarray], image: str, image_size: tuple[int, int], path: Path) -> dict:
    """The camera entry of a sample in the nuScenes index's form: intrinsic K = P2[:, :3] and
    lidar_to_camera = [K^-1 P2; 0 0 0 1] . Tr, so that K . lidar_to_camera = P2 . Tr exactly (``path``: the
    calib.txt, named when P2's K cannot be inverted)."""
    p2 = calib["P2"]
    k = p2[:, :3]
    if not np.isfinite(np.linalg.cond(k)) or np.linalg.cond(k) > 1e12:
        raise UserError(f"{path}: P2's intrinsic part is singular (no camera projects like that); the calibration "
                        f"file is corrupt")
    to_camera = np.vstack([np.linalg.solve(k, p2), [0.0, 0.0, 0.0, 1.0]]) @ calib["Tr"]
    return {"image": image, "image_size": list(image_size), "intrinsic": k.tolist(),
            "lidar_to_camera": to_camera.tolist()}


def _read_poses(path: Path, count: int) -> list[list[float]] | None:
    if not path.exists():
        return None
    rows = [ln.split() for ln in read_text(path, "poses file").splitlines() if ln.strip()]
    if len(rows) != count or any(len(r) != 12 for r in rows):
        raise UserError(f"{path}: {len(rows)} poses for {count} scans (12 numbers per line expected); "
                        f"the poses file does not belong to this sequence")
    try:
        poses = np.array([[float(v) for v in r] for r in rows], np.float64)
    except ValueError as err:
        raise UserError(f"{path}: {str(err).splitlines()[0]}; a pose line is 12 numbers (the poses file is "
                        f"corrupt)") from None
    if not np.isfinite(poses).all():
        raise UserError(f"{path}: a pose holds a NaN or infinite number; the poses file is corrupt")
    return poses.tolist()


def build_index(dataroot: Path) -> "SemanticKittiIndex":
    """Walk the sequences of the official split that are present (absent ones are noted and skipped)."""
    root = Path(dataroot)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; pass the SemanticKITTI dataroot (the folder that holds "
                        f"'sequences/'), or make one with 'rdistill make-sim {root} --format semantickitti'")
    if not is_semantickitti(root):
        raise UserError(f"{root}: not a SemanticKITTI dataroot (no 'sequences/' folder); pass the folder that "
                        f"holds sequences/NN/velodyne")
    lmap = learning_map()
    samples, notes = [], []
    for split, numbers in lmap.split.items():
        absent = [n for n in numbers if not (root / "sequences" / f"{n:02d}" / "velodyne").is_dir()]
        if absent:
            listed = ", ".join(f"{n:02d}" for n in absent)
            notes.append(f"SemanticKITTI {split} sequences {listed} absent: skipped")
        for n in numbers:
            if n not in absent:
                samples.extend(_sequence_samples(root, n, split))
    known = {f"{n:02d}" for numbers in lmap.split.values() for n in numbers}
    extra = sorted(p.name for p in (root / "sequences").iterdir() if p.is_dir() and p.name not in known)
    if extra:
        notes.append(f"sequences {', '.join(extra)} are in no official split: ignored")
    if not samples:
        raise UserError(f"{root / 'sequences'}: no sequence with scans (sequences/NN/velodyne/*.bin for NN in "
                        f"00-21); check the dataroot")
    scenes = sorted({s["scene"] for s in samples})
    return SemanticKittiIndex(str(root.resolve()), "semantickitti", lmap.class_lut().tolist()[:max(lmap.to_class) + 1],
                              samples, scenes, tuple(notes))


def _sequence_samples(root: Path, number: int, split: str) -> list[dict]:
    seq = f"{number:02d}"
    folder = root / "sequences" / seq
    calib = read_calib(folder / "calib.txt")
    scans = sorted(p.stem for p in (folder / "velodyne").iterdir() if p.suffix == ".bin")
    has_labels = (folder / "labels").is_dir()
    poses = _read_poses(folder / "poses.txt", len(scans))
    camera = None
    images = sorted((folder / CAMERA).glob("*.png")) if (folder / CAMERA).is_dir() else []
    if images:  # every image of a KITTI sequence has the same size
        camera = camera_record(calib, "", image_size(images[0]), folder / "calib.txt")
    samples = []
    for i, frame in enumerate(scans):
        cameras = {CAMERA: {**camera, "image": f"sequences/{seq}/{CAMERA}/{frame}.png"}} if camera else {}
        samples.append({"token": f"{seq}/{frame}", "scene": seq, "split": split, "frame": int(frame),
                        "lidar": f"sequences/{seq}/velodyne/{frame}.bin",
                        "labels": f"sequences/{seq}/labels/{frame}.label" if has_labels else None,
                        "pose": poses[i] if poses else None, "cameras": cameras})
    return samples


@dataclass
class SemanticKittiIndex(DatasetIndex):
    """The SemanticKITTI index; ``fine_to_coarse`` is the learning map as a list (raw id -> class 0..19),
    ``scenes`` the sequence numbers present (``"00"``, ...) and ``notes`` says which sequences were absent."""

    dataset = "semantickitti"
    class_names = learning_map().class_names

    def read_points(self, sample: dict) -> np.ndarray:
        """(N, 4) float32 points (x, y, z metres in the velodyne frame, remission x 255)."""
        points = read_float32_rows(Path(self.dataroot) / sample["lidar"], 4, "scan").copy()
        points[:, 3] *= REMISSION_SCALE
        return points

    def label_file(self, sample: dict) -> str | None:
        return sample.get("labels")

    def has_labels(self, sample: dict) -> bool:
        return self.label_file(sample) is not None

    def read_raw_labels(self, sample: dict, num_points: int) -> np.ndarray:
        """(N,) uint32 label entries of the sample (semantic id in the low 16 bits, instance in the high 16)."""
        path = Path(self.dataroot) / sample["labels"]
        try:
            raw = np.fromfile(path, dtype=np.uint32)
        except FileNotFoundError:
            raise UserError(f"{path}: label file missing while its sequence has labels/; re-download the "
                            f"SemanticKITTI labels") from None
        if len(raw) != num_points:
            raise UserError(f"{path}: {len(raw)} labels for {num_points} points of "
                            f"{Path(sample['lidar']).name}; the label file does not belong to this scan")
        return raw

    def read_labels(self, sample: dict, num_points: int) -> np.ndarray | None:
        """(N,) int64 evaluation classes 0..19 (0 = ignore) through the learning map, or None without labels."""
        if not self.has_labels(sample):
            return None
        semantic = self.read_raw_labels(sample, num_points) & 0xFFFF
        lut = np.asarray(self.fine_to_coarse, np.int64)
        return np.where(semantic < len(lut), lut[np.minimum(semantic, len(lut) - 1)], 0)

    def require_labels(self, samples: list[dict], use: str) -> None:
        unlabelled = sorted({s["scene"] for s in samples if not self.has_labels(s)})
        if unlabelled:
            folder = Path(self.dataroot) / "sequences" / unlabelled[0] / "labels"
            raise UserError(f"{folder}: missing; sequence(s) {', '.join(unlabelled)} have no labels and cannot be "
                            f"used for {use} (SemanticKITTI's test sequences 11-21 never do)")
