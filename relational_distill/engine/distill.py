"""``rdistill distill``: train the sparse 3D student to match the teacher's pixel features through one loss."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointMeta
from ..data.dataset import PointCloudDataset
from ..data.fingerprint import dataset_fingerprint
from ..data.nuscenes import load_index
from ..data.sim.writer import is_synthetic_town
from ..errors import UserError
from ..losses import LOSS_NAMES, make_loss, superpixel_pool
from ..models.sparse_unet import PRESETS, Student, VoxelConfig
from ..report import write_result
from ..teachers.store import FeatureStore
from .training import LoopConfig, init_distributed, resolve_device, train


@dataclass
class DistillConfig:
    """Hyper-parameters of distillation; configs/distill_*.yaml mirror this. ``batch_size`` is the global batch:
    under torchrun each process takes ``batch_size / world size`` samples a step (it must divide)."""

    loss: str = "relational"
    preset: str = "small"
    epochs: int = 10
    batch_size: int = 2
    num_pairs: int = 4096            # pairs per batch fed to the loss (N)
    pairs_per_sample: int = 8192     # pairs loaded per sample before the per-batch draw
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    temperature: float = 0.07        # contrastive
    superpixels: int | None = None   # contrastive only: SLidR pooling over this many SLIC superpixels per image
    intra_weight: float = 1.0        # relational lambda
    relational_p: int = 1            # 1 = L1, 2 = squared error
    block_size: int | None = None    # block-wise losses (never an N x N matrix) when set
    voxel_size: float = 0.1
    voxel_mode: str = "cartesian"
    augment: bool = True
    min_depth: float = 1.0
    seed: int = 0
    workers: int = 1

    def check(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise UserError(f"--loss {self.loss}: choose one of {', '.join(LOSS_NAMES)}")
        if self.preset not in PRESETS:
            raise UserError(f"preset '{self.preset}': choose one of {', '.join(PRESETS)}")
        if self.superpixels and self.loss != "contrastive":
            raise UserError(f"superpixels={self.superpixels}: superpixel pooling is SLidR's, for --loss contrastive only")
        if self.relational_p not in (1, 2):
            raise UserError(f"relational_p={self.relational_p}: use 1 (L1) or 2 (squared error)")


def build_student(meta: CheckpointMeta, device_type: str) -> Student:
    """The student a checkpoint's ``meta`` describes (weights not loaded)."""
    return Student(meta.out_dim, meta.preset, VoxelConfig(**meta.voxel), device_type)


def distill(dataroot: Path, features: Path, out: Path, cfg: DistillConfig, version: str = "v1.0-sim",
            teacher: str | None = None, device: str = "cpu", resume: bool = False, quiet: bool = False,
            on_epoch_end=None, overwrite: bool = False) -> dict:
    cfg.check()
    device = resolve_device(device)
    index = load_index(dataroot, version)
    fingerprint = dataset_fingerprint(index)
    store = FeatureStore.open(features, teacher=teacher, version=version, dataset=(index.dataroot, fingerprint))
    train_samples = index.split("train")
    if not train_samples:
        raise UserError(f"{index.dataroot}: no samples in the train split; check the dataset's splits")
    torch.manual_seed(cfg.seed)
    voxel = VoxelConfig(cfg.voxel_size, cfg.voxel_mode)
    meta = CheckpointMeta(kind="distill", out_dim=store.manifest.dim, preset=cfg.preset, voxel=asdict(voxel),
                          teacher_id=store.manifest.teacher_id, features=str(Path(features).resolve()),
                          dataroot=index.dataroot, version=version, dataset_fingerprint=fingerprint, config=asdict(cfg))
    model = Student(store.manifest.dim, cfg.preset, voxel, "cuda" if device.startswith("cuda") else "cpu")
    dataset = PointCloudDataset(index, train_samples, store, cfg.pairs_per_sample, cfg.augment, cfg.seed, cfg.min_depth,
                                cfg.superpixels)
    loss_fn = make_loss(cfg.loss, cfg.temperature, cfg.intra_weight, cfg.relational_p, cfg.block_size)
    rank = init_distributed(device).rank

    def step(model, batch, step_no):
        points = batch["points"].to(device)
        k_all = model(points, batch["batch"].to(device))
        if cfg.superpixels:  # SLidR: InfoNCE between superpixel-pooled point and pixel features
            segment = batch["pair_segment"].to(device)
            k = superpixel_pool(F.normalize(k_all[batch["pair_point"].to(device)].float(), dim=1), segment)
            return loss_fn(k, superpixel_pool(batch["pair_teacher"].to(device), segment))
        n = len(batch["pair_point"])
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step_no * 101 + rank)
        pick = torch.randperm(n, generator=g)[: cfg.num_pairs]
        k = F.normalize(k_all[batch["pair_point"][pick].to(device)].float(), dim=1)
        q = batch["pair_teacher"][pick].to(device)
        return loss_fn(k, q)

    loop = LoopConfig(out=out, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                      warmup_fraction=cfg.warmup_fraction, seed=cfg.seed, device=device, workers=cfg.workers,
                      resume=resume, overwrite=overwrite, quiet=quiet)
    result = train(loop, model, [{"params": model.parameters(), "lr": cfg.lr}], cfg.weight_decay, dataset, step,
                   meta, on_epoch_end)
    result.update({"loss": cfg.loss, "teacher": store.manifest.teacher_id, "train_samples": len(train_samples),
                   "synthetic": is_synthetic_town(index.dataroot), "config": asdict(cfg)})
    if init_distributed(device).main:
        write_result(Path(out) / "distill.json", result)
    return result
