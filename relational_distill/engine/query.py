"""``rdistill query``: how much each point of a sample answers a text, in the teacher's CLIP space.

The features are a distilled checkpoint's (every point, L2-normalised) or, with a feature store alone, the
teacher's at the paired pixels (a point seen by two cameras takes its first pair, data/nuscenes.py ``CAMERAS``
order, as ``rdistill render``). The texts are embedded by the teacher's own text tower (teachers/queries.py); a
point's score for a query is the cosine of its feature and the query's embedding. With several queries, each
point also gets the query it answers most (an open-vocabulary labelling with the user's own class list).

``query.npz`` (numpy's format, no pickles) holds ``scores`` (N, Q) float32 cosines, row i for point i of the
sample's lidar file (NaN for a point without a feature: an unpaired point, for the teacher), ``best`` (N,) int64
the argmax query (-1 without a feature) and ``queries`` (Q,) the query names; ``query.json`` records what made
it, and ``bev.png`` / ``cam_<CAMERA>.png`` draw each query's scores as a heat map and the labelling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import load_sample
from ..data.datasets import open_index
from ..data.images import read_rgb
from ..data.projection import DEFAULT_MIN_DEPTH
from ..data.town import is_synthetic_town
from ..errors import UserError
from ..io import atomic_write
from ..progress import progress_bar
from ..report import write_result
from ..results import QueryAnswer
from ..student import load_student, point_outputs
from ..teachers.queries import embed_queries, read_queries
from ..teachers.store import FeatureStore
from .render import (NO_PREDICTION, bev_order, camera_order, camera_pairs, draw_bev, draw_camera,
                     find_sample, open_teacher, teacher_at_pairs)
from .runtime import resolve_device

HEAT_MAP = "viridis"     # low score dark, high score bright


def label_colors(count: int) -> np.ndarray:
    """(count, 3) float RGB of the argmax labelling: tab10 for up to 10 queries, else tab20 (repeating)."""
    import matplotlib

    table = np.array(matplotlib.colormaps["tab10" if count <= 10 else "tab20"].colors)
    return table[np.arange(count) % len(table)]


def point_scores(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N, Q) cosine of each feature (N, D; rows of NaN stay NaN) and each query embedding (Q, D)."""
    return F.normalize(features.float(), dim=1) @ F.normalize(text.float(), dim=1).T


def _features(checkpoint: Path | None, features: Path | None, dataroot: Path | None, version: str | None,
              dataset: str | None, device: str):
    """(index, store, mode, the student's features of a point cloud (None for the teacher), what to record)."""
    if checkpoint is None and features is None:
        raise UserError("query: give a distilled checkpoint.pt, or --features STORE alone for the teacher's features "
                        "at the paired points")
    if checkpoint is None:
        store, index = open_teacher(features, dataroot, version)
        return index, store, "teacher", None, {"features": str(features)}
    model, meta = load_student(checkpoint, device)
    if meta.kind != "distill":
        raise UserError(f"{checkpoint}: a '{meta.kind}' checkpoint outputs class scores, not CLIP-space features; "
                        f"query its distilled checkpoint, or --features STORE for the teacher")
    store = FeatureStore.open(features or meta.features, teacher=meta.teacher_id)
    index = open_index(dataroot or meta.dataroot, version or meta.version, dataset)

    def student(points: torch.Tensor) -> torch.Tensor:
        return F.normalize(point_outputs(model, points.to(device)), dim=1).cpu()

    return index, store, "student", student, {"checkpoint": str(checkpoint), "features": str(store.root)}


def query(checkpoint: Path | None = None, *, texts: list[str], out: Path, classes: Path | None = None,
          features: Path | None = None, dataroot: Path | None = None, version: str | None = None,
          dataset: str | None = None, split: str = "val", sample: str = "0", prompts: Path | None = None,
          device: str = "cpu", min_depth: float = DEFAULT_MIN_DEPTH, quiet: bool = False) -> QueryAnswer:
    """Score one sample's points against ``texts`` and the queries of the YAML ``classes`` (name -> synonyms);
    write query.npz, query.json and the PNGs into ``out``; return what query.json holds."""
    queries = read_queries(texts, classes)  # refuse an empty or broken query before loading anything
    device = resolve_device(device)
    index, store, mode, student, record = _features(checkpoint, features, dataroot, version, dataset, device)
    text, how = embed_queries(queries, store, prompts, device)
    rec = find_sample(index, str(sample), split)
    item = load_sample(index, rec)
    points = item["points"]
    cameras, point_idx, cam_idx, uv = camera_pairs(points[:, :3].numpy(), rec, min_depth)
    if student is None:
        teacher, first_pair = teacher_at_pairs(store, rec, cameras, point_idx, cam_idx, uv)
        feats = torch.full((len(points), teacher.shape[1]), float("nan"))
        feats[point_idx[first_pair]] = teacher[first_pair].float()
        pair_feats = teacher
    else:
        feats = student(points)
        pair_feats = feats[point_idx]
    scores = point_scores(feats, text).numpy()
    pair_scores = point_scores(pair_feats, text).numpy()
    best = np.where(np.isnan(scores).any(1), -1, np.nan_to_num(scores, nan=-np.inf).argmax(1))
    names = list(queries)
    out = Path(out)
    atomic_write(out / "query.npz", lambda f: np.savez(f, scores=scores.astype(np.float32), best=best.astype(np.int64),
                                                        queries=np.array(names)))
    title = (f"{'synthetic town, ' if is_synthetic_town(index.dataroot) else ''}"
             f"{'distilled student' if mode == 'student' else 'teacher at the paired pixels'}: "
             f"{rec['scene']}, sample {rec['token']}")
    scored = ~np.isnan(scores[:, 0])
    result = QueryAnswer(
        mode=mode, **record, **how, dataset=index.dataset, dataroot=index.dataroot, split=split, sample=rec["token"],
        scene=rec["scene"], points=len(points), points_scored=int(scored.sum()), min_depth=min_depth,
        synthetic=is_synthetic_town(index.dataroot),
        queries={n: {"synonyms": queries[n], "mean_score": float(scores[scored, q].mean()) if scored.any() else None,
                     "max_score": float(scores[scored, q].max()) if scored.any() else None,
                     "points_answering_most": int((best == q).sum())} for q, n in enumerate(names)})
    files: dict = {"scores": str(out / "query.npz"), "cameras": {}}
    with progress_bar("query", 1 + len(cameras), quiet, unit="figures") as bar:
        files["bev"] = str(draw_bev(out / "bev.png", points.numpy(), _panels(scores, best, names,
                                                                                bev_order(points.numpy())),
                                    _handles(names, student is None), title))
        bar.advance()
        for cam in cameras:
            image = read_rgb(Path(index.dataroot) / cam["image"], cam["image_size"])
            s = pair_scores[cam["pairs"]]
            panels = _panels(s, s.argmax(1) if len(s) else np.zeros(0, np.int64), names,
                             camera_order(points[cam["point_index"], :3].numpy()))
            files["cameras"][cam["name"]] = str(draw_camera(out / f"cam_{cam['name']}.png", image, cam["uv"], panels,
                                                            _handles(names, student is None),
                                                            f"{cam['name']}: {title}"))
            bar.advance()
    files["json"] = str(out / "query.json")
    result.files = files
    write_result(out / "query.json", result)
    return result


def _panels(scores: np.ndarray, best: np.ndarray, names: list[str], order: np.ndarray) -> list:
    """One heat-map panel per query (its scores from its own 2nd to 98th percentile, dark to bright) and, for
    several queries, the labelling panel; points without a score are grey."""
    import matplotlib

    heat = matplotlib.colormaps[HEAT_MAP]
    panels = []
    for q, name in enumerate(names):
        s = scores[:, q]
        ok = ~np.isnan(s)
        low, high = (np.percentile(s[ok], [2, 98]) if ok.any() else (0.0, 1.0))
        rgb = np.tile(np.array(NO_PREDICTION), (len(s), 1))
        rgb[ok] = heat(np.clip((s[ok] - low) / max(high - low, 1e-6), 0, 1))[:, :3]
        panels.append((f"'{name}': cosine {low:.2f} (dark) to {high:.2f} (bright)", rgb,
                       order[np.argsort(np.nan_to_num(s[order], nan=-np.inf), kind="stable")], False))
    if len(names) > 1:
        colors = label_colors(len(names))
        rgb = np.tile(np.array(NO_PREDICTION), (len(best), 1))
        rgb[best >= 0] = colors[best[best >= 0]]
        panels.append(("the query each point answers most", rgb, order, False))
    return panels


def _handles(names: list[str], teacher: bool) -> list:
    from matplotlib.patches import Patch

    handles = [Patch(color=NO_PREDICTION, label="no feature (unpaired point)")] if teacher else []
    if len(names) > 1:
        handles += [Patch(color=c, label=name) for c, name in zip(label_colors(len(names)), names)]
    return handles

