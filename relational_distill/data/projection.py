"""Lidar points -> camera pixels, and features read at those pixels. Pure array math, no I/O."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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


def sample_at_pixels(features: torch.Tensor, camera_index: torch.Tensor, uv: torch.Tensor,
                     image_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """Bilinear teacher features at pixels, re-normalised.

    The feature grid of a camera covers its whole image whatever the teacher's input size was: cell (r, c) of a
    (gh, gw) grid covers pixels ``[c W/gw, (c+1) W/gw) x [r H/gh, (r+1) H/gh)`` of a W x H image.

    Args:
        features: (cameras, D, gh, gw) patch features covering each whole image.
        camera_index: (M,) camera of each pixel; uv: (M, 2) pixel coordinates in that camera's image
            (centres on integers); image_sizes: (width, height) of each camera's image.

    Returns:
        (M, D) float32, L2-normalised.
    """
    out = torch.empty(len(uv), features.shape[1], dtype=torch.float32)
    for c in torch.unique(camera_index).tolist():
        sel = camera_index == c
        width, height = image_sizes[c]
        grid = torch.stack([(2 * uv[sel, 0] + 1) / width - 1, (2 * uv[sel, 1] + 1) / height - 1], 1)
        sampled = F.grid_sample(features[c:c + 1].float(), grid.view(1, 1, -1, 2).float(), mode="bilinear",
                                padding_mode="border", align_corners=False)
        out[sel] = sampled[0, :, 0].T
    return F.normalize(out, dim=1)
