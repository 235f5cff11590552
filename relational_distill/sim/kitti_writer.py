"""Write the synthetic town in SemanticKITTI's layout (``rdistill make-sim --format semantickitti``).

The streets and drives are those of the nuScenes-format town of the same seed and lidar (``scene_drive``); the
sensors are KITTI's: a velodyne frame with x forward, y left, z up, a front colour camera ``image_2`` with
``calib.txt`` (P0-P3, Tr) and ``poses.txt`` (camera 0 poses in the first frame's camera 0 frame). Training
scenes are concatenated into sequence 00, validation scenes into 08 (SemanticKITTI's validation sequence).
Labels carry SemanticKITTI raw ids, instance ids on things and moving-* ids on some objects; docs/datasets.md
lists how the town's classes map to raw ids.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..data.geometry import invert_transform, make_transform
from ..data.town import SIDECAR_DIR
from ..errors import UserError
from ..results import TownWritten
from .layout import FINE, SceneLayout
from .sensors import LIDARS, camera_calibration, render_camera, scan_lidar
from .writer import (SAMPLE_PERIOD_US, SimConfig, check_free_space, ego_to_local, render_scenes,
                     scene_drive, staged_folder, write_bytes)

TRAIN_SEQUENCE, VAL_SEQUENCE = "00", "08"
# The town's nuScenes fine categories -> SemanticKITTI raw ids (docs/datasets.md: classes without a counterpart).
RAW_ID = {
    "pedestrian": 30, "child": 30, "barrier": 51, "pushable": 99, "traffic_cone": 99, "bicycle": 11, "bus": 13,
    "car": 10, "construction_vehicle": 20, "motorcycle": 15, "trailer": 20, "truck": 18, "driveable_surface": 40,
    "other_flat": 49, "sidewalk": 48, "terrain": 72, "manmade": 50, "static_other": 99, "vegetation": 70,
}
POLE, TRUNK = 80, 71                           # manmade cylinders are poles; a tree's cylinder is its trunk
MOVING = {10: 252, 30: 254, 13: 257, 18: 258}  # static raw id -> its moving-* id
THINGS = (10, 11, 13, 15, 18, 20, 30)          # raw ids whose points carry an instance id
INSTANCES_PER_SCENE = 1024                     # instance ids of a sequence's k-th scene start at k * 1024 + 1
# t of P_i = K [I | (t, 0, 0)]: camera i sits t metres left of camera 0 (KITTI's rig: the grey camera 1 0.54 m
# and the colour camera 3 0.48 m to the right, the colour camera 2 0.06 m to the left)
CAMERA_OFFSETS = {"P0": 0.0, "P1": -0.54, "P2": 0.06, "P3": -0.48}

_RAW_LUT = np.zeros(256, np.uint32)
for _name, _raw in RAW_ID.items():
    _RAW_LUT[FINE[_name]] = _raw


def kitti_rig(image_size: tuple[int, int], lidar: str) -> dict[str, np.ndarray]:
    """The sensor rig: (4, 4) lidar -> ego, camera 2 -> ego and camera 0 -> ego transforms, K (3, 3) and the
    calib.txt matrices P0-P3 (3, 4) and Tr (4, 4) lidar -> camera 0."""
    lidar_to_ego = make_transform(LIDARS[lidar].mount, np.eye(3))
    cam2_to_ego, k = camera_calibration("CAM_FRONT", image_size)
    cam0_to_ego = cam2_to_ego @ make_transform((CAMERA_OFFSETS["P2"], 0.0, 0.0), np.eye(3))
    rig = {"lidar_to_ego": lidar_to_ego, "cam2_to_ego": cam2_to_ego, "cam0_to_ego": cam0_to_ego, "K": k,
           "Tr": invert_transform(cam0_to_ego) @ lidar_to_ego}
    for key, offset in CAMERA_OFFSETS.items():
        rig[key] = k @ np.hstack([np.eye(3), [[offset], [0.0], [0.0]]])
    return rig


def calib_text(rig: dict[str, np.ndarray]) -> str:
    rows = [(key, rig[key]) for key in CAMERA_OFFSETS] + [("Tr", rig["Tr"][:3])]
    return "".join(f"{key}: " + " ".join(f"{v:.12e}" for v in m.reshape(-1)) + "\n" for key, m in rows)


def raw_labels(layout: SceneLayout, category: np.ndarray, instance: np.ndarray, points_local: np.ndarray,
               instance_offset: int) -> np.ndarray:
    """(N,) uint32 SemanticKITTI label entries of a scan: raw id (low 16 bits), instance id (high 16 bits).

    ``category`` / ``instance`` (N,) are the ray-caster's per point, ``points_local`` (N, 3) the points in the
    scene-local frame (metres), used to tell a tree's trunk from its crown.
    """
    raw = _RAW_LUT[category].copy()
    prims = layout.primitives
    obj = np.maximum(instance, 0)
    hit_object = instance >= 0
    cylinder_of = np.full(len(layout.objects) + 1, -1)
    cylinder_of[prims.instance["cylinder"]] = np.arange(len(prims.instance["cylinder"]))
    row = np.where(hit_object, cylinder_of[obj], -1)
    has = row >= 0
    cyl = prims.params["cylinder"][np.maximum(row, 0)]
    cyl_cat = prims.category["cylinder"][np.maximum(row, 0)]
    raw[has & (cyl_cat == FINE["manmade"])] = POLE
    near_axis = np.hypot(points_local[:, 0] - cyl[:, 0], points_local[:, 1] - cyl[:, 1]) < cyl[:, 4] + 0.1
    raw[has & (cyl_cat == FINE["vegetation"]) & near_axis & (points_local[:, 2] < cyl[:, 3] + 0.05)] = TRUNK
    moving = np.zeros(len(layout.objects) + 1, bool)
    for o in layout.objects:  # the town is static: a deterministic share of objects carries moving-* ids
        moving[o.instance] = (o.name in ("bus", "truck") or (o.name == "car" and o.instance % 3 == 0)
                              or (o.name in ("pedestrian", "child") and o.instance % 2 == 0))
    is_moving = hit_object & moving[obj] & np.isin(raw, list(MOVING))
    things = hit_object & np.isin(raw, THINGS)
    raw[is_moving] = np.vectorize(MOVING.get)(raw[is_moving]) if is_moving.any() else raw[is_moving]
    inst_id = np.where(things, instance_offset + obj + 1, 0).astype(np.uint32)
    return (inst_id << np.uint32(16)) | raw


def _render_scene(cfg: SimConfig, scene_idx: int, root: Path, sequence: str, first_frame: int,
                  instance_offset: int) -> list[np.ndarray]:
    """Render one scene's frames into ``root/sequences/<sequence>``; returns camera 0 -> global poses (4, 4)."""
    rng, speed, layout, local_to_global = scene_drive(cfg, scene_idx)
    if len(layout.objects) >= INSTANCES_PER_SCENE:
        raise ValueError(f"scene {scene_idx} has {len(layout.objects)} objects, more than instance ids allow")
    rig = kitti_rig(cfg.image_size, cfg.lidar)
    folder = root / "sequences" / sequence
    poses = []
    for k in range(cfg.samples_per_scene):
        frame = f"{first_frame + k:06d}"
        ego_local = ego_to_local(speed * k * SAMPLE_PERIOD_US / 1e6, layout.ego_lane_y)
        lidar_to_local = ego_local @ rig["lidar_to_ego"]
        points, category, instance = scan_lidar(layout, LIDARS[cfg.lidar], lidar_to_local, rng)
        local = points[:, :3].astype(np.float64) @ lidar_to_local[:3, :3].T + lidar_to_local[:3, 3]
        scan = np.column_stack([points[:, :3], points[:, 3] / 255.0]).astype(np.float32)
        write_bytes(folder / "velodyne" / f"{frame}.bin", scan.tobytes())
        labels = raw_labels(layout, category, instance, local, instance_offset)
        write_bytes(folder / "labels" / f"{frame}.label", labels.astype(np.uint32).tobytes())
        rgb, cat_map, inst_map = render_camera(layout, ego_local @ rig["cam2_to_ego"], rig["K"], cfg.image_size, rng)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        write_bytes(folder / "image_2" / f"{frame}.png", buf.getvalue())
        buf = io.BytesIO()
        np.savez_compressed(buf, category=cat_map, instance=inst_map)
        write_bytes(root / SIDECAR_DIR / "sequences" / sequence / "image_2" / f"{frame}.npz", buf.getvalue())
        poses.append(local_to_global @ ego_local @ rig["cam0_to_ego"])
    return poses


def make_kitti_town(out: Path, cfg: SimConfig, workers: int = 2,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate the town into ``out`` (which must not exist or be empty) in SemanticKITTI's layout."""
    out = Path(out)
    train_scenes = cfg.scenes - cfg.val_scenes
    plan = []  # (scene, sequence, first frame, instance offset)
    for s in range(cfg.scenes):
        sequence, position = (TRAIN_SEQUENCE, s) if s < train_scenes else (VAL_SEQUENCE, s - train_scenes)
        if position >= (1 << 16) // INSTANCES_PER_SCENE:
            raise UserError(f"--scenes {cfg.scenes}: at most {(1 << 16) // INSTANCES_PER_SCENE} scenes fit one "
                            f"sequence's 16-bit instance ids in the semantickitti format; use fewer scenes")
        plan.append((s, sequence, position * cfg.samples_per_scene, position * INSTANCES_PER_SCENE))
    check_free_space(out, cfg)
    with staged_folder(out) as tmp:
        poses: dict[str, list[np.ndarray]] = {TRAIN_SEQUENCE: [], VAL_SEQUENCE: []}
        render_scenes(_render_scene, [(cfg, s, tmp, q, f, i) for s, q, f, i in plan], workers,
                      lambda job, scene_poses: poses[job[3]].extend(scene_poses), progress)
        calib = calib_text(kitti_rig(cfg.image_size, cfg.lidar))
        for sequence, seq_poses in poses.items():
            (tmp / "sequences" / sequence / "calib.txt").write_text(calib)
            first = invert_transform(seq_poses[0])
            (tmp / "sequences" / sequence / "poses.txt").write_text("".join(
                " ".join(f"{v:.12e}" for v in (first @ p)[:3].reshape(-1)) + "\n" for p in seq_poses))
        (tmp / SIDECAR_DIR / "generator.json").write_text(json.dumps(
            {"rdistill_sim": {**asdict(cfg), "format": "semantickitti"},
             "sequences": {q: len(p) for q, p in poses.items()}}, indent=1))
    return TownWritten(scenes=cfg.scenes, samples=cfg.scenes * cfg.samples_per_scene, root=str(out),
                       sequences={q: len(p) for q, p in poses.items()})
