"""nuScenes (real or synthetic) through nuscenes-devkit -> a compact per-sample index.

Reading the devkit's JSON tables is slow for trainval, so the index is built once and cached as one JSON
file: the scene table's order of scene names (the few-shot rule counts scenes in it, docs/splits.md) and, per
keyframe, the lidar file and its sample_data token (prediction files are named by it, docs/datasets.md), the label
file, every camera's image file, intrinsics and the full lidar -> camera matrix.
Training reads only the index; the devkit never runs in data-loader workers.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..classes import CLASS_NAMES
from ..errors import UserError
from .geometry import invert_transform, make_transform
from .index import CAMERAS, DatasetIndex, read_float32_rows
from .town import SPLITS_FILE

# 3: the lidar sample_data token per sample (prediction files are named by it) and the scene table's order, with
# test scenes in their own split; formats 1 and 2 (each had only one of these) are rebuilt.
INDEX_FORMAT = 3
# The devkit's split names per version, as rdistill's split names (docs/splits.md).
_OFFICIAL_SPLITS = {"v1.0-trainval": {"train": "train", "val": "val"},
                    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
                    "v1.0-test": {"test": "test"}}


def check_dataroot(dataroot: Path, version: str) -> None:
    """Raise a one-line :class:`UserError` unless ``dataroot`` holds nuScenes tables for ``version``."""
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise UserError(f"{dataroot}: no such folder; pass the nuScenes dataroot (the folder that holds "
                        f"'{version}/', 'samples/' and 'lidarseg/'), or make one with 'rdistill make-sim {dataroot}'")
    if not (dataroot / version).is_dir() and (dataroot / "sequences").is_dir():
        raise UserError(f"{dataroot}: a SemanticKITTI dataroot; this command needs nuScenes-format data "
                        f"(finetune, evaluate and inspect take either)")
    if not (dataroot / version).is_dir():
        found = sorted(p.name for p in dataroot.iterdir() if p.is_dir() and (p / "sample.json").exists())
        hint = f"versions found there: {', '.join(found)}" if found else "no nuScenes table folder found there"
        raise UserError(f"{dataroot / version}: no such table folder ({hint}); pass --version with one of them")
    missing = [t for t in ("sample", "sample_data", "calibrated_sensor", "ego_pose", "scene")
               if not (dataroot / version / f"{t}.json").exists()]
    if missing:
        raise UserError(f"{dataroot / version}: not a nuScenes table folder (missing {', '.join(t + '.json' for t in missing)}); "
                        f"re-download or regenerate the dataset")


def load_devkit(dataroot: Path, version: str):
    """The devkit's ``NuScenes`` object, after checking the folder."""
    check_dataroot(dataroot, version)
    from nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except FileNotFoundError as err:  # the devkit lists lidarseg/<version> when lidarseg.json is present
        raise UserError(f"{err.filename}: missing, while {Path(dataroot) / version / 'lidarseg.json'} lists labels; "
                        f"restore the label folder (nuScenes-lidarseg), or remove lidarseg.json to use the data "
                        f"without labels") from None
    except RecursionError:
        raise UserError(f"{Path(dataroot) / version}: a table is nested too deeply to be a nuScenes table; "
                        f"re-download or regenerate the dataset") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{Path(dataroot) / version}: a table is not UTF-8 text (byte {err.start}); re-download or "
                        f"regenerate the dataset") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, AssertionError) as err:
        if isinstance(err, json.JSONDecodeError):
            _raise_broken_table(dataroot, version, err)
        raise _inconsistent_tables(dataroot, version, err) from None


def _inconsistent_tables(dataroot: Path, version: str, err: Exception) -> UserError:
    detail = (str(err).splitlines() or [""])[0][:160]
    return UserError(f"{Path(dataroot) / version}: the tables do not fit together ({type(err).__name__}: {detail}: a "
                     f"dangling token, a missing key or a value of the wrong type); re-download or regenerate the "
                     f"dataset")


def _raise_broken_table(dataroot: Path, version: str, err: json.JSONDecodeError):
    """The devkit does not say which table is not JSON: find it, and name it."""
    for table in sorted((Path(dataroot) / version).glob("*.json")):
        try:
            json.loads(table.read_text())
        except (json.JSONDecodeError, RecursionError):
            raise UserError(f"{table}: not valid JSON (truncated?); re-download or regenerate the dataset") from None
    raise UserError(f"{Path(dataroot) / version}: a table is not valid JSON ({err}); re-download or "
                    f"regenerate the dataset") from None


def lidar_to_camera(nusc, lidar_sample_data_token: str, camera_sample_data_token: str) -> np.ndarray:
    """(4, 4) transform lidar -> ego (lidar time) -> global -> ego (camera time) -> camera, float64."""
    lidar = nusc.get("sample_data", lidar_sample_data_token)
    camera = nusc.get("sample_data", camera_sample_data_token)

    def record_transform(table: str, token: str) -> np.ndarray:
        rec = nusc.get(table, token)
        return make_transform(rec["translation"], rec["rotation"])

    ego_from_lidar = record_transform("calibrated_sensor", lidar["calibrated_sensor_token"])
    global_from_ego_l = record_transform("ego_pose", lidar["ego_pose_token"])
    global_from_ego_c = record_transform("ego_pose", camera["ego_pose_token"])
    ego_from_camera = record_transform("calibrated_sensor", camera["calibrated_sensor_token"])
    return invert_transform(ego_from_camera) @ invert_transform(global_from_ego_c) @ global_from_ego_l @ ego_from_lidar


def scene_splits(dataroot: Path, version: str) -> dict[str, list[str]]:
    """Scene names per split: the devkit's official splits for real versions (v1.0-mini: mini_train / mini_val;
    v1.0-test: only ``test``, which has no labels), ``splits.json`` otherwise."""
    if version in _OFFICIAL_SPLITS:
        from nuscenes.utils.splits import create_splits_scenes

        official = create_splits_scenes()
        return {ours: list(official[theirs]) for ours, theirs in _OFFICIAL_SPLITS[version].items()}
    path = Path(dataroot) / SPLITS_FILE
    if not path.exists():
        raise UserError(f"{path}: missing; a dataset of version '{version}' needs a splits.json "
                        f"({{\"train\": [scene names], \"val\": [...]}}) beside its tables")
    try:
        data = json.loads(path.read_text())
        return {"train": list(data["train"]), "val": list(data["val"])}
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as err:
        raise UserError(f"{path}: not a valid splits file ({type(err).__name__}: {str(err)[:120]}); it needs 'train' and 'val' lists") from None


def eval_set_name(version: str, split: str) -> str:
    """The devkit's name of rdistill's ``split`` (``val`` of v1.0-mini is the devkit's ``mini_val``), as its
    lidarseg evaluation and submission folders use it."""
    return _OFFICIAL_SPLITS.get(version, {}).get(split, split)


@dataclass
class NuScenesIndex(DatasetIndex):
    """The nuScenes index (see :func:`build_index` for a sample's keys); ``fine_to_coarse`` is the devkit's 32 -> 16
    class map."""

    dataset = "nuscenes"
    class_names = CLASS_NAMES

    def read_points(self, sample: dict) -> np.ndarray:
        """(N, 5) float32 points of the sample (x, y, z metres, intensity 0-255, ring)."""
        return read_lidar(self.dataroot, sample["lidar"])

    def label_file(self, sample: dict) -> str | None:
        return sample.get("lidarseg") or None

    def read_labels(self, sample: dict, num_points: int) -> np.ndarray | None:
        """(N,) int64 evaluation classes 0..16 (0 = ignore), or None for a sample without lidarseg labels."""
        if not self.has_labels(sample):
            return None
        return read_labels(self.dataroot, sample["lidarseg"], num_points, self.fine_to_coarse)

    def require_labels(self, samples: list[dict], use: str) -> None:
        if any(not self.has_labels(s) for s in samples):
            raise UserError(f"{self.dataroot} ({self.version}): no lidarseg labels for {use}; install "
                            f"nuScenes-lidarseg for this version, or use a split that has them")

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT, "dataroot": self.dataroot, "version": self.version,
                "fine_to_coarse": self.fine_to_coarse, "samples": self.samples, "scenes": self.scenes}


def build_index(dataroot: Path, version: str) -> NuScenesIndex:
    """Walk every keyframe with the devkit and collect what training and evaluation need; tables that do not fit
    together (a dangling token, a missing key, a value of the wrong type) are a one-line :class:`UserError`."""
    nusc = load_devkit(dataroot, version)
    try:
        return _walk(nusc, dataroot, version)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, AssertionError, np.linalg.LinAlgError) as err:
        raise _inconsistent_tables(dataroot, version, err) from None


def _walk(nusc, dataroot: Path, version: str) -> NuScenesIndex:
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    splits = scene_splits(dataroot, version)
    split_of = {name: split for split, names in splits.items() for name in names}
    fine_to_coarse = [0] * 32
    has_labels = hasattr(nusc, "lidarseg")
    if has_labels:
        mapper = LidarsegClassMapper(nusc)
        coarse = mapper.coarse_name_2_coarse_idx_mapping
        if [n for n, i in sorted(coarse.items(), key=lambda kv: kv[1]) if i > 0] != list(CLASS_NAMES):
            raise UserError("nuscenes-devkit's 16-class names differ from rdistill's; update nuscenes-devkit")
        for fine, c in mapper.fine_idx_2_coarse_idx_mapping.items():
            fine_to_coarse[fine] = c
    samples = []
    for sample in nusc.sample:
        scene = nusc.get("scene", sample["scene_token"])
        lidar_token = sample["data"]["LIDAR_TOP"]
        lidar = nusc.get("sample_data", lidar_token)
        record = {"token": sample["token"], "scene": scene["name"], "split": split_of.get(scene["name"]),
                  "timestamp": sample["timestamp"], "lidar": lidar["filename"], "lidar_token": lidar_token,
                  "lidarseg": nusc.get("lidarseg", lidar_token)["filename"] if has_labels else None,
                  "cameras": {}}
        for cam in CAMERAS:
            if cam not in sample["data"]:
                continue
            cam_sd = nusc.get("sample_data", sample["data"][cam])
            calib = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
            record["cameras"][cam] = {
                "image": cam_sd["filename"], "image_size": [cam_sd["width"], cam_sd["height"]],
                "intrinsic": calib["camera_intrinsic"],
                "lidar_to_camera": lidar_to_camera(nusc, lidar_token, cam_sd["token"]).tolist()}
        samples.append(record)
    scenes = [scene["name"] for scene in nusc.scene]
    position = {name: i for i, name in enumerate(scenes)}
    samples.sort(key=lambda s: (position[s["scene"]], s["timestamp"]))
    return NuScenesIndex(str(Path(dataroot).resolve()), version, fine_to_coarse, samples, scenes)


def _fingerprint(dataroot: Path, version: str) -> str:
    h = hashlib.sha1()
    for table in ("sample", "sample_data", "calibrated_sensor", "ego_pose", "scene", "lidarseg"):
        p = Path(dataroot) / version / f"{table}.json"
        if p.exists():
            st = p.stat()
            h.update(f"{table}:{st.st_size}:{st.st_mtime_ns}".encode())
    labels = Path(dataroot) / "lidarseg" / version  # a copy without its label folder is another dataset
    h.update(f"lidarseg-folder:{labels.is_dir() and labels.stat().st_mtime_ns}".encode())
    split_file = Path(dataroot) / SPLITS_FILE
    if split_file.exists():
        h.update(split_file.read_bytes())
    return h.hexdigest()


def load_index(dataroot: Path, version: str, cache_dir: Path | None = None) -> NuScenesIndex:
    """The index of ``dataroot``, from the cache when it still matches the tables, else built and cached."""
    check_dataroot(dataroot, version)
    dataroot = Path(dataroot).resolve()
    cache_dir = Path(cache_dir or os.environ.get("RDISTILL_CACHE", Path.home() / ".cache" / "rdistill"))
    key = hashlib.sha1(f"{dataroot}|{version}".encode()).hexdigest()[:16]
    path = cache_dir / f"index-{version}-{key}.json"
    fingerprint = _fingerprint(dataroot, version)
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == INDEX_FORMAT and data.get("fingerprint") == fingerprint:
                return NuScenesIndex(data["dataroot"], data["version"], data["fine_to_coarse"], data["samples"],
                                    data["scenes"])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            pass  # a damaged cache is rebuilt below
    index = build_index(dataroot, version)
    from ..io import atomic_write_text

    atomic_write_text(path, json.dumps({**index.to_json(), "fingerprint": fingerprint}))
    return index


def read_lidar(dataroot: str | Path, relpath: str) -> np.ndarray:
    """(N, 5) float32 points of a ``.pcd.bin`` file (x, y, z, intensity, ring)."""
    return read_float32_rows(Path(dataroot) / relpath, 5, "lidar file")


def read_labels(dataroot: str | Path, relpath: str, num_points: int, fine_to_coarse: list[int]) -> np.ndarray:
    """(N,) int64 16-class labels (0 = ignore) of a lidarseg file."""
    path = Path(dataroot) / relpath
    try:
        fine = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: lidarseg label file missing; install nuScenes-lidarseg") from None
    if len(fine) != num_points:
        raise UserError(f"{path}: {len(fine)} labels for {num_points} lidar points; the label file is corrupt")
    if len(fine) and int(fine.max()) >= len(fine_to_coarse):
        raise UserError(f"{path}: label {int(fine.max())} at point {int(np.argmax(fine >= len(fine_to_coarse)))}, "
                        f"but nuScenes-lidarseg has {len(fine_to_coarse)} categories; the label file is corrupt")
    return np.asarray(fine_to_coarse, dtype=np.int64)[fine]
