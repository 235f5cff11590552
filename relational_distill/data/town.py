"""What a reader needs to know about a synthetic town (written by ``rdistill make-sim``, relational_distill/sim/),
without importing the generator: its version name, its side-car folder and its split file."""
from __future__ import annotations

from pathlib import Path

TOWN_VERSION = "v1.0-sim"    # the nuScenes table version of a synthetic town
SIDECAR_DIR = "sim_sidecar"  # per-image class and instance maps (read only by sim-clip and the tests)
SPLITS_FILE = "splits.json"  # the town's own scene split (train / val)


def is_synthetic_town(dataroot: str | Path) -> bool:
    """True for a dataset written by ``rdistill make-sim`` (it has the side-car maps); its numbers are synthetic."""
    return (Path(dataroot) / SIDECAR_DIR).is_dir()
