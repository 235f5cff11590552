"""The training loop shared by distill and finetune: optimiser and cosine schedule, atomic checkpoints with
optimiser / scheduler / RNG state, resume, a JSON-lines log, NaN/inf detection, mixed precision on CUDA and
DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import collate
from ..errors import UserError
from ..io import atomic_torch_save
from ..progress import progress_bar

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopConfig:
    out: Path
    epochs: int
    batch_size: int
    optimizer: str = "adamw"
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "cpu"
    workers: int = 1
    resume: bool = False
    quiet: bool = False


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(dist.get_rank(), dist.get_world_size())


def resolve_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device.startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def epoch_order(n: int, seed: int, epoch: int, dist_info: Distributed) -> list[int]:
    """This rank's sample order for ``epoch``: a seeded permutation, split evenly across ranks."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_rank = n // dist_info.world
    return perm[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank]


def make_optimizer(param_groups: list[dict], name: str, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(param_groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise UserError(f"optimizer '{name}': choose adamw or sgd")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-1 of the learnable weights (not BatchNorm running statistics, which each DDP rank keeps locally)."""
    h = hashlib.sha1()
    for key, t in sorted(model.named_parameters()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _epoch_means(log_path: Path) -> list[dict]:
    """Mean loss per epoch from the step log, so a resumed run reports its earlier epochs too."""
    losses: dict[int, list[float]] = {}
    for line in log_path.read_text().splitlines():
        row = json.loads(line) if line else {}
        if "loss" in row:  # evaluation rows (distill --eval-every) carry no loss
            losses.setdefault(row["epoch"], []).append(row["loss"])
    return [{"epoch": e, "mean_loss": float(np.mean(v))} for e, v in sorted(losses.items())]


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint; pass a checkpoint.pt written by 'rdistill distill' or 'finetune'")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]}); it may be truncated") from None


def train(cfg: LoopConfig, model: torch.nn.Module, param_groups: list[dict], weight_decay: float,
          dataset: Dataset, step_fn: Callable[[torch.nn.Module, dict, int], torch.Tensor], meta: dict,
          on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Train ``model`` for ``cfg.epochs`` epochs over ``dataset``; ``step_fn(model, batch, step)`` returns the loss.

    Writes ``checkpoint.pt`` (atomically, after every epoch), ``log.jsonl`` (one line per step) and returns a
    result dict. With ``cfg.resume`` it continues from the checkpoint in ``cfg.out``. ``meta`` is stored in
    the checkpoint (what evaluation needs to rebuild the model).
    """
    dinfo = init_distributed(cfg.device)
    out = Path(cfg.out)
    ckpt_path, log_path = out / CHECKPOINT, out / LOG
    if dinfo.main:
        out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = len(dataset) // dinfo.world // cfg.batch_size
    if steps_per_epoch == 0 and cfg.epochs > 0:
        raise UserError(f"{len(dataset)} training samples for batch size {cfg.batch_size} x {dinfo.world} processes; "
                        f"lower --batch-size or add data")
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    optimizer = make_optimizer(param_groups, cfg.optimizer, weight_decay)
    use_amp = cfg.device.startswith("cuda")  # float16 autocast (spconv's fast kernels) with loss scaling
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    scheduler = cosine_schedule(optimizer, total_steps, cfg.warmup_fraction)
    start_epoch, step = 0, 0
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
        if dinfo.main and log_path.exists():  # drop log lines written after the checkpoint
            kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            log_path.write_text("".join(ln + "\n" for ln in kept))
    elif dinfo.main and log_path.exists():
        log_path.unlink()
    model.to(cfg.device)
    ddp_model = model
    if dinfo.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if cfg.device == "cpu" else [cfg.device])

    def save(epochs_done: int, steps_done: int) -> None:
        atomic_torch_save(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                      "rng": _rng_state(), "epoch": epochs_done, "step": steps_done, "meta": meta})

    epoch_losses = []
    started = time.perf_counter()
    samples_seen = 0
    log_file = open(log_path, "a") if dinfo.main else None
    try:
        with progress_bar("train", total_steps, cfg.quiet or not dinfo.main, unit="steps") as bar:
            bar.advance(step)
            for epoch in range(start_epoch, cfg.epochs):
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                order = epoch_order(len(dataset), cfg.seed, epoch, dinfo)
                loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, collate_fn=collate,
                                    num_workers=cfg.workers, drop_last=True, persistent_workers=False)
                model.train()
                losses = []
                for batch in loader:
                    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                        loss = step_fn(ddp_model, batch, step)
                    if not torch.isfinite(loss):
                        where = f"step {step} (epoch {epoch})"
                        keep = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
                        raise TrainingDiverged(f"loss became {loss.item()} at {where}; {keep}; lower the learning rate "
                                               f"and run again with --resume")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    samples_seen += cfg.batch_size * dinfo.world
                    losses.append(loss.item())
                    if log_file:
                        log_file.write(json.dumps({"step": step, "epoch": epoch, "loss": losses[-1],
                                                   "lr": scheduler.get_last_lr()[0],
                                                   "time": round(time.perf_counter() - started, 3)}) + "\n")
                        log_file.flush()
                    bar.advance(info=f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}")
                epoch_losses.append({"epoch": epoch, "mean_loss": float(np.mean(losses))})
                if dinfo.main:
                    save(epoch + 1, step)
                if on_epoch_end:
                    on_epoch_end(epoch)
            if cfg.epochs == 0 and dinfo.main:  # zero epochs: the checkpoint of the initial (random) weights
                save(0, 0)
    finally:
        if log_file:
            log_file.close()
    seconds = time.perf_counter() - started
    result = {"epochs": _epoch_means(log_path) if dinfo.main else epoch_losses, "steps": step, "seconds": seconds,
              "samples_per_second": samples_seen / seconds if seconds > 0 else None,
              "checkpoint": str(ckpt_path), "world_size": dinfo.world}
    checksum = parameter_checksum(model)
    if dinfo.world > 1:
        sums: list[Any] = [None] * dinfo.world
        dist.all_gather_object(sums, checksum)
        result["rank_checksums"] = sums
    else:
        result["rank_checksums"] = [checksum]
    return result
