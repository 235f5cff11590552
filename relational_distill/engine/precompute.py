"""``rdistill precompute``: teacher dense features for every sample, into a validated, resumable store.

A re-run verifies every file against its sha256 and redoes only what is missing or changed; a re-run of a
finished store whose files all verify only checks, and returns the summary it measured before."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..classes import CLASS_NAMES
from ..data.dataset import load_sample
from ..data.fingerprint import dataset_fingerprint
from ..data.index import CAMERAS, DatasetIndex, camera_list
from ..data.nuscenes import load_index
from ..data.projection import DEFAULT_MIN_DEPTH
from ..data.superpixels import COMPACTNESS, SuperpixelManifest, SuperpixelStore, sample_superpixels
from ..data.town import TOWN_VERSION, is_synthetic_town
from ..errors import UserError
from ..interrupt import Interrupted, check as check_interrupt
from ..io import folder_lock
from ..metrics.structure import sample_per_class, tolerance, uniformity
from ..metrics.teacher_errors import error_statistics, mean_cosine_between_classes
from ..progress import progress_bar
from ..report import write_result
from ..results import Precomputation, TeacherSummary
from ..scoring import segmentation_result, teacher_confusion
from ..student import zero_shot_labels
from ..teachers.factory import make_teacher
from ..teachers.store import FeatureStore, Manifest
from .runtime import resolve_device


@dataclass
class PrecomputeConfig:
    dataroot: Path
    out: Path
    teacher: str = "sim-clip"
    version: str = TOWN_VERSION
    image_size: tuple[int, int] = (416, 224)
    device: str = "cpu"
    shard: tuple[int, int] = (0, 1)
    batch_size: int = 1            # samples per forward pass (x 6 cameras)
    summary_per_class: int = 5000  # the Fig. 1 protocol
    prompts: Path | None = None
    sim_config: Path | None = None
    activation: str = "auto"       # open_clip MLP activation: auto (from the weights), gelu or quick_gelu
    superpixels: int | None = None  # also compute SLIC superpixels with this many segments per image (SLidR)
    min_depth: float = DEFAULT_MIN_DEPTH  # metres: the pairs the summary and the teacher ceiling are measured on
    quiet: bool = False


def precompute(cfg: PrecomputeConfig) -> Precomputation:
    """Fill the store; when every sample is present, measure the teacher and write ``summary.json``.

    Everything that can be refused (device, teacher, activation, image size) is checked before the store is
    created, and a new store that fails before its first sample is removed again, so no half-made store is left
    behind.
    """
    start = time.perf_counter()
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size {cfg.batch_size}: must be an integer >= 1")
    resolve_device(cfg.device)
    index = load_index(cfg.dataroot, cfg.version)
    shard_i, shard_n = cfg.shard
    if not 0 <= shard_i < shard_n:
        raise UserError(f"--shard {shard_i}/{shard_n}: write i/n with 0 <= i < n")
    if cfg.superpixels is not None and cfg.superpixels < 2:
        raise UserError(f"--superpixels {cfg.superpixels}: give the number of SLIC segments per image, e.g. 150")
    teacher = make_teacher(cfg.teacher, index, cfg.device, cfg.prompts, cfg.sim_config, cfg.activation,
                           tuple(cfg.image_size))
    manifest = Manifest(teacher_id=teacher.teacher_id, weights_hash=teacher.weights_hash,
                        image_size=tuple(cfg.image_size), grid=teacher.grid(cfg.image_size), dim=teacher.dim,
                        dataset_version=cfg.version, dataroot=index.dataroot,
                        dataset_fingerprint=dataset_fingerprint(index), templates_hash=teacher.templates_hash,
                        cameras=CAMERAS, activation=teacher.activation)
    fresh = not (Path(cfg.out) / "manifest.json").exists()
    # one process per shard: a second precompute of the same shard into this store is refused in one line
    with folder_lock(cfg.out, f"feature store's shard {shard_i}/{shard_n}", part=f"shard-{shard_i}-of-{shard_n}"):
        store = FeatureStore.create(cfg.out, manifest)
        try:
            return _fill(cfg, index, teacher, store, start)
        except BaseException as err:
            if fresh:
                store.discard_if_empty()
            if isinstance(err, Interrupted):
                err.detail = (f"{store.root} keeps every finished sample; run the same command again to finish"
                              if (store.root / "manifest.json").exists() else f"nothing was written to {store.root}")
            raise


def _fill(cfg: PrecomputeConfig, index: DatasetIndex, teacher, store: FeatureStore, start: float) -> Precomputation:
    """Write what this shard lacks (or what changed), and the superpixels when asked; then, once the store is
    complete, record every file's hash in the manifest and measure the teacher; a complete store whose files all
    verify keeps its summary."""
    shard_i, shard_n = cfg.shard
    redone_text = store.text_embeddings_problem() is not None
    if redone_text:
        store.write_text_embeddings(list(CLASS_NAMES), teacher.text_embeddings())
    mine = [s for i, s in enumerate(index.samples) if i % shard_n == shard_i]
    todo = [s for s in mine if not store.is_valid(s["token"])]
    with progress_bar(f"precompute {teacher.teacher_id}", len(todo), cfg.quiet, unit="samples") as bar:
        for b in range(0, len(todo), cfg.batch_size):
            chunk = todo[b:b + cfg.batch_size]
            for sample, feats in zip(chunk, teacher.features(chunk, cfg.image_size)):
                store.write(sample["token"], feats)
            bar.advance(len(chunk))
            check_interrupt()
    superpixels = (compute_superpixels(index, mine, store.root, cfg.superpixels, cfg.version, cfg.quiet)
                   if cfg.superpixels else None)

    def outcome(**rest) -> Precomputation:
        return Precomputation(teacher=teacher.teacher_id, computed=len(todo), skipped=len(mine) - len(todo),
                              store=str(store.root), superpixels=superpixels, seconds=time.perf_counter() - start,
                              **rest)

    done = {s["token"] for s in mine}
    missing = [s["token"] for s in index.samples if s["token"] not in done and not store.is_valid(s["token"])]
    if missing:
        return outcome(complete=False, missing=len(missing))
    with folder_lock(store.root, "feature store", wait=True):  # shards finishing at once record it in turn
        changed = store.record_files([s["token"] for s in index.samples])
        previous = _read_summary(store.root / "summary.json")
        if previous is not None and not (changed or todo or redone_text):  # a finished store, verified: only checked
            return outcome(complete=True, summary=previous)
        summary = TeacherSummary(**teacher_summary(index, store, cfg.min_depth, cfg.summary_per_class, cfg.quiet),
                                 **teacher_ceiling(index, store, cfg.min_depth, cfg.quiet))
        result = outcome(complete=True, summary=summary)
        write_result(store.root / "summary.json", result)
        return result


def compute_superpixels(index: DatasetIndex, samples: list[dict], features: Path, segments: int, version: str,
                        quiet: bool = False) -> dict:
    """SLIC superpixels of every camera image of ``samples`` into the superpixel store beside the features
    (resumable: samples whose maps are already there and complete are skipped)."""
    store = SuperpixelStore.create(SuperpixelStore.folder(features, segments),
                                   SuperpixelManifest(segments=segments, compactness=COMPACTNESS,
                                                      dataset_version=version, dataroot=index.dataroot,
                                                      cameras=CAMERAS))
    sizes = {s["token"]: [c["image_size"] for c in camera_list(s)] for s in samples}
    todo = [s for s in samples if not store.is_valid(s["token"], sizes[s["token"]])]
    with progress_bar(f"superpixels ({segments} per image)", len(todo), quiet, unit="samples") as bar:
        for sample in todo:
            store.write(sample["token"], sample_superpixels(index.dataroot, sample, segments))
            bar.advance()
            check_interrupt()
    return {"segments": segments, "computed": len(todo), "skipped": len(samples) - len(todo), "store": str(store.root)}


def _read_summary(path: Path) -> TeacherSummary | None:
    """The summary in a complete store's summary.json; None (measure again) for a missing, broken or older one."""
    try:
        data = json.loads(path.read_text())
        return TeacherSummary.from_json(data) if isinstance(data, dict) and data.get("complete") else None
    except (OSError, ValueError, RecursionError, TypeError):
        return None


def teacher_summary(index: DatasetIndex, store: FeatureStore, min_depth: float, per_class: int = 5000,
                    quiet: bool = False, pairs_per_sample: int = 4000, seed: int = 0) -> dict:
    """The teacher's structure on the lidar-paired pixels (pairs at least ``min_depth`` metres in front of a camera;
    Fig. 1 protocol), its 2D zero-shot accuracy there and how its errors fall (metrics/teacher_errors.py)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    with progress_bar("teacher summary", len(index.samples), quiet, unit="samples") as bar:
        for sample in index.samples:
            item = load_sample(index, sample, store, min_depth, pairs_per_sample=pairs_per_sample, rng=rng)
            feats.append(item["pair_teacher"])
            labels.append(item["labels"][item["pair_point"]])
            bar.advance()
            check_interrupt()
    q, y = torch.cat(feats), torch.cat(labels)
    _, text = store.text_embeddings()
    labelled = y > 0
    pred = zero_shot_labels(q[labelled], text)
    pick = sample_per_class(y, per_class, seed)
    return {"uniformity": uniformity(q[pick], block_size=2048), "tolerance": tolerance(q[pick], y[pick]),
            "mean_cosine_between_classes": mean_cosine_between_classes(q[pick], y[pick]),
            "zero_shot_pixel_accuracy": float((pred == y[labelled]).double().mean()),
            **error_statistics(pred, y[labelled]),
            "summary_features": int(len(pick)), "samples": len(index.samples), "bytes_on_disk": store.bytes_on_disk(),
            "bytes_per_sample": store.bytes_on_disk() / max(len(index.samples), 1),
            "min_depth": min_depth, "synthetic": is_synthetic_town(index.dataroot)}


def teacher_ceiling(index: DatasetIndex, store: FeatureStore, min_depth: float, quiet: bool = False,
                    split: str = "val") -> dict:
    """``teacher_zero_shot_miou``: the teacher's zero-shot mIoU at the lidar-paired points of ``split`` (what a
    student is measured against), with its per-class IoU; None with a reason when the split has no labels."""
    samples = [s for s in index.split(split) if index.has_labels(s)]
    if not samples:
        return {"teacher_zero_shot_miou": None,
                "teacher_zero_shot_note": f"no labelled samples in split '{split}'"}
    res = segmentation_result(teacher_confusion(index, samples, store, min_depth, quiet), index)
    note = {"teacher_zero_shot_note": res.miou_null_reason} if res.miou is None else {}
    return {"teacher_zero_shot_miou": res.miou, "teacher_zero_shot_split": split,
            "teacher_zero_shot_per_class_iou": res.per_class_iou, **note}

