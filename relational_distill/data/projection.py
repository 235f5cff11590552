"""Lidar points -> camera pixels. Pure array math, no I/O."""
from __future__ import annotations

import numpy as np

# The devkit's NuScenesExplorer.map_pointcloud_to_image keeps points strictly more than one pixel inside
# the image; we use the same rule so that our pairs are exactly the devkit's.
IMAGE_MARGIN_PX = 1.0


def project_points(points_xyz: np.ndarray, lidar_to_camera: np.ndarray, intrinsic: np.ndarray,
                   image_size: tuple[int, int], min_depth: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project lidar points into one camera.

    Args:
        points_xyz: (N, 3) metres, lidar frame.
        lidar_to_camera: (4, 4) transform of the whole chain lidar -> ego -> global -> ego' -> camera.
        intrinsic: (3, 3) pinhole matrix, pixels.
        image_size: (width, height) pixels.
        min_depth: metres; points at or nearer than this camera depth are dropped.

    Returns:
        point_index (M,) int64 ascending indices into ``points_xyz``; uv (M, 2) float64 pixel coordinates
        (u right, v down, pixel centres on integers); depth (M,) metres.
    """
    pts = np.asarray(points_xyz, dtype=np.float64)
    cam = pts @ lidar_to_camera[:3, :3].T + lidar_to_camera[:3, 3]
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = cam @ np.asarray(intrinsic, dtype=np.float64).T
        uv = proj[:, :2] / proj[:, 2:3]
    width, height = image_size
    keep = ((depth > min_depth) & (uv[:, 0] > IMAGE_MARGIN_PX) & (uv[:, 0] < width - IMAGE_MARGIN_PX)
            & (uv[:, 1] > IMAGE_MARGIN_PX) & (uv[:, 1] < height - IMAGE_MARGIN_PX))
    index = np.nonzero(keep)[0]
    return index, uv[index], depth[index]


def pair_points(points_xyz: np.ndarray, cameras: list[dict], min_depth: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of every point with every camera that sees it.

    ``cameras`` holds dicts with ``lidar_to_camera``, ``intrinsic`` and ``image_size``. Returns point_index
    (M,), camera_index (M,) and uv (M, 2); a point seen by two cameras gives two pairs.
    """
    idx, cam, uv = [], [], []
    for c, camera in enumerate(cameras):
        i, p, _ = project_points(points_xyz, camera["lidar_to_camera"], camera["intrinsic"], camera["image_size"],
                                 min_depth)
        idx.append(i)
        cam.append(np.full(len(i), c, np.int64))
        uv.append(p)
    return np.concatenate(idx), np.concatenate(cam), np.concatenate(uv).reshape(-1, 2)
