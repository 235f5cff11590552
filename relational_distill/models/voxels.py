"""Points -> sparse voxels, with the point -> voxel inverse map so that losses and metrics stay per point."""
from __future__ import annotations

import torch

VOXEL_MODES = ("cartesian", "cylindrical")


def voxel_coordinates(xyz: torch.Tensor, voxel_size: float, mode: str = "cartesian",
                      angular_resolution_deg: float = 0.5) -> torch.Tensor:
    """Integer voxel coordinates (N, 3) of points ``xyz`` (N, 3) in metres.

    ``cartesian``: cubes of ``voxel_size`` metres. ``cylindrical``: (radius, azimuth, z) cells of
    ``voxel_size`` metres x ``angular_resolution_deg`` degrees x ``voxel_size`` metres.
    """
    if mode == "cartesian":
        grid = xyz / voxel_size
    elif mode == "cylindrical":
        rho = torch.linalg.vector_norm(xyz[:, :2], dim=1)
        phi = torch.rad2deg(torch.atan2(xyz[:, 1], xyz[:, 0])) + 180.0
        grid = torch.stack([rho / voxel_size, phi / angular_resolution_deg, xyz[:, 2] / voxel_size], 1)
    else:
        raise ValueError(f"unknown voxel mode '{mode}': use cartesian or cylindrical")
    return torch.floor(grid).long()


def voxelize(coords: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Merge the points of a batch into unique voxels.

    Args:
        coords: one (N_b, 3) integer voxel-coordinate tensor per sample.

    Returns:
        indices (V, 4) int32 rows (batch, x, y, z), shifted so every sample starts at 0, as spconv wants;
        inverse (sum N_b,) int64 voxel of each point, in the order of the concatenated points;
        spatial_shape [X, Y, Z], padded to a multiple of 16 so four stride-2 levels divide evenly.
    """
    shifted = torch.cat([c - c.min(0).values for c in coords])
    batch = torch.cat([torch.full((len(c),), b, dtype=torch.long) for b, c in enumerate(coords)])
    extent = shifted.max(0).values + 1
    # One int64 key per point in mixed radix (batch, x, y, z): sorting keys sorts rows lexicographically, so this
    # is torch.unique(rows, dim=0) without its slow row-wise sort.
    key = ((batch * extent[0] + shifted[:, 0]) * extent[1] + shifted[:, 1]) * extent[2] + shifted[:, 2]
    unique_key, inverse = torch.unique(key, return_inverse=True)
    z = unique_key % extent[2]
    rest = unique_key // extent[2]
    y = rest % extent[1]
    rest = rest // extent[1]
    unique = torch.stack([rest // extent[0], rest % extent[0], y, z], 1)
    spatial = [int(-(-int(s) // 16) * 16) for s in extent]
    return unique.int(), inverse, spatial


def scatter_mean(values: torch.Tensor, inverse: torch.Tensor, num: int) -> torch.Tensor:
    """Mean of ``values`` (N, C) per target index ``inverse`` (N,) -> (num, C)."""
    out = torch.zeros(num, values.shape[1], dtype=values.dtype, device=values.device)
    out.index_add_(0, inverse, values)
    count = torch.zeros(num, dtype=values.dtype, device=values.device)
    count.index_add_(0, inverse, torch.ones_like(inverse, dtype=values.dtype))
    return out / count.clamp_min(1)[:, None]
