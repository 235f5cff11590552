"""``rdistill analyze``: the structure of the distilled 3D features against the teacher's 2D features
(the paper's Fig. 1 protocol): uniformity, tolerance, modality gap, and a PCA plot coloured by class."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..classes import CLASS_NAMES
from ..data.dataset import load_sample
from ..data.fingerprint import dataset_fingerprint
from ..data.nuscenes import load_index
from ..data.projection import DEFAULT_MIN_DEPTH
from ..data.town import is_synthetic_town
from ..errors import UserError
from ..metrics.structure import modality_gap, sample_per_class, tolerance, uniformity
from ..progress import progress_bar
from ..report import save_figure, write_result
from ..results import Analysis
from ..student import load_student, point_outputs
from ..teachers.store import FeatureStore
from .runtime import resolve_device

METRICS = ("uniformity", "tolerance", "gap")
VALUES = ("uniformity_3d", "uniformity_2d", "tolerance_3d", "tolerance_2d", "modality_gap")  # what METRICS fill


@torch.no_grad()
def paired_features(checkpoint: Path, split: str = "val", device: str = "cpu", pairs_per_sample: int = 4000,
                    quiet: bool = False, seed: int = 0, features: Path | None = None, dataroot: Path | None = None,
                    version: str | None = None):
    """Student 3D features K, teacher 2D features Q of the same lidar-pixel pairs, the points' labels and the
    checkpoint's meta. Pairs are those the checkpoint was distilled with (its ``min_depth``); ``features`` /
    ``dataroot`` / ``version`` override what the checkpoint records."""
    model, meta = load_student(checkpoint, device)
    if meta.kind != "distill":
        raise UserError(f"{checkpoint}: analyze compares distilled features with the teacher's; this checkpoint is "
                        f"'{meta.kind}'")
    index = load_index(dataroot or meta.dataroot, version or meta.version)
    store = FeatureStore.open(features or meta.features, teacher=meta.teacher_id, version=index.version,
                              dataset=(index.dataroot, dataset_fingerprint(index)))
    min_depth = meta.config.get("min_depth", DEFAULT_MIN_DEPTH)
    rng = np.random.default_rng(seed)
    ks, qs, ys = [], [], []
    samples = index.split(split)
    if not samples:
        raise UserError(f"{index.dataroot}: no samples in split '{split}'")
    index.require_labels(samples, f"analyzing split '{split}'")
    with progress_bar(f"features ({split})", len(samples), quiet, unit="samples") as bar:
        for sample in samples:
            item = load_sample(index, sample, store, min_depth, pairs_per_sample=pairs_per_sample, rng=rng)
            k = point_outputs(model, item["points"].to(device))
            ks.append(F.normalize(k[item["pair_point"].to(device)], dim=1).cpu())
            qs.append(item["pair_teacher"])
            ys.append(item["labels"][item["pair_point"]])
            bar.advance()
    return torch.cat(ks), torch.cat(qs), torch.cat(ys), meta


def analyze(checkpoint: Path, *, metrics: tuple[str, ...] = METRICS, per_class: int = 5000, split: str = "val",
            out: Path | None = None, device: str = "cpu", quiet: bool = False, plot: bool = True,
            features: Path | None = None, dataroot: Path | None = None, version: str | None = None) -> Analysis:
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise UserError(f"--metrics: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
    device = resolve_device(device)
    k, q, y, meta = paired_features(checkpoint, split, device, quiet=quiet, features=features, dataroot=dataroot,
                                    version=version)
    pick = sample_per_class(y, per_class)
    k, q, y = k[pick], q[pick], y[pick]
    values = {}
    if "uniformity" in metrics:
        values.update(uniformity_3d=uniformity(k, block_size=4096), uniformity_2d=uniformity(q, block_size=4096))
    if "tolerance" in metrics:
        values.update(tolerance_3d=tolerance(k, y), tolerance_2d=tolerance(q, y))
    if "gap" in metrics:
        values.update(modality_gap=modality_gap(k, q))
    null_reasons = {key: "not asked for (--metrics)" for key in VALUES if key not in values}
    for key, value in values.items():
        if math.isnan(value):  # JSON has no NaN: null, with the reason
            values[key] = None
            null_reasons[key] = "undefined on these features (too few features per class)"
    result = Analysis(checkpoint=str(checkpoint), features=str(features or meta.features), split=split,
                      teacher=meta.teacher_id, synthetic=is_synthetic_town(dataroot or meta.dataroot),
                      metrics=list(metrics),
                      pairs_per_class=per_class, pairs=int(len(pick)),
                      class_counts={CLASS_NAMES[int(c) - 1]: int((y == c).sum()) for c in torch.unique(y)},
                      **values, null_reasons=null_reasons)
    out = Path(out) if out else Path(checkpoint).parent / "analysis"
    if plot:
        result.plot = str(pca_plot(k, q, y, out / "analysis.png", result))
    write_result(out / "analysis.json", result)
    return result


def pca_plot(k: torch.Tensor, q: torch.Tensor, y: torch.Tensor, path: Path, numbers: Analysis,
             max_points: int = 6000) -> Path:
    """Both feature sets projected on the first two principal components of their union, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    sel = torch.randperm(len(k), generator=g)[:max_points]
    both = torch.cat([k[sel], q[sel]]).double()
    mean = both.mean(0)
    _, _, v = torch.linalg.svd(both - mean, full_matrices=False)
    proj = ((both - mean) @ v[:2].T).numpy()
    n = len(sel)
    colours = plt.get_cmap("tab20")(np.arange(len(CLASS_NAMES)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharex=True, sharey=True)
    for ax, part, title in ((axes[0], proj[:n], "3D student features"), (axes[1], proj[n:], "2D teacher features")):
        labels = y[sel].numpy()
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(part[m, 0], part[m, 1], s=3, color=colours[c - 1], label=CLASS_NAMES[c - 1])
        ax.set_title(title)
        ax.set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    caption = []
    if numbers.uniformity_3d is not None and numbers.uniformity_2d is not None:
        caption.append(f"U 3D {numbers.uniformity_3d:.3f} / 2D {numbers.uniformity_2d:.3f}")
    if numbers.tolerance_3d is not None and numbers.tolerance_2d is not None:
        caption.append(f"T 3D {numbers.tolerance_3d:.3f} / 2D {numbers.tolerance_2d:.3f}")
    if numbers.modality_gap is not None:
        caption.append(f"gap {numbers.modality_gap:.3f}")
    synthetic = " (synthetic town)" if numbers.synthetic else ""
    fig.suptitle("PCA of paired features" + synthetic + "\n" + ", ".join(caption))
    axes[1].legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
