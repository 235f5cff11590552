"""Which scenes each command uses: the few-shot rules of SLidR (nuScenes: scenes; SemanticKITTI: frames) and the
label policy of nuScenes versions.

See docs/splits.md for the rules and their sources.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import UserError
from .index import DatasetIndex

UNLABELLED_VERSIONS = ("v1.0-test",)  # nuScenes' held-out test scenes: no lidarseg labels are published


def few_shot_step(fraction: float) -> int:
    """k = round(1 / fraction): 0.01, 0.05, 0.1, 0.25, 1.0 -> 100, 20, 10, 4, 1."""
    return max(1, round(1 / fraction))


def few_shot_scenes(scene_table: Sequence[str], train_scenes: Iterable[str], k: int) -> list[str]:
    """SLidR's few-shot rule: walk the scene table in its order, count the training scenes from 1 and keep those
    whose count is a multiple of ``k``.

    Args:
        scene_table: scene names in the order of the dataset's scene table (the devkit's ``nusc.scene``).
        train_scenes: names of the training split.
        k: keep one training scene in ``k``.

    Returns:
        the kept names, in scene-table order (empty when there are fewer than ``k`` training scenes).
    """
    train = set(train_scenes)
    kept, count = [], 0
    for name in scene_table:
        if name in train:
            count += 1
            if count % k == 0:
                kept.append(name)
    return kept


def few_shot_selection(scene_table: Sequence[str], train_scenes: Iterable[str], fraction: float
                       ) -> tuple[list[str], str]:
    """The scenes a few-shot run trains on, and the rule that chose them, in words.

    :func:`few_shot_scenes` with k = :func:`few_shot_step` (``fraction``); a dataset with fewer than k training
    scenes (the synthetic town, v1.0-mini) would keep none, so it keeps its first training scene in table order
    instead, and the rule says so.
    """
    train = set(train_scenes)
    k = few_shot_step(fraction)
    kept = few_shot_scenes(scene_table, train, k)
    if kept:
        return kept, f"SLidR: training scenes counted in scene-table order, those whose count is a multiple of {k}"
    first = [name for name in scene_table if name in train][:1]
    if not first:
        raise UserError("no training scenes in the scene table; check the dataset's splits")
    return first, (f"SLidR with k = {k} keeps none of the {len(train)} training scenes; kept the first training "
                   f"scene in scene-table order")


def few_shot_frames(samples: list[dict], fraction: float) -> list[dict]:
    """Every k-th frame of the sorted training list, k = :func:`few_shot_step` (``fraction``), starting with the
    first (SLidR's SemanticKITTI rule: 1 % = every 100th frame; docs/splits.md)."""
    return sorted(samples, key=lambda s: s["token"])[::few_shot_step(fraction)]


def few_shot_samples(index: DatasetIndex, fraction: float) -> tuple[list[dict], dict]:
    """The training samples a few-shot run uses, and what ``finetune.json`` records about them.

    nuScenes (and the synthetic town): :func:`few_shot_selection` on the index's scene table, recorded as
    ``train_scenes`` (names, scene-table order) and ``few_shot_rule``. SemanticKITTI: :func:`few_shot_frames`,
    recorded as ``train_frames`` (sample tokens ``NN/NNNNNN``) and ``few_shot_rule``.
    """
    train = index.split("train")
    if index.dataset == "semantickitti":
        samples = few_shot_frames(train, fraction)
        rule = (f"SLidR (SemanticKITTI): every {few_shot_step(fraction)}-th frame of the sorted training list, "
                f"starting with the first")
        return samples, {"train_frames": [s["token"] for s in samples], "few_shot_rule": rule}
    if not train:
        return [], {"train_scenes": [], "few_shot_rule": "no training scenes"}
    scenes, rule = few_shot_selection(index.scenes, {s["scene"] for s in train}, fraction)
    kept = set(scenes)
    return [s for s in train if s["scene"] in kept], {"train_scenes": scenes, "few_shot_rule": rule}


def require_labels(version: str, command: str, alternative: str | None = None) -> None:
    """Refuse, in one line, to ``command`` (finetune, evaluate) on a version that has no labels; ``alternative``
    names another way out besides a labelled version (evaluate: ``--save-predictions``)."""
    if version in UNLABELLED_VERSIONS:
        hint = "pass --version v1.0-trainval (or v1.0-mini)" + (f", or {alternative}" if alternative else "")
        raise UserError(f"--version {version}: nuScenes' test scenes have no labels, so {command} cannot use them; "
                        f"{hint}")


def distill_samples(index: DatasetIndex, use_test_scenes: bool = False) -> list[dict]:
    """The samples distillation trains on: the training split, or nuScenes' test scenes when asked explicitly
    (``use_test_scenes``; distillation needs no labels, but the test scenes are the benchmark's held-out set)."""
    if index.version in UNLABELLED_VERSIONS:
        if not use_test_scenes:
            raise UserError(f"--version {index.version}: these are nuScenes' held-out test scenes; distill on them "
                            f"only on purpose, with --use-test-scenes")
        return index.split("test")
    if use_test_scenes:
        raise UserError(f"--use-test-scenes: only for --version {UNLABELLED_VERSIONS[0]} (this is '{index.version}')")
    return index.split("train")
