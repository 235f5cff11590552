"""The training loop shared by distill and finetune: optimiser and cosine schedule, atomic checkpoints with
optimiser / scheduler / RNG state, resume, a JSON-lines log, NaN/inf detection, mixed precision on CUDA and
DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on CUDA).

A run folder is never destroyed by accident, and its last checkpoint is always a good one (docs/reliability.md):
writing into a folder that holds a run needs ``resume`` or ``overwrite``; settings changed on resume are applied
and logged or refused; the loss and the weights are checked for NaN/inf on every rank before a checkpoint is
written; the log is only ever appended to.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import Checkpoint, CheckpointMeta, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..data.dataset import collate
from ..errors import UserError
from ..interrupt import Interrupted, check as check_interrupt, deferred as deferred_stop
from ..io import folder_lock
from ..progress import progress_bar
from ..report import read_log
from ..results import TrainingRun
from ..student import load_weights
from ..threads import training_threads
from .runlog import LOG, RunLog
from .runtime import Distributed, init_distributed

CHECKPOINT = "checkpoint.pt"
# Settings a resumed run may change (applied from the next step, and logged); any other change is refused.
CHANGEABLE_ON_RESUME = ("epochs", "lr", "lr_backbone", "lr_head", "weight_decay", "warmup_fraction", "workers",
                        "eval_every", "dataroot", "features", "source_checkpoint")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopConfig:
    out: Path
    epochs: int
    batch_size: int                  # global: per process = batch_size / world size
    optimizer: str = "adamw"
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "cpu"
    workers: int = 1
    resume: bool = False             # continue the run in ``out`` if it holds one
    overwrite: bool = False          # start again in a folder that holds a run (deletes it)
    quiet: bool = False


def epoch_order(n: int, seed: int, epoch: int, dist_info: Distributed) -> list[int]:
    """This rank's sample order for ``epoch``: a seeded permutation, split evenly across ranks."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_rank = n // dist_info.world
    return perm[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank]


def epoch_batches(n: int, batch_size: int, seed: int, epochs: range, dist_info: Distributed
                  ) -> list[list[tuple[int, int]]]:
    """This rank's batches of ``batch_size`` items for ``epochs``, epoch after epoch, each item keyed by
    ``(epoch, sample)`` in :func:`epoch_order`; an epoch's last incomplete batch is dropped."""
    batches = []
    for epoch in epochs:
        order = epoch_order(n, seed, epoch, dist_info)
        batches += [[(epoch, i) for i in order[b:b + batch_size]]
                    for b in range(0, len(order) - batch_size + 1, batch_size)]
    return batches


OPTIMIZERS: dict[str, Callable[[list[dict], float], torch.optim.Optimizer]] = {
    "adamw": lambda groups, weight_decay: torch.optim.AdamW(groups, weight_decay=weight_decay),
    "sgd": lambda groups, weight_decay: torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay),
}


def make_optimizer(param_groups: list[dict], name: str, weight_decay: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer '{name}': choose {' or '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](param_groups, weight_decay)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-1 of the learnable weights (not BatchNorm running statistics, which each DDP rank keeps locally)."""
    h = hashlib.sha1()
    for key, t in sorted(model.named_parameters()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _epoch_means(log_path: Path) -> list[dict]:
    """Mean loss per epoch from the step log (as :func:`..report.read_log` reads it), so a resumed run reports its
    earlier epochs too."""
    losses: dict[int, list[float]] = {}
    for row in read_log(log_path)[0]:
        losses.setdefault(row["epoch"], []).append(row["loss"])
    return [{"epoch": e, "mean_loss": float(np.mean(v))} for e, v in sorted(losses.items())]


def steps_per_epoch(samples: int, batch_size: int, world: int) -> int:
    """Optimiser steps in one epoch of ``samples`` for a global ``batch_size`` over ``world`` processes."""
    return samples // world // (batch_size // world)


def _open_run(out: Path, resume: bool, overwrite: bool, main: bool) -> Checkpoint | None:
    """The checkpoint to continue from, or None for a new run; refuses to write over a run by accident.

    ``resume`` means one thing everywhere (the CLI's ``--resume``, the engine's ``resume=True``): continue the run
    in ``out``, which must hold a checkpoint (docs/reliability.md). A folder holds a run when it has a checkpoint. A
    log alone (a run killed before its first checkpoint) has nothing to lose: a new run appends to it after a
    ``start`` event."""
    ckpt_path, log_path = out / CHECKPOINT, out / LOG
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if resume and not ckpt_path.is_file():
        raise UserError(f"--resume: {ckpt_path} does not exist, there is nothing to resume; drop --resume to start "
                        f"a new run in {out}")
    if resume:
        return load_checkpoint(ckpt_path)
    if ckpt_path.exists() and not overwrite:
        raise UserError(f"{out} holds a run ({CHECKPOINT}); pass --resume to continue it, --overwrite to start "
                        f"again (it deletes that run), or choose another --out folder")
    if overwrite and main and (ckpt_path.exists() or log_path.exists()):
        ckpt_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        print(f"--overwrite: starting again in {out}; removed its earlier {CHECKPOINT} and {LOG}", file=sys.stderr)
    return None


def resume_changes(old: CheckpointMeta, new: CheckpointMeta, path: Path) -> dict[str, list]:
    """Settings (meta fields and config keys) that differ between a checkpoint and the resumed run, as
    ``{key: [old, new]}``; refuses (one line) a change that resuming cannot honour."""
    pairs = {f.name: (getattr(old, f.name), getattr(new, f.name)) for f in fields(CheckpointMeta) if f.name != "config"}
    pairs.update({k: (old.config.get(k), new.config.get(k)) for k in sorted(set(old.config) | set(new.config))})
    changed = {}
    for key, (before, after) in pairs.items():
        if before == after:
            continue
        if key not in CHANGEABLE_ON_RESUME:
            raise UserError(f"{path}: the run was made with {key}={before!r}, not {after!r}; resume it with "
                            f"{key}={before!r} (changeable on resume: {', '.join(CHANGEABLE_ON_RESUME)}), "
                            f"or pass --overwrite to start again")
        changed[key] = [before, after]
    return changed


def _all_ranks(flag: bool, dinfo: Distributed, device: str) -> bool:
    """True when ``flag`` holds on every rank, so that all ranks take the same decision together."""
    if dinfo.world == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() == 0.0)


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


@dataclass
class Optimisation:
    """The optimiser, its cosine schedule and the AMP loss scaler, stepped, saved and restored together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, param_groups: list[dict], cfg: LoopConfig, weight_decay: float, total_steps: int,
              use_amp: bool) -> "Optimisation":
        optimizer = make_optimizer(param_groups, cfg.optimizer, weight_decay)
        return cls(optimizer, cosine_schedule(optimizer, total_steps, cfg.warmup_fraction),
                   torch.amp.GradScaler("cuda", enabled=use_amp))

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state(self) -> dict:
        """The training state a checkpoint keeps (with the random generators' state)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state()}

    def restore(self, state: dict, ckpt_path: Path) -> None:
        """Load a checkpoint's training state; one that does not fit is a one-line error."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as err:
            raise UserError(f"{ckpt_path}: its training state does not fit this run ({type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0][:120]}); the checkpoint is corrupt, start again "
                            f"with --overwrite") from None

    def apply_rates(self, lrs: list[float], weight_decay: float) -> None:
        """After :meth:`restore`: the loaded states carry the old learning rates and weight decay; use these."""
        self.scheduler.base_lrs = list(lrs)
        for group, base, factor in zip(self.optimizer.param_groups, lrs, self.scheduler.lr_lambdas):
            group.update(initial_lr=base, lr=base * factor(self.scheduler.last_epoch), weight_decay=weight_decay)


def _rank_checksums(model: torch.nn.Module, dinfo: Distributed) -> list:
    """Every rank's :func:`parameter_checksum` (equal ranks: DDP kept the replicas in step)."""
    checksum = parameter_checksum(model)
    if dinfo.world == 1:
        return [checksum]
    sums: list[Any] = [None] * dinfo.world
    dist.all_gather_object(sums, checksum)
    return sums


def train(cfg: LoopConfig, model: torch.nn.Module, param_groups: list[dict], weight_decay: float,
          dataset: Dataset, step_fn: Callable[[torch.nn.Module, dict, int], torch.Tensor], meta: CheckpointMeta,
          on_epoch_end: Callable[[int, RunLog | None], None] | None = None,
          collate_fn: Callable[[list[dict]], dict] = collate) -> dict:
    """:func:`train_in_folder` while holding the run folder's lock (io.folder_lock): a second command writing the
    same folder at the same time is refused in one line. Only the main process takes it."""
    if not init_distributed(cfg.device).main:
        return train_in_folder(cfg, model, param_groups, weight_decay, dataset, step_fn, meta, on_epoch_end,
                               collate_fn)
    with folder_lock(Path(cfg.out), "run folder"):
        return train_in_folder(cfg, model, param_groups, weight_decay, dataset, step_fn, meta, on_epoch_end,
                               collate_fn)


def train_in_folder(cfg: LoopConfig, model: torch.nn.Module, param_groups: list[dict], weight_decay: float,
                    dataset: Dataset, step_fn: Callable[[torch.nn.Module, dict, int], torch.Tensor],
                    meta: CheckpointMeta, on_epoch_end: Callable[[int, RunLog | None], None] | None = None,
                    collate_fn: Callable[[list[dict]], dict] = collate) -> dict:
    """Train ``model`` for ``cfg.epochs`` epochs over ``dataset``; ``step_fn(model, batch, step)`` returns the loss
    for a batch made by ``collate_fn`` in the DataLoader's workers (the caller's batch format).

    ``dataset[(epoch, i)]`` is sample ``i`` as drawn in ``epoch`` (its random draws seeded by both, so that a
    resumed run sees exactly the data of an uninterrupted one).

    Writes ``checkpoint.pt`` (atomically, after every epoch whose weights are finite on every rank) and appends
    to ``log.jsonl`` (one line per step, one per resume); returns a result dict. ``cfg.batch_size`` is the global
    batch: each of the ``torchrun`` processes takes ``batch_size / world size`` samples a step. With
    ``cfg.resume`` it continues from the checkpoint in ``cfg.out`` (which must exist); ``meta`` is stored in the
    checkpoint (what evaluation needs to rebuild the model) and compared with the checkpoint's on resume.
    ``on_epoch_end(epoch, log)`` runs after each epoch's checkpoint; ``log`` is the run's :class:`RunLog` on the
    main process (None on the others), for rows of its own (``--eval-every``).
    """
    dinfo = init_distributed(cfg.device)
    out = Path(cfg.out)
    ckpt_path, log_path = out / CHECKPOINT, out / LOG
    if cfg.batch_size % dinfo.world:
        raise UserError(f"batch_size {cfg.batch_size} is the global batch (per process = batch_size / world size); "
                        f"make it a multiple of the {dinfo.world} processes")
    batch_size = cfg.batch_size // dinfo.world
    previous = _open_run(out, cfg.resume, cfg.overwrite, dinfo.main)
    changed = resume_changes(previous.meta, meta, ckpt_path) if previous else {}
    if dinfo.main:
        out.mkdir(parents=True, exist_ok=True)
    epoch_steps = steps_per_epoch(len(dataset), cfg.batch_size, dinfo.world)
    if epoch_steps == 0 and cfg.epochs > 0:
        raise UserError(f"{len(dataset)} training samples for a global batch of {cfg.batch_size}; "
                        f"lower --batch-size or add data")
    total_steps = max(1, epoch_steps * cfg.epochs)
    new_lrs = [group["lr"] for group in param_groups]
    if previous:
        load_weights(model, previous.model, ckpt_path)
    model.to(cfg.device)  # before the optimiser state is loaded: load_state_dict puts it on the parameters' device
    use_amp = cfg.device.startswith("cuda")  # float16 autocast (spconv's fast kernels) with loss scaling
    opt = Optimisation.build(param_groups, cfg, weight_decay, total_steps, use_amp)
    start_epoch, step = 0, 0
    if previous:
        opt.restore(previous.training, ckpt_path)
        start_epoch, step = previous.epoch, previous.step
        if changed:
            opt.apply_rates(new_lrs, weight_decay)
    ddp_model = model
    if dinfo.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if cfg.device == "cpu" else [cfg.device])

    def save(epochs_done: int, steps_done: int) -> None:
        save_checkpoint(ckpt_path, meta, model.state_dict(), epochs_done, steps_done, opt.state())

    epoch_losses = []
    started = time.perf_counter()
    samples_seen = 0
    log = _open_log(out, previous, changed, start_epoch, step, cfg.quiet) if dinfo.main else None
    try:
        # on CPU, one core for each DataLoader worker and the rest for the student (threads.py)
        with progress_bar("train", total_steps, cfg.quiet or not dinfo.main, unit="steps") as bar, \
                training_threads(cfg.workers if cfg.device == "cpu" else 0):
            bar.advance(step)
            # one loader for every epoch left: its workers start once and load across epoch boundaries
            loader = DataLoader(dataset, batch_sampler=epoch_batches(len(dataset), batch_size, cfg.seed,
                                                                     range(start_epoch, cfg.epochs), dinfo),
                                collate_fn=collate_fn, num_workers=cfg.workers,
                                generator=torch.Generator().manual_seed(cfg.seed))
            batches = iter(loader)
            for epoch in range(start_epoch, cfg.epochs):
                model.train()
                losses = []
                for _ in range(epoch_steps):
                    with deferred_stop():  # a batch is received whole (interrupt.py)
                        batch = next(batches)
                    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                        loss = step_fn(ddp_model, batch, step)
                    _require_finite_loss(loss, dinfo, cfg.device, step, epoch, ckpt_path)
                    opt.step(loss)
                    step += 1
                    samples_seen += cfg.batch_size
                    losses.append(loss.item())
                    if log:
                        log.write({"step": step, "epoch": epoch, "loss": losses[-1], "lr": opt.scheduler.get_last_lr()[0],
                                   "time": round(time.perf_counter() - started, 3)})
                    bar.advance(info=f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}")
                    check_interrupt()
                epoch_losses.append({"epoch": epoch, "mean_loss": float(np.mean(losses))})
                if not _all_ranks(_finite_weights(model), dinfo, cfg.device):
                    raise TrainingDiverged(f"the weights became NaN or infinite in epoch {epoch} although the loss "
                                           f"stayed finite; {_kept(ckpt_path)}; lower the learning rate and run "
                                           f"again with --resume")
                if dinfo.main:
                    save(epoch + 1, step)
                if on_epoch_end:
                    on_epoch_end(epoch, log)
            if cfg.epochs == 0 and dinfo.main and not previous:  # zero epochs: the initial (random) weights
                save(0, 0)
    except Interrupted as stop:
        stop.detail = f"{_kept(ckpt_path)}; run the same command with --resume to continue"
        raise
    finally:
        if log:
            log.close()
    seconds = time.perf_counter() - started
    return TrainingRun(epochs=_epoch_means(log_path) if dinfo.main else epoch_losses, steps=step, seconds=seconds,
                       samples_per_second=samples_seen / seconds if seconds > 0 else None,
                       checkpoint=str(ckpt_path), world_size=dinfo.world, resume_changes=changed,
                       rank_checksums=_rank_checksums(model, dinfo))


def _open_log(out: Path, previous: Checkpoint | None, changed: dict, start_epoch: int, step: int,
              quiet: bool) -> RunLog:
    """The run's log (main process), with a ``resume`` row (and a line on stderr for what changed) or a ``start``
    row after the rows of an earlier run."""
    log = RunLog(out)
    if not quiet:
        print(log.notice, file=sys.stderr)
    if previous or not log.empty:
        log.write({"event": "resume", "epoch": start_epoch, "step": step, "changed": changed} if previous else
                  {"event": "start"})
        if changed:
            print(f"resuming {out / CHECKPOINT} at epoch {start_epoch}, applying: "
                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), file=sys.stderr)
    return log


def _require_finite_loss(loss: torch.Tensor, dinfo: Distributed, device: str, step: int, epoch: int,
                         ckpt_path: Path) -> None:
    """Stop every rank (one line: what happened, what is kept) when the loss is NaN or infinite on any rank."""
    finite = bool(torch.isfinite(loss))
    if not _all_ranks(finite, dinfo, device):
        where = f"loss became {loss.item()}" if not finite else "loss became NaN/inf on another rank"
        raise TrainingDiverged(f"{where} at step {step} (epoch {epoch}); {_kept(ckpt_path)}; lower the learning "
                               f"rate and run again with --resume")


def _kept(ckpt_path: Path) -> str:
    """What is left of the run after a stop: its last good checkpoint, if any."""
    if not ckpt_path.exists():
        return "no checkpoint was written yet"
    try:
        epoch = load_checkpoint(ckpt_path).epoch
    except UserError:
        return f"{ckpt_path} is kept"
    return f"the last good checkpoint is {ckpt_path} (epoch {epoch})"
