"""Points -> sparse voxels, with the point -> voxel inverse map so that losses and metrics stay per point.

Training voxelises each batch in the DataLoader's workers (:func:`voxelize_batch`, through student.py's
``VoxelisingCollate``), as SLidR and OpenScene quantise in their loaders, so a GPU step gets its voxels ready made;
evaluation lets the student voxelise inside ``forward``. Both run the same function on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

VOXEL_MODES = ("cartesian", "cylindrical")


@dataclass(frozen=True)
class VoxelConfig:
    size: float = 0.1               # metres
    mode: str = "cartesian"         # or cylindrical
    angular_resolution_deg: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in VOXEL_MODES:
            raise ValueError(f"voxel mode '{self.mode}': use {' or '.join(VOXEL_MODES)}")
        for name in ("size", "angular_resolution_deg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e3:
                raise ValueError(f"voxel {name} {value!r}: a positive number of metres (degrees) below 1000")


@dataclass
class Voxels:
    """A batch's voxelisation: spconv's ``indices`` (V, 4) int32 rows (batch, x, y, z), each point's voxel
    ``inverse`` (N,) int64, the padded ``shape`` and the number of samples."""

    indices: torch.Tensor
    inverse: torch.Tensor
    shape: list[int]
    batch_size: int

    def to(self, device: torch.device | str) -> "Voxels":
        return Voxels(self.indices.to(device), self.inverse.to(device), self.shape, self.batch_size)


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


def voxelize_batch(points: torch.Tensor, batch: torch.Tensor, voxel: VoxelConfig) -> Voxels:
    """The voxelisation of a batch of point clouds (``points`` (N, >=3) metres, ``batch`` (N,) each point's sample),
    computed on the CPU whatever the points' device."""
    points, batch = points.cpu(), batch.cpu()
    num = int(batch.max()) + 1 if len(batch) else 0
    coords = voxel_coordinates(points[:, :3], voxel.size, voxel.mode, voxel.angular_resolution_deg)
    order = torch.cat([torch.nonzero(batch == b).squeeze(1) for b in range(num)])
    indices, inverse_sorted, shape = voxelize([coords[batch == b] for b in range(num)])
    inverse = torch.empty_like(inverse_sorted)
    inverse[order] = inverse_sorted
    return Voxels(indices, inverse, shape, num)
