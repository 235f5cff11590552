"""The one checkpoint format, written and read by every command (distill, finetune, evaluate, analyze).

A checkpoint is a ``torch.save`` file holding only tensors, numbers, strings and plain containers::

    {"format": 3,
     "meta": CheckpointMeta as a dict (what the student is and what it was trained on),
     "model": state dict,
     "epoch": epochs done, "step": optimiser steps done,
     "training": {"optimizer", "scheduler", "scaler", "rng"}   # what --resume needs
     "digest": sha256 of everything above}

It is read with ``torch.load(weights_only=True)``: a file holding any other Python object (a pickle with code)
is refused without running it. The digest catches bytes that changed after writing (a flipped bit in a tensor
leaves a file torch still reads). Anything unreadable ends in one :class:`UserError` line naming the file
(docs/reliability.md).
"""
from __future__ import annotations

import hashlib
import pickle
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .io import atomic_torch_save

FORMAT = 3  # 1: rdistill 0.1 (pickled numpy RNG state, readable only with weights_only=False); 2: meta without
            # dataset and class_names (nuScenes only)
KINDS = ("distill", "finetune", "linear_probe")
TRAINING_KEYS = {"optimizer", "scheduler", "scaler", "rng"}
MAX_COUNT = 10 ** 9  # epochs and steps: more is a corrupt file (and a resume that would loop for ever)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint's student is and what it was trained on; enough to rebuild and evaluate it."""

    kind: str                        # distill, finetune or linear_probe
    out_dim: int                     # output channels: teacher dimension (distill) or number of classes
    preset: str                      # student width preset
    voxel: dict[str, Any]            # VoxelConfig fields (size in metres, mode, angular resolution in degrees)
    teacher_id: str                  # teacher of the distilled features ("none" for a student trained from scratch)
    dataroot: str                    # dataset trained on (absolute path when written)
    version: str                     # its table version
    dataset_fingerprint: str         # data/fingerprint.py: which state of that dataset
    config: dict[str, Any]           # the command's config (DistillConfig / FinetuneConfig as a dict)
    features: str | None = None      # distill: the feature store
    source_checkpoint: str | None = None  # finetune / linear probe: the distilled checkpoint started from
    dataset: str = "nuscenes"        # nuscenes or semantickitti (data/datasets.py): the dataset trained on
    class_names: list[str] | None = None  # finetune / linear probe: the head's classes, output i = class i + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> "CheckpointMeta":
        """Check every field's type; a meta that does not fit is a corrupt or foreign checkpoint."""
        types = {"kind": str, "out_dim": int, "preset": str, "voxel": dict, "teacher_id": str, "dataroot": str,
                 "version": str, "dataset_fingerprint": str, "config": dict, "features": (str, type(None)),
                 "source_checkpoint": (str, type(None)), "dataset": str, "class_names": (list, type(None))}
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise UserError(f"{path}: checkpoint meta has the wrong keys; pass a checkpoint written by this rdistill")
        for key, expected in types.items():
            if not isinstance(data[key], expected) or isinstance(data[key], bool):
                raise UserError(f"{path}: checkpoint meta field '{key}' is {str(data[key])[:80]}; the checkpoint is corrupt")
        if data["class_names"] is not None and not all(isinstance(n, str) for n in data["class_names"]):
            raise UserError(f"{path}: checkpoint meta field 'class_names' is {str(data['class_names'])[:80]}; the checkpoint "
                            f"is corrupt")
        if data["kind"] not in KINDS:
            raise UserError(f"{path}: checkpoint kind '{data['kind']}'; expected one of {', '.join(KINDS)}")
        return cls(**data)


@dataclass
class Checkpoint:
    meta: CheckpointMeta
    model: dict[str, torch.Tensor]
    epoch: int                        # epochs completed
    step: int                         # optimiser steps completed
    training: dict[str, Any] | None   # optimizer / scheduler / scaler state dicts and RNG states, for --resume


def save_checkpoint(path: Path, meta: CheckpointMeta, model: dict[str, torch.Tensor], epoch: int, step: int,
                    training: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (a reader sees the previous file or this one, never a part)."""
    body = {"format": FORMAT, "meta": meta.to_dict(), "model": model, "epoch": epoch, "step": step,
            "training": training}
    atomic_torch_save(Path(path), {**body, "digest": digest(body)})


def load_checkpoint(path: Path, kinds: tuple[str, ...] = KINDS) -> Checkpoint:
    """Read and verify a checkpoint, on CPU. Refuses (one line naming the file) a missing, truncated, changed,
    foreign or older-format file, one holding code, and one whose kind is not in ``kinds``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; pass a checkpoint.pt written by 'rdistill distill' or 'finetune'")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused: it holds Python objects other than tensors and plain values (random "
                        f"bytes, a pickle with code, or a checkpoint of an older rdistill); nothing in it was run. "
                        f"Pass a checkpoint.pt written by this rdistill") from None
    except Exception as err:  # noqa: BLE001  torch's unpickler fails in many ways on a damaged file; none is a bug
        detail = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"{path}: unreadable checkpoint ({detail}); it may be truncated or corrupt; pass a complete "
                        f"checkpoint.pt") from None
    if not isinstance(data, dict) or "format" not in data:
        raise UserError(f"{path}: not an rdistill checkpoint (no format version); pass a checkpoint.pt written by "
                        f"'rdistill distill' or 'finetune'")
    if data["format"] != FORMAT:
        raise UserError(f"{path}: checkpoint format {data['format']!r}, this rdistill reads format {FORMAT}; "
                        f"run the command that made it again with this rdistill")
    if set(data) != {"format", "meta", "model", "epoch", "step", "training", "digest"}:
        raise UserError(f"{path}: not an rdistill checkpoint (keys {', '.join(sorted(map(str, data)))}); pass a "
                        f"checkpoint.pt written by 'rdistill distill' or 'finetune'")
    stored = data.pop("digest")
    if stored != digest(data):
        raise UserError(f"{path}: its content changed after it was written (sha256 mismatch); the file is corrupt, "
                        f"restore it or run the command that made it again")
    meta = CheckpointMeta.from_dict(data["meta"], path)
    if meta.kind not in kinds:
        raise UserError(f"{path}: a '{meta.kind}' checkpoint; this command needs one of: {', '.join(kinds)}")
    for key in ("epoch", "step"):
        value = data[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
            raise UserError(f"{path}: '{key}' is {str(value)[:40]}, not a count of 0 to {MAX_COUNT:,}; the checkpoint "
                            f"is corrupt")
    model = data["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise UserError(f"{path}: its weights are not a mapping of names to tensors; the checkpoint is corrupt")
    training = data["training"]
    if training is not None and (not isinstance(training, dict) or set(training) != TRAINING_KEYS):
        raise UserError(f"{path}: its training state is not a mapping of {', '.join(sorted(TRAINING_KEYS))}; the "
                        f"checkpoint is corrupt")
    return Checkpoint(meta, model, data["epoch"], data["step"], training)


def digest(obj: Any) -> str:
    """sha256 of a nest of dicts, lists, tuples, tensors and plain values (dict keys in sorted order)."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def _update(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            _update(h, key)
            _update(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for item in obj:
            _update(h, item)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def rng_state() -> dict[str, Any]:
    """torch, numpy and Python RNG states as tensors and plain values (what weights-only loading accepts)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
