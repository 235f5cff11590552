"""Write the synthetic town as a nuScenes-format dataset (all 13 tables, lidarseg, map, samples, splits).

The result is read back only through nuscenes-devkit. Each scene is independent, so scenes are rendered in
parallel worker processes; the whole dataset is written into a temporary folder and renamed into place at
the end, so an interrupted run (Ctrl-C, SIGTERM: the workers are terminated too) never leaves a half-written
dataset behind. Before writing, the dataset's size is estimated and checked against the free disk space.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from ..classes import fine_category_names
from ..data.geometry import euler_to_matrix, make_transform, matrix_to_quaternion
from ..data.index import CAMERAS
from ..data.town import SIDECAR_DIR, SPLITS_FILE, TOWN_VERSION
from ..errors import UserError
from ..interrupt import Interrupted, check as check_interrupt, ignore_signals_in_worker
from ..io import staging_folder
from ..results import TownWritten
from .layout import ANNOTATED, PROFILES, SceneLayout, generate_scene
from .sensors import (LIDARS, camera_calibration, camera_time_offset_us, lidar_calibration,
                      render_camera, scan_lidar)

SAMPLE_PERIOD_US = 500_000  # keyframes at 2 Hz


@dataclass(frozen=True)
class SimConfig:
    scenes: int = 8
    samples_per_scene: int = 8
    seed: int = 0
    lidar: str = "hdl32"              # hdl32 (nuScenes-like) or hdl64 (out-of-distribution town)
    image_size: tuple[int, int] = (416, 224)  # width, height in pixels; multiples of 16
    version: str = TOWN_VERSION
    val_fraction: float = 0.25       # the last scenes form the validation split (at least one)

    def __post_init__(self) -> None:
        if self.lidar not in LIDARS:
            raise ValueError(f"unknown lidar '{self.lidar}': choose one of {', '.join(LIDARS)}")
        width, height = self.image_size
        if width % 16 or height % 16 or width < 64 or height < 64:
            raise ValueError(f"image size {width}x{height}: width and height must be multiples of 16, >= 64")
        if self.scenes < 2:
            raise ValueError(f"scenes={self.scenes}: need at least 2 (one for training, one for validation)")
        if self.samples_per_scene < 1:
            raise ValueError(f"samples_per_scene={self.samples_per_scene}: need at least 1 keyframe per scene")

    @property
    def val_scenes(self) -> int:
        return min(self.scenes - 1, max(1, round(self.scenes * self.val_fraction)))

    @property
    def profile(self) -> str:
        return "urban" if self.lidar == "hdl32" else "suburban"


def _token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _pose_record(token: str, timestamp: int, transform: np.ndarray) -> dict:
    return {"token": token, "timestamp": int(timestamp), "rotation": matrix_to_quaternion(transform[:3, :3]).tolist(),
            "translation": transform[:3, 3].tolist()}


def ego_to_local(x: float, lane_y: float) -> np.ndarray:
    """Ego pose on a gently weaving path along the road at arc position ``x`` (scene-local frame)."""
    y = lane_y + 0.3 * np.sin(0.25 * x)
    yaw = np.arctan(0.3 * 0.25 * np.cos(0.25 * x))
    return make_transform((x, y, 0.0), euler_to_matrix(yaw, 0.004 * np.sin(0.7 * x), 0.0))


def scene_drive(cfg: SimConfig, scene_idx: int) -> tuple[np.random.Generator, float, SceneLayout, np.ndarray]:
    """One scene's street and drive, the same in both output formats: the scene's random generator (for the
    sensors, after the layout's draws), the ego speed (m/s), the layout and the (4, 4) scene-local -> global
    transform."""
    rng = np.random.default_rng([cfg.seed, scene_idx, 0 if cfg.lidar == "hdl32" else 1])
    speed = rng.uniform(5.0, 9.0)
    travel = speed * (cfg.samples_per_scene - 1) * SAMPLE_PERIOD_US / 1e6
    layout = generate_scene(rng, PROFILES[cfg.profile], (-70.0, travel + 90.0), (-20.0, travel + 30.0))
    heading = rng.uniform(-np.pi, np.pi)
    local_to_global = make_transform((600.0 * scene_idx + 300.0, 200.0 + 37.0 * scene_idx, 0.0),
                                     euler_to_matrix(heading))
    return rng, speed, layout, local_to_global


def _scene_tables(cfg: SimConfig, scene_idx: int, root: Path) -> dict[str, list[dict]]:
    """Render one scene into ``root`` and return its table records."""
    seed = (cfg.seed, scene_idx, cfg.lidar)
    rng, speed, layout, local_to_global = scene_drive(cfg, scene_idx)
    lidar_model = LIDARS[cfg.lidar]
    scene_name = f"scene-{cfg.lidar}-{scene_idx:04d}"
    log_token, scene_token = _token(seed, "log"), _token(seed, "scene")
    t0 = 1_600_000_000_000_000 + scene_idx * 100_000_000 + cfg.seed * 10_000_000_000

    tables: dict[str, list[dict]] = {k: [] for k in ("log", "scene", "sample", "sample_data", "ego_pose",
                                                     "calibrated_sensor", "instance", "sample_annotation",
                                                     "lidarseg")}
    tables["log"].append({"token": log_token, "logfile": f"sim-{cfg.seed}-{scene_idx}", "vehicle": "sim-ego",
                          "date_captured": "2026-01-01", "location": f"sim-town-{cfg.profile}"})
    lidar_cs = lidar_calibration(lidar_model)
    calib = {"LIDAR_TOP": (_token(seed, "cs", "LIDAR_TOP"), lidar_cs, [])}
    for cam in CAMERAS:
        cs, k = camera_calibration(cam, cfg.image_size)
        calib[cam] = (_token(seed, "cs", cam), cs, k.tolist())
    for channel, (tok, tf, k) in calib.items():
        tables["calibrated_sensor"].append({"token": tok, "sensor_token": _token("sensor", channel),
                                           "translation": tf[:3, 3].tolist(),
                                           "rotation": matrix_to_quaternion(tf[:3, :3]).tolist(),
                                           "camera_intrinsic": k})

    sample_tokens = [_token(seed, "sample", k) for k in range(cfg.samples_per_scene)]
    prev_sd = {ch: "" for ch in calib}
    annotations: dict[int, list[dict]] = {}
    x_start = 0.0
    for k, sample_token in enumerate(sample_tokens):
        t_lidar = t0 + k * SAMPLE_PERIOD_US
        tables["sample"].append({"token": sample_token, "timestamp": t_lidar, "scene_token": scene_token,
                                 "prev": sample_tokens[k - 1] if k > 0 else "",
                                 "next": sample_tokens[k + 1] if k + 1 < len(sample_tokens) else ""})
        ego_lidar = ego_to_local(x_start + speed * (t_lidar - t0) / 1e6, layout.ego_lane_y)
        points, category, instance = scan_lidar(layout, lidar_model, ego_lidar @ lidar_cs, rng)
        base = f"n000-sim-{cfg.lidar}-{scene_idx:04d}"
        files = {"LIDAR_TOP": (f"samples/LIDAR_TOP/{base}__LIDAR_TOP__{t_lidar}.pcd.bin", t_lidar, ego_lidar)}
        write_bytes(root / files["LIDAR_TOP"][0], points.tobytes())
        for cam in CAMERAS:
            t_cam = t_lidar + camera_time_offset_us(cam)
            ego_cam = ego_to_local(x_start + speed * (t_cam - t0) / 1e6, layout.ego_lane_y)
            rgb, cat_map, inst_map = render_camera(layout, ego_cam @ calib[cam][1], np.array(calib[cam][2]),
                                                   cfg.image_size, rng)
            name = f"samples/{cam}/{base}__{cam}__{t_cam}.jpg"
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
            write_bytes(root / name, buf.getvalue())
            buf = io.BytesIO()
            np.savez_compressed(buf, category=cat_map, instance=inst_map)
            write_bytes(root / SIDECAR_DIR / (name[:-4] + ".npz"), buf.getvalue())
            files[cam] = (name, t_cam, ego_cam)
        for channel, (name, stamp, ego_local) in files.items():
            sd_token = _token(seed, "sd", channel, k)
            pose_token = _token(seed, "pose", channel, k)
            tables["ego_pose"].append(_pose_record(pose_token, stamp, local_to_global @ ego_local))
            is_cam = channel != "LIDAR_TOP"
            record = {"token": sd_token, "sample_token": sample_token, "ego_pose_token": pose_token,
                      "calibrated_sensor_token": calib[channel][0], "timestamp": int(stamp),
                      "fileformat": "jpg" if is_cam else "pcd", "is_key_frame": True,
                      "height": cfg.image_size[1] if is_cam else 0, "width": cfg.image_size[0] if is_cam else 0,
                      "filename": name, "prev": prev_sd[channel], "next": ""}
            if prev_sd[channel]:
                next(r for r in tables["sample_data"] if r["token"] == prev_sd[channel])["next"] = sd_token
            prev_sd[channel] = sd_token
            tables["sample_data"].append(record)
        lidar_sd = _token(seed, "sd", "LIDAR_TOP", k)
        label_file = f"lidarseg/{cfg.version}/{lidar_sd}_lidarseg.bin"
        write_bytes(root / label_file, category.astype(np.uint8).tobytes())
        tables["lidarseg"].append({"token": lidar_sd, "sample_data_token": lidar_sd, "filename": label_file})
        counts = np.bincount(instance[instance >= 0], minlength=len(layout.objects))
        for obj in layout.objects:
            if obj.box is None or counts[obj.instance] == 0:
                continue
            centre, size, yaw = obj.box
            box_global = local_to_global @ make_transform(centre, euler_to_matrix(yaw))
            annotations.setdefault(obj.instance, []).append({
                "token": _token(seed, "ann", obj.instance, k), "sample_token": sample_token,
                "instance_token": _token(seed, "inst", obj.instance), "visibility_token": "4",
                "attribute_tokens": [_token("attribute", ANNOTATED[obj.name][1])] if ANNOTATED[obj.name][1] else [],
                "translation": box_global[:3, 3].tolist(), "size": size.tolist(),
                "rotation": matrix_to_quaternion(box_global[:3, :3]).tolist(), "prev": "", "next": "",
                "num_lidar_pts": int(counts[obj.instance]), "num_radar_pts": 0})
    categories = {name: _token("category", name) for name in fine_category_names()}
    for obj in layout.objects:
        anns = annotations.get(obj.instance)
        if not anns:
            continue
        for a, b in zip(anns[:-1], anns[1:]):
            a["next"], b["prev"] = b["token"], a["token"]
        tables["sample_annotation"].extend(anns)
        tables["instance"].append({"token": _token(seed, "inst", obj.instance),
                                   "category_token": categories[ANNOTATED[obj.name][0]],
                                   "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                                   "last_annotation_token": anns[-1]["token"]})
    tables["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": len(sample_tokens),
                            "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                            "name": scene_name, "description": f"synthetic {cfg.profile} street, seed {cfg.seed}"})
    return tables


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _static_tables(cfg: SimConfig, log_tokens: list[str]) -> dict[str, list[dict]]:
    names = fine_category_names()
    category = [{"token": _token("category", n), "name": n, "description": f"nuScenes category {n}", "index": i}
                for i, n in enumerate(names)]
    attributes = sorted({a for _, a in ANNOTATED.values() if a})
    sensors = [{"token": _token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"}]
    sensors += [{"token": _token("sensor", c), "channel": c, "modality": "camera"} for c in CAMERAS]
    map_token = _token(cfg.seed, "map")
    return {
        "category": category,
        "attribute": [{"token": _token("attribute", a), "name": a, "description": a} for a in attributes],
        "visibility": [{"token": str(i + 1), "level": lvl, "description": f"visibility of whole object is {lvl}"}
                       for i, lvl in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))],
        "sensor": sensors,
        "map": [{"token": map_token, "log_tokens": log_tokens, "category": "semantic_prior",
                 "filename": f"maps/{map_token}.png"}],
    }


def estimated_bytes(cfg: SimConfig) -> int:
    """An upper estimate of the town's size on disk, bytes: per sample every lidar ray hitting (20 bytes a point
    + 1 label byte), six JPEG + side-car pairs (about 0.45 byte a pixel + 6 kB) and 30 kB of table rows. It also
    bounds the semantickitti layout (16 + 4 bytes a point, one PNG + side-car per frame: about 85 % of it)."""
    lidar = LIDARS[cfg.lidar]
    width, height = cfg.image_size
    per_sample = lidar.beams * lidar.azimuth_steps * 21 + len(CAMERAS) * (0.45 * width * height + 6000) + 30_000
    return int(cfg.scenes * cfg.samples_per_scene * per_sample)


def check_free_space(out: Path, cfg: SimConfig) -> None:
    """Refuse (one line) when the disk that will hold ``out`` has less free space than the town needs."""
    parent = Path(out).resolve()
    while not parent.exists():
        parent = parent.parent
    need, free = estimated_bytes(cfg), shutil.disk_usage(parent).free
    if free < need:
        raise UserError(f"{out}: the town needs about {need / 2**20:.0f} MiB, {parent} has {free / 2**20:.0f} MiB "
                        f"free; free space, choose another folder or ask for fewer --scenes / --samples-per-scene")


def render_scenes(render: Callable, jobs: list[tuple], workers: int, collect: Callable[[tuple, Any], None],
                  progress: Callable[[int, int], None] | None = None) -> None:
    """``render(*job)`` for every job in ``workers`` processes; ``collect(job, result)`` in job order. The workers
    ignore Ctrl-C; Pool.__exit__ terminates them when the parent stops (an error, Ctrl-C or SIGTERM), and a stop
    asked for while a worker starts is raised after the scene at hand (interrupt.py)."""
    with multiprocessing.Pool(max(1, workers), initializer=ignore_signals_in_worker) as pool:
        pending = [pool.apply_async(render, job) for job in jobs]
        for done, (job, result) in enumerate(zip(jobs, pending), 1):
            collect(job, result.get())
            if progress:
                progress(done, len(jobs))
            check_interrupt()


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write a whole dataset into, renamed to ``out`` when the block succeeds and
    removed when it fails or is stopped, so ``out`` is either complete or absent. ``out`` must not exist or be
    empty."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose a new folder or delete it")
    tmp = staging_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Interrupted):
            err.detail = f"nothing was written to {out} (the partial town was removed)"
        raise


def make_town(out: Path, cfg: SimConfig, workers: int = 2,
              progress: Callable[[int, int], None] | None = None) -> TownWritten:
    """Generate the town into ``out`` (which must not exist or be empty); what was written."""
    out = Path(out)
    check_free_space(out, cfg)
    with staged_folder(out) as tmp:
        tables: dict[str, list[dict]] = {}

        def collect(job: tuple, scene_tables: dict[str, list[dict]]) -> None:
            for name, rows in scene_tables.items():
                tables.setdefault(name, []).extend(rows)

        render_scenes(_scene_tables, [(cfg, s, tmp) for s in range(cfg.scenes)], workers, collect, progress)
        tables.update(_static_tables(cfg, [r["token"] for r in tables["log"]]))
        table_dir = tmp / cfg.version
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in tables.items():
            (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=0))
        map_rec = tables["map"][0]
        write_bytes(tmp / map_rec["filename"], _map_png())
        scene_names = [s["name"] for s in tables["scene"]]
        splits = {"train": scene_names[: cfg.scenes - cfg.val_scenes], "val": scene_names[cfg.scenes - cfg.val_scenes:],
                  "version": cfg.version, "generator": {"rdistill_sim": asdict(cfg)}}
        (tmp / SPLITS_FILE).write_text(json.dumps(splits, indent=1))
    return TownWritten(scenes=cfg.scenes, samples=cfg.scenes * cfg.samples_per_scene, root=str(out))


def _map_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
