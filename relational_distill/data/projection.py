"""Lidar points -> camera pixels, and features read at those pixels. Pure array math, no I/O."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The devkit's NuScenesExplorer.map_pointcloud_to_image keeps points strictly more than one pixel inside
# the image; we use the same rule so that our pairs are exactly the devkit's.
IMAGE_MARGIN_PX = 1.0
# Points nearer a camera than this (metres) are not paired: the devkit's default min_dist.
DEFAULT_MIN_DEPTH = 1.0


def project_points(points_xyz: np.ndarray, lidar_to_camera: np.ndarray, intrinsic: np.ndarray,
                   image_size: tuple[int, int], min_depth: float = DEFAULT_MIN_DEPTH
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
    front = np.nonzero(cam[:, 2] > min_depth)[0]  # only these can be kept: project them alone
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = cam[front] @ np.asarray(intrinsic, dtype=np.float64).T
        uv = proj[:, :2] / proj[:, 2:3]
    width, height = image_size
    keep = ((uv[:, 0] > IMAGE_MARGIN_PX) & (uv[:, 0] < width - IMAGE_MARGIN_PX)
            & (uv[:, 1] > IMAGE_MARGIN_PX) & (uv[:, 1] < height - IMAGE_MARGIN_PX))
    index = front[keep]
    return index, uv[keep], cam[index, 2]


def pair_points(points_xyz: np.ndarray, cameras: list[dict], min_depth: float = DEFAULT_MIN_DEPTH
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
    cameras, dim, gh, gw = features.shape
    size = torch.tensor(image_sizes, dtype=torch.float64)[camera_index]  # (M, 2): width, height
    # the pixel centre in grid-cell coordinates (cell centres on integers), clamped to the border cells
    x = ((uv[:, 0].double() + 0.5) * (gw / size[:, 0]) - 0.5).clamp(0, gw - 1)
    y = ((uv[:, 1].double() + 0.5) * (gh / size[:, 1]) - 0.5).clamp(0, gh - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=gw - 1), (y0 + 1).clamp(max=gh - 1)
    wx, wy = x - x0, y - y0
    first = camera_index.long() * (gh * gw)
    taps = torch.stack([first + y0 * gw + x0, first + y0 * gw + x1, first + y1 * gw + x0, first + y1 * gw + x1], 1)
    weights = torch.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy], 1).float()
    # channels last, so that each tap reads one contiguous row of D values; one weighted sum of 4 rows per pixel
    cells = features.permute(0, 2, 3, 1).reshape(cameras * gh * gw, dim).float()
    return F.normalize(F.embedding_bag(taps, cells, per_sample_weights=weights, mode="sum"), dim=1)
