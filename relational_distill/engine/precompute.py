"""``rdistill precompute``: teacher dense features for every sample, into a validated, resumable store.

A re-run verifies every file against its sha256 and redoes only what is missing or changed; a re-run of a
finished store whose files all verify only checks, and returns the summary it measured before."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..classes import CLASS_NAMES
from ..config import CONFIG_DIR
from ..data.dataset import load_sample
from ..data.fingerprint import dataset_fingerprint
from ..data.nuscenes import CAMERAS, DatasetIndex, camera_list, load_index
from ..data.sim.writer import is_synthetic_town
from ..errors import UserError
from ..interrupt import Interrupted, check as check_interrupt
from ..metrics.structure import sample_per_class, tolerance, uniformity
from ..progress import progress_bar
from ..report import write_result
from ..teachers.store import FeatureStore, Manifest
from .training import resolve_device


def load_prompts(path: Path) -> tuple[list[list[str]], str]:
    """Prompts per class (template x synonym) from a prompts YAML, and the file's content hash."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        templates, classes = data["templates"], data["classes"]
        prompts = [[t.format(name) for name in classes[c] for t in templates] for c in CLASS_NAMES]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a valid prompts file ({err}); it needs 'templates' and 'classes' for all "
                        f"16 classes") from None
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return prompts, digest


class _TeacherAdapter:
    """What precompute needs of a teacher: id, hashes, feature dim, ViT patch size, features and text embeddings."""

    patch: int

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (rows, columns) of an image of ``image_size`` = (width, height) pixels."""
        return image_size[1] // self.patch, image_size[0] // self.patch


class SimClipAdapter(_TeacherAdapter):
    """The simulated teacher behind the common teacher interface."""

    def __init__(self, index: DatasetIndex, config: Path) -> None:
        from ..teachers.sim_clip import SimClipConfig, SimClipTeacher

        self.cfg = SimClipConfig.from_yaml(config)
        self.teacher = SimClipTeacher(self.cfg, index.fine_to_coarse)
        self.teacher_id = self.teacher.teacher_id
        self.weights_hash = self.cfg.digest()
        self.templates_hash = "sim-clip"
        self.dim, self.patch = self.cfg.dim, self.cfg.patch
        self.index = index

    def features(self, samples: list[dict], image_size: tuple[int, int]) -> list[np.ndarray]:
        for s in samples:
            native = tuple(camera_list(s)[0]["image_size"])
            if native != tuple(image_size):
                raise UserError(f"sim-clip reads side-car maps at the town's image size {native[0]}x{native[1]}; "
                                f"pass --image-size {native[0]}x{native[1]}")
        return [self.teacher.sample_features(self.index.dataroot, s) for s in samples]

    def text_embeddings(self) -> torch.Tensor:
        return self.teacher.text_embeddings()


class OpenClipAdapter(_TeacherAdapter):
    """open_clip CLIP with MaskCLIP dense features; images are resized to the teacher input size."""

    def __init__(self, spec: str, index: DatasetIndex, prompts: Path, device: str) -> None:
        from ..teachers.maskclip import load_openclip

        self.model, self.tokenizer, self.weights_hash = load_openclip(spec, device)
        self.teacher_id = spec
        self.class_prompts, self.templates_hash = load_prompts(prompts)
        self.patch = self.model.visual.conv1.kernel_size[0]
        self.dim = self.model.visual.output_dim
        self.index, self.device = index, device

    def features(self, samples: list[dict], image_size: tuple[int, int]) -> list[np.ndarray]:
        from PIL import Image

        from ..teachers.maskclip import dense_features, normalise_images

        images = []
        for s in samples:
            for cam in camera_list(s):
                path = Path(self.index.dataroot) / cam["image"]
                try:
                    img = Image.open(path).convert("RGB").resize(tuple(image_size), Image.BILINEAR)
                except OSError as err:
                    raise UserError(f"{path}: unreadable image ({err}); re-download or regenerate it") from None
                images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        batch = normalise_images(torch.stack(images).to(self.device))
        feats = dense_features(self.model, batch).half().cpu().numpy()
        per = len(CAMERAS)
        return [feats[i * per:(i + 1) * per] for i in range(len(samples))]

    def text_embeddings(self) -> torch.Tensor:
        from ..teachers.maskclip import text_embeddings

        return text_embeddings(self.model, self.tokenizer, self.class_prompts).cpu()


def make_teacher(spec: str, index: DatasetIndex, device: str = "cpu", prompts: Path | None = None,
                 sim_config: Path | None = None):
    if spec == "sim-clip":
        return SimClipAdapter(index, sim_config or CONFIG_DIR / "sim_clip.yaml")
    return OpenClipAdapter(spec, index, prompts or CONFIG_DIR / "prompts.yaml", device)


@dataclass
class PrecomputeConfig:
    dataroot: Path
    out: Path
    teacher: str = "sim-clip"
    version: str = "v1.0-sim"
    image_size: tuple[int, int] = (416, 224)
    device: str = "cpu"
    shard: tuple[int, int] = (0, 1)
    batch_size: int = 1            # samples per forward pass (x 6 cameras)
    summary_per_class: int = 5000  # the Fig. 1 protocol
    prompts: Path | None = None
    sim_config: Path | None = None
    quiet: bool = False


def precompute(cfg: PrecomputeConfig) -> dict:
    """Fill the store; when every sample is present, measure the teacher and write ``summary.json``."""
    start = time.perf_counter()
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size {cfg.batch_size}: must be an integer >= 1")
    resolve_device(cfg.device)
    index = load_index(cfg.dataroot, cfg.version)
    shard_i, shard_n = cfg.shard
    if not 0 <= shard_i < shard_n:
        raise UserError(f"--shard {shard_i}/{shard_n}: write i/n with 0 <= i < n")
    teacher = make_teacher(cfg.teacher, index, cfg.device, cfg.prompts, cfg.sim_config)
    manifest = Manifest(teacher_id=teacher.teacher_id, weights_hash=teacher.weights_hash,
                        image_size=tuple(cfg.image_size), grid=teacher.grid(cfg.image_size), dim=teacher.dim,
                        dataset_version=cfg.version, dataroot=index.dataroot,
                        dataset_fingerprint=dataset_fingerprint(index), templates_hash=teacher.templates_hash,
                        cameras=CAMERAS)
    store = FeatureStore.create(cfg.out, manifest)
    try:
        return _fill(cfg, index, teacher, store, start)
    except Interrupted as stop:
        stop.detail = f"{store.root} keeps every finished sample; run the same command again to finish"
        raise


def _fill(cfg: PrecomputeConfig, index: DatasetIndex, teacher, store: FeatureStore, start: float) -> dict:
    """Write what this shard lacks (or what changed), then, once the store is complete, record every file's hash
    in the manifest and measure the teacher; a complete store whose files all verify keeps its summary."""
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
    result = {"teacher": teacher.teacher_id, "computed": len(todo), "skipped": len(mine) - len(todo),
              "store": str(store.root)}
    done = {s["token"] for s in mine}
    missing = [s["token"] for s in index.samples if s["token"] not in done and not store.is_valid(s["token"])]
    if missing:
        return {**result, "complete": False, "missing": len(missing), "seconds": time.perf_counter() - start}
    changed = store.record_files([s["token"] for s in index.samples])
    previous = _read_summary(store.root / "summary.json")
    if previous is not None and not (changed or todo or redone_text):  # a finished store, verified: only checked
        return {**previous, **result, "complete": True, "seconds": time.perf_counter() - start}
    result.update(teacher_summary(index, store, cfg.summary_per_class, cfg.quiet))
    result.update(complete=True, seconds=time.perf_counter() - start)
    write_result(store.root / "summary.json", result)
    return result


def _read_summary(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("complete") else None


def teacher_summary(index: DatasetIndex, store: FeatureStore, per_class: int = 5000, quiet: bool = False,
                    max_pairs_per_sample: int = 4000, seed: int = 0) -> dict:
    """The teacher's structure on the lidar-paired pixels (Fig. 1 protocol) and its 2D zero-shot accuracy there."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    with progress_bar("teacher summary", len(index.samples), quiet, unit="samples") as bar:
        for sample in index.samples:
            item = load_sample(index, sample, store, max_pairs=max_pairs_per_sample, rng=rng)
            feats.append(item["pair_teacher"])
            labels.append(item["labels"][item["pair_point"]])
            bar.advance()
            check_interrupt()
    q, y = torch.cat(feats), torch.cat(labels)
    _, text = store.text_embeddings()
    labelled = y > 0
    pred = (q[labelled] @ text.T).argmax(1) + 1
    pick = sample_per_class(y, per_class, seed)
    return {"uniformity": uniformity(q[pick], block_size=2048), "tolerance": tolerance(q[pick], y[pick]),
            "zero_shot_pixel_accuracy": float((pred == y[labelled]).double().mean()),
            "summary_features": int(len(pick)), "samples": len(index.samples), "bytes_on_disk": store.bytes_on_disk(),
            "bytes_per_sample": store.bytes_on_disk() / max(len(index.samples), 1),
            "synthetic": is_synthetic_town(index.dataroot)}
