"""``rdistill distill``: train the sparse 3D student to match the teacher's pixel features through one loss."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointMeta
from ..data.dataset import PointCloudDataset, load_sample
from ..data.fingerprint import dataset_fingerprint
from ..data.nuscenes import load_index
from ..data.projection import DEFAULT_MIN_DEPTH
from ..data.splits import distill_samples
from ..data.superpixels import SuperpixelStore
from ..data.town import TOWN_VERSION, is_synthetic_town
from ..errors import UserError
from ..losses import LOSS_NAMES, make_loss, superpixel_pool
from ..metrics.structure import modality_gap, sample_per_class, tolerance, uniformity
from ..models.sparse_unet import PRESETS, Student
from ..models.voxels import VoxelConfig
from ..report import write_result
from ..results import Distillation
from ..scoring import segmentation_confusion, segmentation_result
from ..student import VoxelisingCollate, point_outputs
from ..teachers.store import FeatureStore
from .runlog import RunLog
from .runtime import init_distributed, resolve_device
from .training import LoopConfig, steps_per_epoch, train


HEAD_BIASES = ("teacher-mean", "learned")


@dataclass
class DistillConfig:
    """Hyper-parameters of distillation; configs/distill_*.yaml mirror this. ``batch_size`` is the global batch:
    under torchrun each process takes ``batch_size / world size`` samples a step (it must divide)."""

    loss: str = "relational"
    preset: str = "small"
    epochs: int = 32
    batch_size: int = 2
    num_pairs: int | None = 4096     # pairs per batch fed to the loss (N); None: every pair of the batch
    pairs_per_sample: int | None = 8192  # pairs loaded per sample before the per-batch draw; None: every pair
    optimizer: str = "adamw"
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    temperature: float = 0.07        # contrastive
    superpixels: int | None = None   # contrastive only: SLidR pooling over this many SLIC superpixels per image
    intra_weight: float = 1.0        # relational lambda
    relational_p: int = 2            # 1 = L1 (block-wise or plain), 2 = squared error (exact Gram form)
    block_size: int | None = None    # block-wise losses (never an N x N matrix) when set
    voxel_size: float = 0.2          # metres
    voxel_mode: str = "cartesian"
    augment: bool = True
    min_depth: float = DEFAULT_MIN_DEPTH  # metres: nearer points are not paired (training, monitor, analyze)
    seed: int = 0
    workers: int = 1
    eval_every: int = 0              # epochs between val evaluations written into log.jsonl (0 = none)
    head_bias: str = "teacher-mean"  # the head's bias: "teacher-mean" (fixed at the teacher's mean feature) or
                                     # "learned" (docs/convergence.md)

    def check(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise UserError(f"--loss {self.loss}: choose one of {', '.join(LOSS_NAMES)}")
        if self.preset not in PRESETS:
            raise UserError(f"preset '{self.preset}': choose one of {', '.join(PRESETS)}")
        if self.superpixels and self.loss != "contrastive":
            raise UserError(f"superpixels={self.superpixels}: superpixel pooling is SLidR's, for --loss contrastive only")
        if self.eval_every < 0:
            raise UserError(f"eval_every={self.eval_every}: give a number of epochs >= 0 (0 = no evaluation)")
        if self.relational_p not in (1, 2):
            raise UserError(f"relational_p={self.relational_p}: use 1 (L1) or 2 (squared error)")
        if self.head_bias not in HEAD_BIASES:
            raise UserError(f"head_bias={self.head_bias!r}: choose one of {', '.join(HEAD_BIASES)}")


def distill(dataroot: Path, features: Path, out: Path, cfg: DistillConfig, *, version: str = TOWN_VERSION,
            teacher: str | None = None, device: str = "cpu", resume: bool = False, quiet: bool = False,
            on_epoch_end=None, use_test_scenes: bool = False, overwrite: bool = False) -> Distillation:
    cfg.check()
    device = resolve_device(device)
    index = load_index(dataroot, version)
    fingerprint = dataset_fingerprint(index)
    store = FeatureStore.open(features, teacher=teacher, version=version, dataset=(index.dataroot, fingerprint))
    superpixels = (SuperpixelStore.open(SuperpixelStore.folder(features, cfg.superpixels), cfg.superpixels, version)
                   if cfg.superpixels else None)
    train_samples = distill_samples(index, use_test_scenes)
    if not train_samples:
        raise UserError(f"{index.dataroot}: no samples in the train split; check the dataset's splits")
    torch.manual_seed(cfg.seed)
    voxel = VoxelConfig(cfg.voxel_size, cfg.voxel_mode)
    meta = CheckpointMeta(kind="distill", out_dim=store.manifest.dim, preset=cfg.preset, voxel=asdict(voxel),
                          teacher_id=store.manifest.teacher_id, features=str(Path(features).resolve()),
                          dataroot=index.dataroot, version=version, dataset_fingerprint=fingerprint,
                          dataset=index.dataset, config=asdict(cfg))
    model = Student(store.manifest.dim, cfg.preset, voxel)
    if cfg.head_bias == "teacher-mean":
        anchor_head(model, teacher_mean(index, train_samples, store, cfg.min_depth))
    dataset = PointCloudDataset(index, train_samples, store, cfg.pairs_per_sample, cfg.augment, cfg.seed, cfg.min_depth,
                                superpixels)
    loss_fn = make_loss(cfg.loss, cfg.temperature, cfg.intra_weight, cfg.relational_p, cfg.block_size)
    ranks = init_distributed(device)

    def step(model, batch, step_no):
        points, point_batch, voxels = (batch[k].to(device) for k in ("points", "batch", "voxels"))
        if cfg.superpixels:  # SLidR: InfoNCE between superpixel-pooled point and pixel features
            segment = batch["pair_segment"].to(device)
            k = model(points, point_batch, rows=batch["pair_point"].to(device), voxels=voxels)
            k = superpixel_pool(F.normalize(k.float(), dim=1), segment)
            return loss_fn(k, superpixel_pool(batch["pair_teacher"].to(device), segment))
        pick = torch.arange(len(batch["pair_point"]))
        if cfg.num_pairs is not None:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step_no * 101 + ranks.rank)
            pick = torch.randperm(len(pick), generator=g)[: cfg.num_pairs]
        k = F.normalize(model(points, point_batch, rows=batch["pair_point"][pick].to(device), voxels=voxels).float(),
                        dim=1)
        return loss_fn(k, batch["pair_teacher"][pick].to(device))

    monitor = None
    if cfg.eval_every and ranks.main:
        monitor = ValMonitor(index, store, meta, device, cfg.min_depth)

    def on_epoch(epoch: int, log: RunLog | None) -> None:
        if monitor and log and (epoch + 1) % cfg.eval_every == 0:
            steps_done = (epoch + 1) * steps_per_epoch(len(train_samples), cfg.batch_size, ranks.world)
            log.write({"step": steps_done, "epoch": epoch, **monitor(model)})
        if on_epoch_end:
            on_epoch_end(epoch)

    loop = LoopConfig(out=out, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                      warmup_fraction=cfg.warmup_fraction, seed=cfg.seed, device=device, workers=cfg.workers,
                      resume=resume, overwrite=overwrite, quiet=quiet)
    trainable = [p for p in model.parameters() if p.requires_grad]
    run = train(loop, model, [{"params": trainable, "lr": cfg.lr}], cfg.weight_decay, dataset, step, meta, on_epoch,
                VoxelisingCollate(model.voxel))
    result = Distillation(**vars(run), loss=cfg.loss, teacher=store.manifest.teacher_id,
                          train_samples=len(train_samples), synthetic=is_synthetic_town(index.dataroot),
                          config=asdict(cfg))
    if ranks.main:
        write_result(Path(out) / "distill.json", result)
    return result


def teacher_mean(index, samples: list[dict], store: FeatureStore, min_depth: float, max_samples: int = 64,
                 pairs_per_sample: int = 2000) -> torch.Tensor:
    """(D,) mean teacher feature over the lidar-paired pixels (at least ``min_depth`` metres in front of a camera)
    of up to ``max_samples`` samples spread evenly over ``samples`` (at most ``pairs_per_sample`` pairs each, drawn
    with a fixed seed)."""
    stride = max(1, len(samples) // max_samples)
    rng = np.random.default_rng(0)
    total, count = None, 0
    for sample in samples[::stride][:max_samples]:
        q = load_sample(index, sample, store, min_depth, pairs_per_sample=pairs_per_sample, rng=rng)["pair_teacher"]
        total = q.sum(0) if total is None else total + q.sum(0)
        count += len(q)
    return total / max(count, 1)


def anchor_head(model: Student, mean: torch.Tensor, weight_scale: float = 0.1) -> None:
    """Fix the head's bias at the teacher's mean feature ``mean`` (D,) and shrink its initial weights, so the
    student starts at the direction every teacher feature shares and learns only what differs between points.

    With a learned bias the pre-normalisation output of the student grows (|k| ~ 15 to 50 after 100 steps on the
    synthetic town) and the scale-invariant losses then move its direction ever more slowly; the fixed bias keeps
    |k| ~ 1 (docs/convergence.md, section 4)."""
    with torch.no_grad():
        model.head.bias.copy_(mean)
        model.head.weight.mul_(weight_scale)
    model.head.bias.requires_grad_(False)


class ValMonitor:
    """What ``--eval-every`` logs: zero-shot mIoU on every val point, and U / T / G of the student's features
    against the teacher's on a fixed sample of val pairs (at most ``per_class`` pairs of each class). ``meta`` is
    the run's checkpoint meta (a distill one); pairs are those at least ``min_depth`` metres in front of a camera,
    as in training."""

    def __init__(self, index, store: FeatureStore, meta: CheckpointMeta, device: str, min_depth: float,
                 split: str = "val",
                 per_class: int = 500, pairs_per_sample: int = 2000, seed: int = 0) -> None:
        self.index, self.meta, self.device = index, meta, device
        self.samples = index.split(split)
        if not self.samples:
            raise UserError(f"{index.dataroot}: --eval-every needs samples in the '{split}' split")
        _, text = store.text_embeddings()
        self.text = text.to(device)
        rng = np.random.default_rng(seed)
        self.items = [load_sample(index, s, store, min_depth, pairs_per_sample=pairs_per_sample, rng=rng)
                      for s in self.samples]
        labels = torch.cat([it["labels"][it["pair_point"]] for it in self.items])
        self.pick = sample_per_class(labels, per_class, seed)
        self.q, self.y = torch.cat([it["pair_teacher"] for it in self.items])[self.pick], labels[self.pick]

    @torch.no_grad()
    def __call__(self, model: Student) -> dict:
        was_training = model.training
        model.eval()
        conf = segmentation_confusion(model, self.meta, self.index, self.samples, self.text, self.device)
        k = torch.cat([F.normalize(point_outputs(model, it["points"].to(self.device)), dim=1)[it["pair_point"]].cpu()
                       for it in self.items])[self.pick]
        model.train(was_training)
        return {"val_zero_shot_miou": segmentation_result(conf, self.index).miou, "uniformity": uniformity(k, block_size=4096),
                "tolerance": tolerance(k, self.y), "modality_gap": modality_gap(k, self.q)}

