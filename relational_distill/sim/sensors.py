"""The simulated sensor rig: a spinning lidar (32 or 64 beams) and six nuScenes-like cameras.

Calibrations follow nuScenes' conventions: the lidar frame has x right / y forward / z up (LIDAR_TOP is
mounted rotated by about -90 degrees of yaw), camera frames have x right / y down / z forward, and
``calibrated_sensor`` transforms map sensor coordinates to ego coordinates (x forward, y left, z up).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.geometry import euler_to_matrix, make_transform
from ..data.index import CAMERAS
from .layout import FINE, SceneLayout
from .raycast import cast_with_ground

# Mounting (x, y, z metres in ego frame), yaw (degrees), focal length in pixels at nuScenes' 1600 px width.
_CAMERA_MOUNTS = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.0, 1266.0),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -55.0, 1260.0),
    "CAM_BACK_RIGHT": ((1.04, -0.48, 1.56), -110.0, 1260.0),
    "CAM_BACK": ((0.03, 0.0, 1.57), 180.0, 809.0),
    "CAM_BACK_LEFT": ((1.05, 0.48, 1.56), 110.0, 1260.0),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1260.0),
}
# Camera axes (x right, y down, z forward) expressed in the ego frame of a forward-looking camera.
_CAMERA_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class LidarModel:
    name: str
    elevations_deg: tuple[float, float]   # top, bottom beam
    beams: int
    azimuth_steps: int
    mount: tuple[float, float, float]
    max_range: float = 70.0
    range_noise: float = 0.02


LIDARS = {
    "hdl32": LidarModel("hdl32", (10.0, -30.0), 32, 1088, (0.943, 0.0, 1.84)),
    "hdl64": LidarModel("hdl64", (2.0, -24.9), 64, 1024, (0.76, 0.0, 1.73)),
}
LIDAR_PERIOD_US = 50_000  # 20 Hz spin: cameras fire as the beam sweeps past them

# Albedo (RGB in [0, 1]) and lidar reflectivity per fine category.
_ALBEDO = {
    FINE["pedestrian"]: (0.55, 0.25, 0.25), FINE["child"]: (0.6, 0.35, 0.3), FINE["barrier"]: (0.85, 0.85, 0.8),
    FINE["pushable"]: (0.3, 0.3, 0.5), FINE["traffic_cone"]: (0.95, 0.45, 0.1), FINE["bicycle"]: (0.2, 0.5, 0.7),
    FINE["bus"]: (0.9, 0.75, 0.2), FINE["car"]: (0.5, 0.55, 0.65), FINE["construction_vehicle"]: (0.95, 0.7, 0.1),
    FINE["motorcycle"]: (0.6, 0.1, 0.15), FINE["trailer"]: (0.75, 0.75, 0.75), FINE["truck"]: (0.7, 0.3, 0.2),
    FINE["driveable_surface"]: (0.3, 0.3, 0.32), FINE["other_flat"]: (0.55, 0.5, 0.45),
    FINE["sidewalk"]: (0.65, 0.63, 0.6), FINE["terrain"]: (0.35, 0.5, 0.25), FINE["manmade"]: (0.6, 0.5, 0.45),
    FINE["static_other"]: (0.4, 0.3, 0.2), FINE["vegetation"]: (0.15, 0.45, 0.15),
}
_REFLECTIVITY = {c: 0.2 + 0.6 * float(np.mean(a)) for c, a in _ALBEDO.items()}
_SUN = np.array([0.4, 0.3, 0.87]) / np.linalg.norm([0.4, 0.3, 0.87])


def lidar_calibration(model: LidarModel) -> np.ndarray:
    """(4, 4) lidar -> ego transform: yaw -90 degrees and a small mounting tilt, like nuScenes' LIDAR_TOP."""
    return make_transform(model.mount, euler_to_matrix(np.radians(-90.3), np.radians(0.4), np.radians(-0.3)))


def camera_calibration(name: str, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) camera -> ego transform and (3, 3) intrinsics for ``image_size`` = (width, height) pixels."""
    (x, y, z), yaw, focal_1600 = _CAMERA_MOUNTS[name]
    width, height = image_size
    tilt = np.radians(0.3 * (CAMERAS.index(name) % 3 - 1))  # a small, fixed pitch per camera
    rotation = euler_to_matrix(np.radians(yaw), tilt, 0.0) @ _CAMERA_BASE
    focal = focal_1600 * width / 1600.0
    intrinsic = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    return make_transform((x, y, z), rotation), intrinsic


def camera_time_offset_us(name: str) -> int:
    """Delay of a camera's exposure after the lidar timestamp, in microseconds: the sweep starts 30 degrees
    left of straight back and fires each camera as it passes its yaw, so every delay is in (0, 50) ms."""
    yaw = _CAMERA_MOUNTS[name][1]
    return int(round(((yaw - 150.0) % 360.0) / 360.0 * LIDAR_PERIOD_US))


def _hash_noise(points: np.ndarray, scale: float) -> np.ndarray:
    """Deterministic value noise in [-0.5, 0.5] attached to world positions (a cheap texture)."""
    cell = np.floor(points * scale)
    h = np.sin(cell @ np.array([12.9898, 78.233, 37.719])) * 43758.5453
    return h - np.floor(h) - 0.5


def scan_lidar(layout: SceneLayout, model: LidarModel, lidar_to_local: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one sweep. Returns points (N, 5) float32 in the lidar frame (x, y, z, intensity 0-255, ring),
    their fine category (N,) and instance ids (N,)."""
    elev = np.radians(np.linspace(*model.elevations_deg, model.beams))
    azim = np.linspace(0, 2 * np.pi, model.azimuth_steps, endpoint=False)
    # tiles of 8 beams x 32 azimuth steps
    el = elev.reshape(-1, 8)[:, None, :, None]
    az = azim.reshape(-1, 32)[None, :, None, :]
    dirs = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)
    ring = np.broadcast_to(np.arange(model.beams).reshape(-1, 8)[:, None, :, None], dirs.shape[:-1])
    dirs_local = dirs.reshape(-1, 256, 3) @ lidar_to_local[:3, :3].T
    origin = lidar_to_local[:3, 3]
    hits = cast_with_ground(layout.primitives, layout.ground_category, origin, dirs_local, model.max_range)
    keep = np.isfinite(hits.t) & (hits.t > 1.0)
    rng_noisy = hits.t[keep] + rng.normal(0, model.range_noise, keep.sum())
    xyz = dirs.reshape(-1, 3)[keep] * rng_noisy[:, None]
    cos_inc = np.abs((hits.normal[keep] * dirs_local.reshape(-1, 3)[keep]).sum(1))
    refl = np.vectorize(_REFLECTIVITY.get)(hits.category[keep])
    intensity = np.clip(255 * refl * (0.3 + 0.7 * cos_inc) + rng.normal(0, 4, keep.sum()), 0, 255)
    points = np.column_stack([xyz, intensity, ring.reshape(-1)[keep]]).astype(np.float32)
    return points, hits.category[keep], hits.instance[keep]


def render_camera(layout: SceneLayout, camera_to_local: np.ndarray, intrinsic: np.ndarray,
                  image_size: tuple[int, int], rng: np.random.Generator,
                  max_range: float = 150.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one image. Returns RGB (H, W, 3) uint8, fine category (H, W) uint8 (255 = sky) and instance
    ids (H, W) int32 (-1 = sky). Pixel (u, v) is centred on integer coordinates, as in the devkit's projection."""
    width, height = image_size
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - intrinsic[0, 2]) / intrinsic[0, 0], (v - intrinsic[1, 2]) / intrinsic[1, 1],
                     np.ones_like(u)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    # tiles of 16 x 16 pixels, flattened back to image order at the end
    tiles = rays.reshape(height // 16, 16, width // 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 256, 3)
    dirs = tiles @ camera_to_local[:3, :3].T
    origin = camera_to_local[:3, 3]
    hits = cast_with_ground(layout.primitives, layout.ground_category, origin, dirs, max_range)

    def untile(a: np.ndarray) -> np.ndarray:
        shape = a.shape[1:]
        return a.reshape(height // 16, width // 16, 16, 16, *shape).swapaxes(1, 2).reshape(height, width, *shape)

    hit = np.isfinite(hits.t)
    cats = np.where(hit, hits.category, 0)
    albedo = np.array([_ALBEDO.get(int(c), (0.5, 0.5, 0.5)) for c in range(32)])[cats]
    flat_dirs = dirs.reshape(-1, 3)
    world = origin + np.where(hit, hits.t, 0.0)[:, None] * flat_dirs
    shade = 0.35 + 0.65 * np.clip(hits.normal @ _SUN, 0, 1)
    texture = 1.0 + 0.35 * _hash_noise(world, 3.0) + 0.15 * _hash_noise(world, 11.0)
    fog = np.exp(-np.where(hit, hits.t, 0.0) / 250.0)[:, None]
    sky_colour = np.array([0.55, 0.7, 0.9]) + 0.15 * flat_dirs[:, 2:3]
    colour = albedo * (shade * texture)[:, None]
    colour = np.where(hit[:, None], fog * colour + (1 - fog) * sky_colour, sky_colour)
    colour = untile(colour) + rng.normal(0, 0.015, (height, width, 3))
    rgb = (np.clip(colour, 0, 1) * 255).astype(np.uint8)
    category = untile(np.where(hit, hits.category, 255)).astype(np.uint8)
    instance = untile(np.where(hit, hits.instance, -1)).astype(np.int32)
    return rgb, category, instance

