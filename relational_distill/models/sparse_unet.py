"""The 3D student: a sparse residual U-Net on spconv (the MinkUNet34C / Res16UNet34C channel plan) and heads.

On CPU every spconv convolution uses ``ConvAlgo.Native`` (the default implicit-GEMM algorithm is CUDA-only);
on a GPU spconv's default. The algorithm follows the weights' device: it is set again whenever the network is
moved (``.to()``, ``.cuda()``), so a student built on CPU and moved to a GPU runs the GPU's algorithm. Points are
voxelised by the data loader in training and inside :class:`Student` otherwise (models/voxels.py), and voxel
features are read back per point through the inverse map, so every output is per point.
"""
from __future__ import annotations

from dataclasses import dataclass

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # spconv's import warns about deprecated torch.cuda.amp decorators
    warnings.simplefilter("ignore", FutureWarning)
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo
# spconv's modules make torch.fx log a notice about is_fx_tracing on first use; it is not ours to act on
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

from .voxels import VoxelConfig, Voxels, scatter_mean, voxelize_batch


@dataclass(frozen=True)
class UNetPreset:
    channels: tuple[int, ...]  # 4 encoder stages, then 4 decoder stages
    blocks: tuple[int, ...]    # residual blocks per stage
    stem: int


PRESETS = {
    # MinkUNet34C / Res16UNet34C, the field's standard (SLidR, ScaLR, the paper)
    "minkunet34": UNetPreset((32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2), 32),
    # a narrow, shallow variant that trains in minutes on a 2-core CPU
    "small": UNetPreset((16, 32, 64, 64, 64, 48, 32, 32), (1, 1, 1, 1, 1, 1, 1, 1), 16),
}


def conv_algorithm(conv: spconv.conv.SparseConvolution, device_type: str) -> ConvAlgo:
    """The algorithm ``conv`` runs on ``device_type``: Native on CPU (its only algorithm); elsewhere what spconv
    picks when given none, implicit GEMM for kernels of at most 32 cells and Native for larger ones."""
    if device_type == "cpu":
        return ConvAlgo.Native
    volume = 1
    for k in conv.kernel_size:
        volume *= k
    return ConvAlgo.MaskImplicitGemm if volume <= 32 else ConvAlgo.Native


class _Factory:
    """Builds the network's convolutions (CPU's algorithm until the network is moved; spconv keeps every
    algorithm's weights in one layout, so the algorithm can change after construction)."""

    def subm(self, cin: int, cout: int, key: str, k: int = 3) -> nn.Module:
        return spconv.SubMConv3d(cin, cout, k, padding=k // 2, bias=False, indice_key=key, algo=ConvAlgo.Native)

    def down(self, cin: int, cout: int, key: str) -> nn.Module:
        return spconv.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key=key, algo=ConvAlgo.Native)

    def up(self, cin: int, cout: int, key: str) -> nn.Module:
        return spconv.SparseInverseConv3d(cin, cout, 2, bias=False, indice_key=key, algo=ConvAlgo.Native)


def _bn_relu(x: spconv.SparseConvTensor, bn: nn.Module, relu: bool = True) -> spconv.SparseConvTensor:
    f = bn(x.features)
    return x.replace_feature(F.relu(f) if relu else f)


class BasicBlock(nn.Module):
    def __init__(self, make: _Factory, cin: int, cout: int, key: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = make.subm(cin, cout, key), nn.BatchNorm1d(cout)
        self.conv2, self.bn2 = make.subm(cout, cout, key), nn.BatchNorm1d(cout)
        self.skip = nn.Linear(cin, cout, bias=False) if cin != cout else None

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features if self.skip is None else self.skip(x.features)
        out = _bn_relu(self.conv1(x), self.bn1)
        out = _bn_relu(self.conv2(out), self.bn2, relu=False)
        return out.replace_feature(F.relu(out.features + identity))


class _Stage(nn.Module):
    def __init__(self, make: _Factory, cin: int, cout: int, blocks: int, key: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(BasicBlock(make, cin if i == 0 else cout, cout, key) for i in range(blocks))

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        for b in self.blocks:
            x = b(x)
        return x


class SparseUNet(nn.Module):
    """Sparse residual U-Net: stem, 4 stride-2 encoder stages, 4 decoder stages with skip connections.

    ``forward`` takes a ``SparseConvTensor`` and returns voxel features (V, channels[-1]) at input resolution.
    """

    def __init__(self, in_channels: int, preset: str = "minkunet34") -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        make = _Factory()
        self.stem = make.subm(in_channels, p.stem, "stem", k=5)
        self.stem_bn = nn.BatchNorm1d(p.stem)
        self.stem_block = _Stage(make, p.stem, p.stem, 1, "subm0")
        enc_in = [p.stem, *p.channels[:3]]
        self.downs, self.down_bns, self.encoders = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(4):
            self.downs.append(make.down(enc_in[i], enc_in[i], f"down{i}"))
            self.down_bns.append(nn.BatchNorm1d(enc_in[i]))
            self.encoders.append(_Stage(make, enc_in[i], p.channels[i], p.blocks[i], f"subm{i + 1}"))
        skips = [p.channels[2], p.channels[1], p.channels[0], p.stem]
        dec_in = [p.channels[3], *p.channels[4:7]]
        self.ups, self.up_bns, self.decoders = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(4):
            level = 3 - i
            self.ups.append(make.up(dec_in[i], p.channels[4 + i], f"down{level}"))
            self.up_bns.append(nn.BatchNorm1d(p.channels[4 + i]))
            self.decoders.append(_Stage(make, p.channels[4 + i] + skips[i], p.channels[4 + i], p.blocks[4 + i],
                                        f"subm{level}"))
        self.out_channels = p.channels[-1]

    def _apply(self, fn, *args, **kwargs):
        """After a move (``.to()``, ``.cuda()``, ``.cpu()``), every convolution takes its new device's algorithm."""
        moved = super()._apply(fn, *args, **kwargs)
        device_type = self.stem.weight.device.type
        for m in self.modules():
            if isinstance(m, spconv.conv.SparseConvolution):
                m.algo = conv_algorithm(m, device_type)
        return moved

    def forward(self, x: spconv.SparseConvTensor) -> torch.Tensor:
        x = self.stem_block(_bn_relu(self.stem(x), self.stem_bn))
        skips = [x]
        for down, bn, enc in zip(self.downs, self.down_bns, self.encoders):
            x = enc(_bn_relu(down(x), bn))
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        for up, bn, dec in zip(self.ups, self.up_bns, self.decoders):
            x = _bn_relu(up(x), bn)
            x = x.replace_feature(torch.cat([x.features, skips.pop().features], 1))
            x = dec(x)
        return x.features


def point_inputs(points: torch.Tensor) -> torch.Tensor:
    """Per-point input features (N, 4): x, y, z scaled to about [-1, 1] and intensity in [0, 1]."""
    return torch.stack([points[:, 0] / 50.0, points[:, 1] / 50.0, points[:, 2] / 5.0, points[:, 3] / 255.0], 1)


class Student(nn.Module):
    """Backbone + a linear head; maps a batch of point clouds to per-point outputs.

    ``forward(points (N, >=4), batch (N,), rows=None)`` -> (N, out_dim), or (len(rows), out_dim) for the points
    ``rows`` only: the head then runs on just the points a loss uses (distillation uses a few thousand of ~10^5).
    """

    def __init__(self, out_dim: int, preset: str = "minkunet34", voxel: VoxelConfig = VoxelConfig()) -> None:
        super().__init__()
        self.voxel = voxel
        self.backbone = SparseUNet(4, preset)
        self.head = nn.Linear(self.backbone.out_channels, out_dim)

    def voxel_features(self, points: torch.Tensor, batch: torch.Tensor, voxels: Voxels | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone features per voxel (V, C), the voxel of each point (N,)); ``voxels``: the batch's
        voxelisation made by the data loader (models/voxels.py), on the points' device, else made here."""
        if voxels is None:
            voxels = voxelize_batch(points, batch, self.voxel).to(points.device)
        feats = scatter_mean(point_inputs(points), voxels.inverse, len(voxels.indices))
        x = spconv.SparseConvTensor(feats, voxels.indices, voxels.shape, voxels.batch_size)
        return self.backbone(x), voxels.inverse

    def forward(self, points: torch.Tensor, batch: torch.Tensor, rows: torch.Tensor | None = None,
                voxels: Voxels | None = None) -> torch.Tensor:
        features, inverse = self.voxel_features(points, batch, voxels)
        return self.head(features[inverse if rows is None else inverse[rows]])
