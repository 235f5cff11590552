"""The student as a whole: built from a checkpoint's meta, loaded, run on one point cloud, and its labels.

Zero-shot labels are the argmax of cosine similarity against the 16 text embeddings (docs/teachers.md); a
finetuned student labels through its head. Labels are 1..C (0 is ignore, never predicted).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import CheckpointMeta, load_checkpoint
from .errors import UserError
from .data.dataset import collate
from .models.sparse_unet import Student
from .models.voxels import VoxelConfig, voxelize_batch


@dataclass(frozen=True)
class VoxelisingCollate:
    """The training batch: data/dataset.py's ``collate`` plus the batch's voxelisation for the student
    (``batch["voxels"]``), so it is made in the DataLoader's workers rather than in the training step."""

    voxel: VoxelConfig

    def __call__(self, items: list[dict]) -> dict:
        out = collate(items)
        out["voxels"] = voxelize_batch(out["points"], out["batch"], self.voxel)
        return out


def voxel_config(meta: CheckpointMeta, checkpoint: Path) -> VoxelConfig:
    """The voxelisation a checkpoint's ``meta`` records, checked."""
    try:
        return VoxelConfig(**meta.voxel)
    except (TypeError, ValueError) as err:
        raise UserError(f"{checkpoint}: its voxel settings {str(meta.voxel)[:120]} are not valid ({err}); the "
                        f"checkpoint is corrupt") from None


def build_student(meta: CheckpointMeta, checkpoint: Path = Path("checkpoint.pt")) -> Student:
    """The student a checkpoint's ``meta`` describes (weights not loaded)."""
    try:
        return Student(meta.out_dim, meta.preset, voxel_config(meta, checkpoint))
    except (KeyError, ValueError, RuntimeError) as err:  # an unknown preset, an impossible width
        raise UserError(f"{checkpoint}: the student its meta describes cannot be built ({err}); the checkpoint is "
                        f"corrupt") from None


def load_weights(module: torch.nn.Module, weights: dict, checkpoint: Path) -> None:
    """``module.load_state_dict(weights)``; weights that do not fit are a one-line :class:`UserError`."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise UserError(f"{checkpoint}: its weights do not fit the student its meta describes "
                        f"({(str(err).splitlines() or [''])[0][:160]}); the checkpoint is corrupt") from None


def load_student(checkpoint: Path, device: str) -> tuple[Student, CheckpointMeta]:
    """(model in eval mode on ``device``, the checkpoint's meta)."""
    state = load_checkpoint(checkpoint)
    model = build_student(state.meta, checkpoint)
    load_weights(model, state.model, checkpoint)
    return model.to(device).eval(), state.meta


def require_same_classes(checkpoint: Path, meta: CheckpointMeta, index) -> None:
    """Refuse, in one line, to label ``index``'s dataset with a checkpoint whose classes are another dataset's: a
    distilled checkpoint labels nuScenes' 16 classes zero-shot, a finetuned head the classes it was trained on."""
    classes_of = "nuscenes" if meta.kind == "distill" else meta.dataset
    if index.dataset != classes_of:
        raise UserError(f"{checkpoint}: predicts the classes of {classes_of}, but {index.dataroot} is {index.dataset}; "
                        f"finetune it there first with 'rdistill finetune CHECKPOINT --dataroot {index.dataroot}'")
    if meta.kind != "distill" and meta.class_names is not None and list(meta.class_names) != list(index.class_names):
        raise UserError(f"{checkpoint}: its head predicts the classes {', '.join(meta.class_names)}, not those of "
                        f"{index.dataroot} ({', '.join(index.class_names)}); finetune it there first")


def zero_shot_labels(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N,) classes 1..C: the text embedding (C, D) nearest each L2-normalised feature (N, D) in cosine."""
    return (features @ text.T).argmax(1) + 1


@torch.no_grad()
def point_outputs(model: Student, points: torch.Tensor) -> torch.Tensor:
    """(N, out_dim) float32 outputs of the student for one point cloud (N, 5)."""
    return model(points, torch.zeros(len(points), dtype=torch.long, device=points.device)).float()


@torch.no_grad()
def predict(model: Student, meta: CheckpointMeta, points: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """(N,) predicted classes in 1..C for one point cloud (C = 16 zero-shot)."""
    out = point_outputs(model, points)
    if meta.kind == "distill":
        return zero_shot_labels(F.normalize(out, dim=1), text)
    return out.argmax(1) + 1
