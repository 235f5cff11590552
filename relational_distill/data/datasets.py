"""Which dataset a dataroot holds, and its compact index: nuScenes (real or the synthetic town) or SemanticKITTI.

The two layouts are told apart by their folders (docs/datasets.md): a nuScenes dataroot holds a table
folder (``v1.0-*/sample.json``), a SemanticKITTI one ``sequences/``. ``dataset`` forces the choice.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .index import DatasetIndex
from .nuscenes import load_index
from .semantickitti import build_index as build_semantickitti_index, is_semantickitti

DATASETS = ("nuscenes", "semantickitti")


def detect_dataset(dataroot: Path, version: str) -> str:
    """``nuscenes`` or ``semantickitti`` from the folder layout; a one-line :class:`UserError` for neither."""
    root = Path(dataroot)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; pass a nuScenes dataroot (with '{version}/' tables) or a "
                        f"SemanticKITTI one (with 'sequences/'), or make one with 'rdistill make-sim {root}'")
    if is_semantickitti(root):
        return "semantickitti"
    if (root / version).is_dir() or any((p / "sample.json").exists() for p in root.iterdir() if p.is_dir()):
        return "nuscenes"
    raise UserError(f"{root}: neither a nuScenes dataroot (no '{version}/' table folder) nor a SemanticKITTI one "
                    f"(no 'sequences/' folder); pass the folder that holds one of them")


def open_index(dataroot: Path, version: str, dataset: str | None = None) -> DatasetIndex:
    """The compact index of ``dataroot``; ``dataset`` (nuscenes or semantickitti) overrides detection."""
    if dataset is not None and dataset not in DATASETS:
        raise UserError(f"--dataset {dataset}: choose one of {', '.join(DATASETS)}")
    dataset = dataset or detect_dataset(dataroot, version)
    if dataset == "semantickitti":
        return build_semantickitti_index(dataroot)
    return load_index(dataroot, version)
