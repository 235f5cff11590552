"""``rdistill render``: one sample drawn as PNGs, and the plots of an evaluation result.

A sample is drawn from above (``bev.png``: x / y in metres in the lidar frame) and in every camera
(``cam_<CAMERA>.png``: the image with the paired points at their pixels, the pairs of data/projection.py, which are
the devkit's), each as ground truth, prediction and error, in the dataset's own class colours: nuScenes-lidarseg's
16-class colormap from the devkit, SemanticKITTI's official colour map (data/semantic_kitti.yaml). The prediction
is a checkpoint's (zero-shot for a distilled one, its head for a finetuned one) or, with a feature store alone, the
teacher's own zero-shot label at each paired pixel.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..classes import fine_category_names
from ..data.dataset import load_sample
from ..data.datasets import open_index
from ..data.fingerprint import dataset_fingerprint
from ..data.images import read_rgb
from ..data.index import DatasetIndex, camera_list
from ..data.projection import DEFAULT_MIN_DEPTH, pair_points, sample_at_pixels
from ..data.semantickitti import learning_map
from ..data.town import is_synthetic_town
from ..errors import UserError
from ..metrics.segmentation import confusion_matrix
from ..progress import progress_bar
from ..report import save_figure, write_result
from ..results import Evaluation, Rendering, Score
from ..scoring import segmentation_result
from ..student import load_student, predict, require_same_classes, zero_shot_labels
from ..teachers.store import FeatureStore
from .runtime import resolve_device

DPI = 128                # a power of two: every size in pixels / DPI is exact, so each PNG has its planned size
CAMERA_PANEL_PX = 640    # width of one camera panel; its height keeps the image's aspect
BEV_PANEL_PX = 480       # side of one bird's-eye-view panel
TITLE_PX = 60            # band above the panels: the figure's title and the panels' titles
LEGEND_PX = 64           # band below the camera panels: two rows of legend
MARGIN_PX, GAP_PX = 8, 8
BEV_LEFT_PX, BEV_BOTTOM_PX, BEV_GAP_PX, BEV_LEGEND_PX = 64, 52, 28, 220
# error panels: right and wrong among points scored (label and prediction both set), and the rest
ERROR_COLORS = {"correct": (0.45, 0.45, 0.45), "wrong": (0.86, 0.08, 0.08), "ignore": (0.85, 0.85, 0.85)}
NO_PREDICTION = (0.85, 0.85, 0.85)  # points without a prediction: unpaired points, for the teacher


def class_colors(dataset: str) -> np.ndarray:
    """(C + 1, 3) uint8 RGB colour of classes 0..C (0 = ignore) in the dataset's own convention.

    nuScenes: the devkit's 16-class colormap (``LidarsegClassMapper.coarse_colormap``, the colour of each class's
    main fine category in ``get_colormap``), black for ignore. SemanticKITTI: the official colour of each class's raw
    id (``LearningMap.class_colors``).
    """
    if dataset == "semantickitti":
        return learning_map().class_colors()
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    # the mapper reads only the fine name -> index table of a NuScenes object: the devkit's own category order
    mapper = LidarsegClassMapper(SimpleNamespace(
        lidarseg_name2idx_mapping={name: i for i, name in enumerate(fine_category_names())}))
    index = mapper.coarse_name_2_coarse_idx_mapping
    colors = np.zeros((len(index), 3), np.uint8)
    for name, rgb in mapper.coarse_colormap.items():
        colors[index[name]] = rgb
    return colors


def find_sample(index: DatasetIndex, key: str, split: str) -> dict:
    """The sample ``key`` names: a sample token, else a scene name (its first sample in time), else an integer
    index into ``split``; anything else is a one-line :class:`UserError`."""
    for sample in index.samples:
        if sample["token"] == key:
            return sample
    for sample in index.samples:  # samples are in time order within a scene
        if sample["scene"] == key:
            return sample
    samples = index.split(split)
    if key.isdigit() and int(key) < len(samples):
        return samples[int(key)]
    first = index.scenes[0] if index.scenes else "SCENE"
    raise UserError(f"--sample {key}: no sample token, scene name or index into split '{split}' (0-"
                    f"{len(samples) - 1}) of {index.dataroot}; pass one, e.g. --sample 0 or --sample {first}"
                    if samples else f"--sample {key}: no sample token or scene name of {index.dataroot}, and split "
                                    f"'{split}' is empty; pass a token, a scene name, or --split with samples")


def camera_pairs(points_xyz: np.ndarray, sample: dict, min_depth: float = DEFAULT_MIN_DEPTH
                 ) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """The overlay of the points ``points_xyz`` (N, 3, metres, lidar frame) on the cameras of ``sample``: the pairs
    of :func:`pair_points` (the devkit's rule), point_index (M,), camera_index (M,) and uv (M, 2) pixels (u right,
    v down, pixel centres on integers), and per camera (data/nuscenes.py ``camera_list`` order) its entry with
    ``pairs`` (M_c,) indices into those M pairs, ``point_index`` (M_c,) and ``uv`` (M_c, 2)."""
    cams = camera_list(sample)
    if not cams:  # a SemanticKITTI sequence without image_2
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2))
    point_idx, cam_idx, uv = pair_points(points_xyz, cams, min_depth)
    per_camera = []
    for c, cam in enumerate(cams):
        pairs = np.nonzero(cam_idx == c)[0]
        per_camera.append({**cam, "pairs": pairs, "point_index": point_idx[pairs], "uv": uv[pairs]})
    return per_camera, point_idx, cam_idx, uv


def open_teacher(features: Path, dataroot: Path | None, version: str | None) -> tuple[FeatureStore, DatasetIndex]:
    """A feature store given alone and the dataset it was made for (or ``dataroot`` / ``version``), refused in one
    line if the store does not fit that dataset's current state."""
    store = FeatureStore.open(features)
    index = open_index(dataroot or store.manifest.dataroot, version or store.manifest.dataset_version, "nuscenes")
    store.require_dataset(index.dataroot, dataset_fingerprint(index))
    return store, index


def teacher_at_pairs(store: FeatureStore, sample: dict, cameras: list[dict], point_idx: np.ndarray,
                     cam_idx: np.ndarray, uv: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The teacher's features (M, D) at the pairs of :func:`camera_pairs`, and the index of each paired point's
    first pair (:data:`CAMERAS` order: what a point seen by two cameras takes)."""
    features = sample_at_pixels(torch.from_numpy(store.read(sample["token"])), torch.from_numpy(cam_idx),
                                torch.from_numpy(uv), [c["image_size"] for c in cameras])
    return features, np.unique(point_idx, return_index=True)[1]


def _predictor(checkpoint: Path | None, features: Path | None, dataroot: Path | None, version: str | None,
               dataset: str | None, device: str):
    """(index, mode, predict_points or None, store or None, text (C, D) or None, what to record): what draws
    the prediction; a one-line :class:`UserError` for a checkpoint or store that does not fit the data."""
    if checkpoint is None and features is None:
        raise UserError("render: give a checkpoint.pt (distilled: zero-shot; finetuned: its head), or --features "
                        "STORE alone for the teacher's own zero-shot labels")
    if checkpoint is None:  # the teacher at its paired pixels
        store, index = open_teacher(features, dataroot, version)
        return index, "teacher zero-shot", None, store, store.text_embeddings()[1], {"features": str(features)}
    model, meta = load_student(checkpoint, device)
    if meta.kind != "distill" and features is not None:
        raise UserError(f"{checkpoint}: a '{meta.kind}' checkpoint labels through its head and needs no --features; "
                        f"drop it, or pass --features alone for the teacher's labels")
    index = open_index(dataroot or meta.dataroot, version or meta.version, dataset)
    zero_shot = meta.kind == "distill"
    require_same_classes(checkpoint, meta, index)
    text, record = None, {"checkpoint": str(checkpoint)}
    if zero_shot:
        store = FeatureStore.open(features or meta.features, teacher=meta.teacher_id)
        text = store.text_embeddings()[1].to(device)
        record["features"] = str(store.root)

    def predict_points(points: torch.Tensor) -> np.ndarray:
        return predict(model, meta, points.to(device), text).cpu().numpy()

    return index, "zero-shot" if zero_shot else "head", predict_points, None, text, record


def render(checkpoint: Path | None = None, *, out: Path, features: Path | None = None, dataroot: Path | None = None,
           version: str | None = None, dataset: str | None = None, split: str = "val", sample: str = "0",
           device: str = "cpu", min_depth: float = DEFAULT_MIN_DEPTH, quiet: bool = False) -> Rendering:
    """Draw one sample into ``out``: ``bev.png``, ``cam_<CAMERA>.png`` per camera and ``render.json``.

    ``sample`` is a token, a scene name or an index into ``split`` (:func:`find_sample`); ``dataroot`` /
    ``version`` / ``dataset`` override the data the checkpoint or store records; pairs are points at least
    ``min_depth`` metres in front of a camera. The teacher labels only paired points; a point seen by two cameras
    takes the label of the first (data/nuscenes.py ``CAMERAS`` order) in the bird's-eye view, and each pair counts
    once in its mIoU, as in ``rdistill evaluate --teacher-ceiling``. Returns what render.json holds: the files, the sample,
    the mode and, for a labelled sample, its mIoU by the dataset's rule, per-class IoU and confusion matrix.
    """
    device = resolve_device(device)
    index, mode, predict_points, store, text, record = _predictor(checkpoint, features, dataroot, version, dataset,
                                                                  device)
    rec = find_sample(index, str(sample), split)
    item = load_sample(index, rec)
    points, labels = item["points"], item["labels"].numpy()
    labelled = index.has_labels(rec)
    cameras, point_idx, cam_idx, uv = camera_pairs(points[:, :3].numpy(), rec, min_depth)
    if store is not None:
        teacher, first_pair = teacher_at_pairs(store, rec, cameras, point_idx, cam_idx, uv)
        pair_pred = zero_shot_labels(teacher, text).numpy()
        point_pred = np.zeros(len(points), np.int64)
        point_pred[point_idx[first_pair]] = pair_pred[first_pair]
        scored_pred, scored_label = pair_pred, labels[point_idx]
    else:
        point_pred = predict_points(points)
        pair_pred = point_pred[point_idx]
        scored_pred, scored_label = point_pred, labels
    colors = class_colors(index.dataset)
    synthetic = is_synthetic_town(index.dataroot)
    if labelled:
        score = segmentation_result(confusion_matrix(torch.from_numpy(scored_pred), torch.from_numpy(scored_label),
                                                     len(colors)), index)
    else:
        score = Score.unscored("the sample has no labels")
    result = Rendering(**vars(score), mode=mode, **record, dataset=index.dataset, dataroot=index.dataroot, split=split,
                       sample=rec["token"], scene=rec["scene"], points=len(points), pairs=len(point_idx),
                       min_depth=min_depth, labelled=labelled, class_names=list(index.class_names),
                       synthetic=synthetic)
    title = _figure_title(result)
    out = Path(out)
    files: dict = {"cameras": {}}
    with progress_bar("render", 1 + len(cameras), quiet, unit="figures") as bar:
        handles = _legend_handles(colors, index.class_names, labelled)
        files["bev"] = str(draw_bev(out / "bev.png", points.numpy(), _panels(
            labels if labelled else None, point_pred, colors, mode, bev_order(points.numpy())), handles, title))
        bar.advance()
        for cam in cameras:
            image = read_rgb(Path(index.dataroot) / cam["image"], cam["image_size"])
            order = camera_order(points[cam["point_index"], :3].numpy())
            panels = _panels(labels[cam["point_index"]] if labelled else None, pair_pred[cam["pairs"]], colors, mode,
                             order)
            path = draw_camera(out / f"cam_{cam['name']}.png", image, cam["uv"], panels, handles,
                               f"{cam['name']}: {title}")
            files["cameras"][cam["name"]] = str(path)
            bar.advance()
    files["json"] = str(out / "render.json")
    result.files = files
    write_result(out / "render.json", result)
    return result


def _figure_title(result: Rendering) -> str:
    what = {"zero-shot": "distilled student, zero-shot", "head": "finetuned student",
            "teacher zero-shot": "teacher zero-shot at the paired pixels"}[result.mode]
    town = "synthetic town, " if result.synthetic else ""
    score = f"sample mIoU {100 * result.miou:.1f} %" if result.miou is not None else result.miou_null_reason or ""
    return f"{town}{what}: {result.scene}, sample {result.sample}, {score}"


def _status(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N,) 0 = not scored (ignore label or no prediction), 1 = correct, 2 = wrong."""
    scored = (labels > 0) & (pred > 0)
    return np.where(scored, np.where(labels == pred, 1, 2), 0)


def _panels(labels: np.ndarray | None, pred: np.ndarray, colors: np.ndarray, mode: str, order: np.ndarray):
    """[(title, (N, 3) float RGB, draw order (N,), is the error panel)] for ground truth, prediction and error
    (prediction alone without labels); ``pred`` 0 is no prediction. Points are drawn in ``order`` (N,), the error
    panel's in that order within not scored, then correct, then wrong (on top)."""
    pred_rgb = colors[pred] / 255.0
    pred_rgb[pred == 0] = NO_PREDICTION
    name = "teacher zero-shot labels" if mode == "teacher zero-shot" else f"prediction ({mode})"
    if labels is None:
        return [(name, pred_rgb, order, False)]
    status = _status(labels, pred)
    error_rgb = np.array([ERROR_COLORS["ignore"], ERROR_COLORS["correct"], ERROR_COLORS["wrong"]])[status]
    scored = int((status > 0).sum())
    wrong = int((status == 2).sum())
    share = f" ({100 * wrong / scored:.1f} %)" if scored else ""
    return [("ground truth", colors[labels] / 255.0, order, False), (name, pred_rgb, order, False),
            (f"error: {wrong} of {scored} scored points wrong{share}", error_rgb,
             order[np.argsort(status[order], kind="stable")], True)]


def bev_order(points: np.ndarray) -> np.ndarray:
    """Drawing order of points (N, >= 3) from above: higher points on top."""
    return np.argsort(points[:, 2], kind="stable")


def camera_order(points: np.ndarray) -> np.ndarray:
    """Drawing order of points (M, 3, lidar frame) in a camera: far points first."""
    return np.argsort(-np.linalg.norm(points, axis=1), kind="stable")


def _legend_handles(colors: np.ndarray, class_names, with_error: bool):
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[0] / 255.0, label="ignore / unlabelled")]
    handles += [Patch(color=colors[i] / 255.0, label=name) for i, name in enumerate(class_names, 1)]
    if with_error:
        handles += [Patch(color=ERROR_COLORS["correct"], label="error: correct"),
                    Patch(color=ERROR_COLORS["wrong"], label="error: wrong"),
                    Patch(color=ERROR_COLORS["ignore"], label="error: not scored")]
    return handles


def bev_size(panels: int) -> tuple[int, int]:
    """(width, height) pixels of a bird's-eye-view PNG of ``panels`` panels."""
    return (BEV_LEFT_PX + panels * BEV_PANEL_PX + (panels - 1) * BEV_GAP_PX + BEV_LEGEND_PX,
            TITLE_PX + BEV_PANEL_PX + BEV_BOTTOM_PX)


def camera_size(image_size: tuple[int, int], panels: int) -> tuple[int, int]:
    """(width, height) pixels of a camera PNG of ``panels`` panels for images of ``image_size`` (width, height)."""
    return (2 * MARGIN_PX + panels * CAMERA_PANEL_PX + (panels - 1) * GAP_PX,
            TITLE_PX + _panel_height(image_size) + LEGEND_PX)


def _panel_height(image_size: tuple[int, int]) -> int:
    return round(CAMERA_PANEL_PX * image_size[1] / image_size[0])


def _figure(size: tuple[int, int]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)


def _axes(fig, size: tuple[int, int], left: int, bottom: int, width: int, height: int):
    """Axes at a rectangle given in pixels from the figure's lower-left corner."""
    return fig.add_axes((left / size[0], bottom / size[1], width / size[0], height / size[1]))


def draw_bev(path: Path, points: np.ndarray, panels: list, handles: list, title: str) -> Path:
    """Points (N, >= 3, metres, lidar frame) from above, one square panel per (title, (N, 3) RGB, draw order,
    is error) of ``panels``, with the legend ``handles``."""
    size = bev_size(len(panels))
    fig = _figure(size)
    xy = points[:, :2]
    extent = float(np.percentile(np.abs(xy).max(1), 98))  # metres: the panels show -reach..reach on both axes
    step = 10.0 if extent <= 40 else 20.0
    reach = step * max(1, math.ceil(extent / step))
    ticks = np.arange(-reach, reach + 1, step)
    for p, (name, rgb, order, _) in enumerate(panels):
        ax = _axes(fig, size, BEV_LEFT_PX + p * (BEV_PANEL_PX + BEV_GAP_PX), BEV_BOTTOM_PX, BEV_PANEL_PX, BEV_PANEL_PX)
        ax.scatter(xy[order, 0], xy[order, 1], s=(1.6 * 72 / DPI) ** 2, c=rgb[order], marker="s", linewidths=0)
        ax.plot(0, 0, "k+", markersize=8)  # the lidar
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), xlabel="x (m)", xticks=ticks[1:-1], yticks=ticks)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if p:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel("y (m)")
    if handles:
        fig.legend(handles=handles, loc="center left", fontsize=7,
                   frameon=False, labelspacing=0.35,
                   bbox_to_anchor=(1 - (BEV_LEGEND_PX - 10) / size[0], (BEV_BOTTOM_PX + BEV_PANEL_PX / 2) / size[1]))
    fig.suptitle(title, fontsize=9, y=1 - 6 / size[1], va="top")
    return save_figure(fig, path, dpi=DPI)


def draw_camera(path: Path, image, uv: np.ndarray, panels: list, handles: list, title: str) -> Path:
    """The camera image (W x H) with its paired points at ``uv`` (M, 2, pixels, centres on integers), once per
    (title, (M, 3) RGB, draw order, is error) of ``panels``; the error panel dims the image."""
    from PIL import Image

    size = camera_size(image.size, len(panels))
    height = _panel_height(image.size)
    shown = np.asarray(image.resize((CAMERA_PANEL_PX, height), Image.BILINEAR))
    dimmed = (0.5 * shown + 127.5).astype(np.uint8)
    width_px, height_px = image.size
    fig = _figure(size)
    for p, (name, rgb, order, error) in enumerate(panels):
        ax = _axes(fig, size, MARGIN_PX + p * (CAMERA_PANEL_PX + GAP_PX), LEGEND_PX, CAMERA_PANEL_PX, height)
        # image pixel (i, j) covers [i - 0.5, i + 0.5] x [j - 0.5, j + 0.5], as uv puts pixel centres on integers
        ax.imshow(dimmed if error else shown, extent=(-0.5, width_px - 0.5, height_px - 0.5, -0.5),
                  interpolation="nearest")
        ax.scatter(uv[order, 0], uv[order, 1], s=(3 * 72 / DPI) ** 2, c=rgb[order], linewidths=0)
        ax.set(xlim=(-0.5, width_px - 0.5), ylim=(height_px - 0.5, -0.5))
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    if handles:
        fig.legend(handles=handles, loc="center", ncol=math.ceil(len(handles) / 2), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, LEGEND_PX / 2 / size[1]), columnspacing=1.2, handlelength=1.2)
    fig.suptitle(title, fontsize=9, y=1 - 4 / size[1], va="top")
    return save_figure(fig, path, dpi=DPI)


def evaluation_plots(result: Evaluation | Rendering, out: Path) -> dict[str, str]:
    """``iou.png`` (per-class IoU bars in the dataset's class colours, the mIoU as a line) and ``confusion.png``
    (the confusion matrix, each ground-truth row divided by its points: the share of a class predicted as each
    class) in folder ``out``, from an evaluate or render result (``per_class_iou``, ``confusion`` (C + 1, C + 1)
    rows = ground truth, ``miou``). Returns {name: path}; empty for a result without scores (an unlabelled split)."""
    if result.confusion is None or result.per_class_iou is None:
        return {}
    names = list(result.per_class_iou)
    colors = class_colors(result.dataset)[1:] / 255.0
    town = "synthetic town, " if result.synthetic else ""
    miou = result.miou
    heading = f"{town}{result.mode} on {result.split}: " + (f"mIoU {100 * miou:.1f} %" if miou is not None else "no mIoU")
    out = Path(out)
    fig = _figure((1024, 512))
    ax = fig.add_axes((0.07, 0.32, 0.91, 0.58))
    iou = [result.per_class_iou[n] for n in names]
    x = np.arange(len(names))
    ax.bar(x, [100 * (v or 0.0) for v in iou], color=colors, edgecolor="black", linewidth=0.5)
    for i, v in enumerate(iou):
        ax.text(i, 1 + 100 * (v or 0.0), "absent" if v is None else f"{100 * v:.0f}", ha="center", va="bottom",
                fontsize=7, rotation=90 if v is None else 0)
    if miou is not None:
        ax.axhline(100 * miou, color="black", linestyle="--", linewidth=1, label=f"mIoU {100 * miou:.1f} %")
        ax.legend(fontsize=8, loc="upper right")
    ax.set(ylim=(0, 100), ylabel="IoU (%)", xlim=(-0.6, len(names) - 0.4))
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_title(heading, fontsize=10)
    paths = {"iou": str(save_figure(fig, out / "iou.png", dpi=DPI))}

    conf = np.asarray(result.confusion, np.float64)[1:, 1:]
    rows = conf.sum(1, keepdims=True)
    share = np.divide(conf, rows, out=np.full_like(conf, np.nan), where=rows > 0)
    fig = _figure((896, 832))
    ax = fig.add_axes((0.2, 0.2, 0.72, 0.72))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for (r, c), v in np.ndenumerate(share):
        if v >= 0.005:
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if v > 0.5 else "black")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_yticks(x, names, fontsize=7)
    ax.set(xlabel="predicted class", ylabel="ground-truth class")
    ax.set_title(f"{heading}\nconfusion, % of each ground-truth class (empty row: no point of that class)",
                 fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02)
    paths["confusion"] = str(save_figure(fig, out / "confusion.png", dpi=DPI))
    return paths
