"""``rdistill finetune``: few-shot semantic segmentation from a distilled backbone (or from scratch), and the
linear probe (frozen backbone). The few-shot subset follows SLidR's rules (docs/splits.md): on nuScenes its scene
rule, on SemanticKITTI every k-th frame, with a head for its 19 classes."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointMeta, load_checkpoint
from ..data.dataset import PointCloudDataset
from ..data.datasets import open_index
from ..data.fingerprint import dataset_fingerprint
from ..data.splits import few_shot_samples, require_labels
from ..data.town import TOWN_VERSION
from ..errors import UserError
from ..models.sparse_unet import PRESETS, Student
from ..models.voxels import VoxelConfig
from ..report import write_result
from ..results import Finetuning
from ..student import VoxelisingCollate, load_weights, voxel_config
from .evaluate import evaluate
from .runtime import init_distributed, resolve_device
from .training import LoopConfig, train


@dataclass
class FinetuneConfig:
    """Hyper-parameters of finetuning; configs/finetune_*.yaml mirror this. ``batch_size`` is the global batch
    (per torchrun process: ``batch_size / world size``)."""

    fraction: float = 0.01         # share of training scenes kept (1 %, 5 %, 10 %, 25 %, 100 %)
    epochs: int = 10
    batch_size: int = 2
    optimizer: str = "adamw"
    lr_backbone: float = 1e-3
    lr_head: float = 1e-2
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    lovasz: bool = False           # add the Lovasz-softmax loss to cross-entropy
    linear_probe: bool = False     # frozen backbone, linear head only
    from_scratch: bool = False     # random initialisation (the baseline)
    preset: str = "small"          # only used from scratch; otherwise the checkpoint's
    voxel_size: float = 0.2        # metres, as DistillConfig; only used from scratch; otherwise the checkpoint's
    augment: bool = True
    seed: int = 0
    workers: int = 1

    def check(self) -> None:
        if not 0 < self.fraction <= 1:
            raise UserError(f"--fraction {self.fraction}: must be in (0, 1], e.g. 0.01 for 1 %")
        if self.linear_probe and self.from_scratch:
            raise UserError("--linear-probe with --from-scratch would train a head on random features; choose one")
        if self.preset not in PRESETS:
            raise UserError(f"preset '{self.preset}': choose one of {', '.join(PRESETS)}")


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al., 2018) over classes present in ``labels``; probs (N, C), labels (N,)."""
    losses = []
    for c in torch.unique(labels):
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        fg_sorted = fg[order]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(errors_sorted @ jaccard)
    return torch.stack(losses).mean() if losses else probs.sum() * 0


def finetune(checkpoint: Path | None, out: Path, cfg: FinetuneConfig, *, dataroot: Path | None = None,
             version: str | None = None, device: str = "cpu", resume: bool = False, quiet: bool = False,
             dataset: str | None = None, overwrite: bool = False) -> Finetuning:
    cfg.check()
    device = resolve_device(device)
    source = None
    if checkpoint is not None:
        source = load_checkpoint(checkpoint, kinds=("distill",))
    elif not cfg.from_scratch:
        raise UserError("finetune needs a distilled CHECKPOINT, or --from-scratch for the random-init baseline")
    if dataroot is None and source is None:
        raise UserError("--dataroot is required with --from-scratch")
    dataroot = Path(dataroot or source.meta.dataroot)
    version = version or (source.meta.version if source else TOWN_VERSION)
    require_labels(version, "finetune")
    index = open_index(dataroot, version, dataset)
    train_samples, selection = few_shot_samples(index, cfg.fraction)
    if not train_samples:
        raise UserError(f"{index.dataroot}: no training samples; check the dataset's splits")
    index.require_labels(train_samples, "training")
    num_classes = len(index.class_names)
    preset = source.meta.preset if source and not cfg.from_scratch else cfg.preset
    if preset not in PRESETS:
        raise UserError(f"{checkpoint}: student preset '{preset}' is none of {', '.join(PRESETS)}; the checkpoint is "
                        f"corrupt")
    voxel = voxel_config(source.meta, checkpoint) if source else VoxelConfig(cfg.voxel_size)
    torch.manual_seed(cfg.seed)
    model = Student(num_classes, preset, voxel)
    if not cfg.from_scratch:
        backbone = {k[len("backbone."):]: v for k, v in source.model.items() if k.startswith("backbone.")}
        load_weights(model.backbone, backbone, checkpoint)
    if cfg.linear_probe:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        groups = [{"params": model.head.parameters(), "lr": cfg.lr_head}]
    else:
        groups = [{"params": model.backbone.parameters(), "lr": cfg.lr_backbone},
                  {"params": model.head.parameters(), "lr": cfg.lr_head}]
    meta = CheckpointMeta(kind="linear_probe" if cfg.linear_probe else "finetune", out_dim=num_classes,
                          preset=preset, voxel=asdict(voxel), dataroot=index.dataroot, version=index.version,
                          dataset_fingerprint=dataset_fingerprint(index), dataset=index.dataset,
                          class_names=list(index.class_names),
                          source_checkpoint=str(checkpoint) if checkpoint else None, config=asdict(cfg),
                          teacher_id=source.meta.teacher_id if source else "none")
    train_data = PointCloudDataset(index, train_samples, None, augment=cfg.augment, seed=cfg.seed)

    def step(model, batch, step_no):
        if cfg.linear_probe:
            model.train(False)  # frozen backbone: BatchNorm statistics stay those of the distilled backbone
        points, point_batch, voxels = (batch[k].to(device) for k in ("points", "batch", "voxels"))
        logits = model(points, point_batch, voxels=voxels).float()
        target = batch["labels"].to(device) - 1  # classes 1..C -> 0..C-1; ignore (0) becomes -1
        loss = F.cross_entropy(logits, target, ignore_index=-1)
        if cfg.lovasz:
            keep = target >= 0
            loss = loss + lovasz_softmax(F.softmax(logits[keep], 1), target[keep])
        return loss

    loop = LoopConfig(out=out, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                      warmup_fraction=cfg.warmup_fraction, seed=cfg.seed, device=device, workers=cfg.workers,
                      resume=resume, overwrite=overwrite, quiet=quiet)
    run = train(loop, model, groups, cfg.weight_decay, train_data, step, meta, collate_fn=VoxelisingCollate(model.voxel))
    result = Finetuning(**vars(run), train_samples=len(train_samples), **selection, fraction=cfg.fraction,
                        mode=meta.kind, from_scratch=cfg.from_scratch, dataset=index.dataset, notes=list(index.notes),
                        config=asdict(cfg))
    if init_distributed(device).main:
        result.evaluation = evaluate(Path(out) / "checkpoint.pt", device=device, quiet=quiet)
        write_result(Path(out) / "finetune.json", result)
    return result
