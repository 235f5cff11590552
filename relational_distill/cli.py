"""The ``rdistill`` command line. Thin: parse options, build a config, call one engine function."""
from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .data.town import TOWN_VERSION
from .errors import UserError, print_user_error
from .interrupt import Interrupted, stop_on_signals
from .report import print_table, stdout, write_result
from .results import Evaluation

app = typer.Typer(help="Distill a 2D foundation model (CLIP) into a sparse 3D lidar backbone, and evaluate it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
VERSION = typer.Option(TOWN_VERSION, "--version", help="nuScenes table version (v1.0-trainval, v1.0-mini, v1.0-sim, ...).")
DATASET = typer.Option(None, "--dataset", help="nuscenes or semantickitti (default: recognised from the dataroot's "
                                               "layout).")
# options several commands share: which sample of which data (render, query), and the pairs' minimum depth
SAMPLE_DATAROOT = typer.Option(None, "--dataroot", help="Dataset (default: the checkpoint's or the store's).")
DATAROOT_VERSION = typer.Option(None, "--version", help="Table version of --dataroot.")
SAMPLE_SPLIT = typer.Option("val", "--split", help="Split that an integer --sample counts in.")
SAMPLE = typer.Option("0", "--sample", help="A sample token, a scene name (its first sample) or an index into --split.")
MIN_DEPTH = typer.Option(1.0, "--min-depth", help="Minimum camera depth of a paired point, metres.")


# OSErrors that are the user's environment, not a bug: a read-only, full or forbidden output folder.
_ENVIRONMENT_ERRNOS = {errno.EACCES: "choose a folder you can write to", errno.EPERM: "choose a folder you can write to",
                       errno.EROFS: "choose a writable folder", errno.ENOSPC: "free disk space or choose another folder",
                       errno.EDQUOT: "free disk space or choose another folder"}


def user_errors(fn):
    """Turn a :class:`UserError` (or a read-only / full disk) into one line on stderr and exit code 2, and
    Ctrl-C / SIGTERM into one line saying what was kept, exit code 128 + signal (docs/reliability.md)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with stop_on_signals():
                return fn(*args, **kwargs)
        except UserError as err:
            print_user_error(err)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise
            print(f"error: {err.filename or 'output'}: {err.strerror}; {_ENVIRONMENT_ERRNOS[err.errno]}", file=sys.stderr)
            raise typer.Exit(2) from None
        except Interrupted as stop:
            print(f"interrupted ({stop.name}): {stop.detail or 'stopped'}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            # What is kept is written and what is partial removed: exit now instead of waiting on multiprocessing's
            # exit handlers, which can hang after a pool was terminated mid-task (make-sim under SIGTERM, seen in CI).
            os._exit(stop.exit_code)

    return wrapper


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise UserError(f"image size '{text}': write it as WIDTHxHEIGHT, e.g. 416x224") from None


@app.command("make-sim")
@user_errors
def make_sim(out: Path = typer.Argument(..., help="Folder to create (must not exist or be empty)."),
             scenes: int = typer.Option(8, help="Number of scenes."),
             samples_per_scene: int = typer.Option(8, help="Keyframes per scene (2 Hz)."),
             seed: int = typer.Option(0, help="Random seed; the town is deterministic for a seed."),
             lidar: Optional[str] = typer.Option(None, help="hdl32 (nuScenes-like; default for --format nuscenes) or "
                                                            "hdl64 (the out-of-distribution town; default for "
                                                            "--format semantickitti)."),
             fmt: str = typer.Option("nuscenes", "--format", help="nuscenes (tables, devkit-readable) or "
                                                                     "semantickitti (sequences/NN/ layout)."),
             image_size: str = typer.Option("416x224", help="Camera image size WIDTHxHEIGHT (multiples of 16)."),
             version: str = VERSION,
             workers: int = typer.Option(2, help="Parallel scene renderers."),
             quiet: bool = QUIET) -> None:
    """Generate the synthetic town: a nuScenes-format dataset that nuscenes-devkit loads like real data, or
    (--format semantickitti) the 64-beam town in SemanticKITTI's layout."""
    from .sim.kitti_writer import make_kitti_town
    from .sim.writer import SimConfig, make_town
    from .progress import progress_bar

    if fmt not in ("nuscenes", "semantickitti"):
        raise UserError(f"--format {fmt}: choose nuscenes or semantickitti")
    lidar = lidar or ("hdl64" if fmt == "semantickitti" else "hdl32")
    try:
        cfg = SimConfig(scenes=scenes, samples_per_scene=samples_per_scene, seed=seed, lidar=lidar,
                        image_size=_parse_size(image_size), version=version)
    except ValueError as err:
        raise UserError(str(err)) from None
    write = make_kitti_town if fmt == "semantickitti" else make_town
    try:
        with progress_bar("make-sim", scenes, quiet, unit="scenes") as bar:
            summary = write(out, cfg, workers=workers, progress=lambda done, total: bar.advance())
    except FileExistsError as err:
        raise UserError(str(err)) from None
    stdout.print(f"wrote synthetic town ({summary.samples} samples, {scenes} scenes, lidar {lidar}, "
                 f"{fmt} format) to {out}")


@app.command()
@user_errors
def inspect(dataroot: Path = typer.Argument(..., help="nuScenes or SemanticKITTI dataroot."), version: str = VERSION,
            dataset: Optional[str] = DATASET,
            min_depth: float = MIN_DEPTH,
            out: Optional[Path] = typer.Option(None, help="Also write the counts as OUT/inspect.json."),
            quiet: bool = QUIET) -> None:
    """Counts of scenes, samples, points per class and point-pixel pairs per camera."""
    from .engine.inspect import inspect_dataset

    result = inspect_dataset(dataroot, version, min_depth=min_depth, quiet=quiet, dataset=dataset)
    _print_notes(result.notes)
    per_split = ", ".join(f"{k} {v}" for k, v in result.samples_per_split.items())
    print_table(f"{result.dataroot} ({result.version}): {result.scenes} scenes, {result.samples} samples "
                f"({per_split})",
                ["class", "points", "share"],
                [(k, v, v / max(result.points, 1)) for k, v in result.points_per_class.items()])
    print_table("point-pixel pairs", ["camera", "pairs"], list(result.pairs_per_camera.items()))
    stdout.print(f"{result.paired_points} of {result.points} lidar points "
                 f"({100 * result.paired_fraction:.1f} %) are paired with at least one camera pixel")
    if out:
        write_result(_in_folder(out, "inspect.json"), result)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
        return i, n
    except ValueError:
        raise UserError(f"--shard '{text}': write it as i/n, e.g. 0/4") from None


@app.command()
@user_errors
def precompute(dataroot: Path = typer.Argument(..., help="nuScenes dataroot."),
               out: Path = typer.Option(..., help="Feature store folder (created, or resumed if it exists)."),
               teacher: str = typer.Option("sim-clip", help="sim-clip (synthetic town, CLIP-like), sim-clip:clean (its "
                                                            "clean predecessor) or openclip:MODEL/PRETRAINED, e.g. "
                                                            "openclip:ViT-B-16/openai or openclip:ViT-B-16/ckpt.pt"),
               version: str = VERSION,
               image_size: str = typer.Option("416x224", help="Teacher input size WIDTHxHEIGHT (multiples of the "
                                                               "teacher's patch size: 16 for ViT-B-16, 32 for RN50)."),
               device: str = typer.Option("cpu", help="cpu or cuda."),
               shard: str = typer.Option("0/1", help="Process only samples i, i+n, ... (i/n) to split the work."),
               batch_size: int = typer.Option(1, help="Samples per forward pass (each has 6 images)."),
               prompts: Optional[Path] = typer.Option(None, help="Prompts YAML (default configs/prompts.yaml)."),
               activation: str = typer.Option("auto", help="MLP activation of an openclip: teacher: auto (from the "
                                                           "pretrained tag or a -quickgelu model name), gelu or "
                                                           "quick_gelu (needed for a checkpoint file)."),
               superpixels: Optional[int] = typer.Option(None, help="Also compute SLIC superpixels, this many per "
                                                                    "image, for distill's superpixels option."),
               quiet: bool = QUIET) -> None:
    """Teacher dense features for every sample into a resumable, validated store; prints the teacher's U, T and
    2D zero-shot accuracy."""
    from .engine.precompute import PrecomputeConfig, precompute as run

    result = run(PrecomputeConfig(dataroot=dataroot, out=out, teacher=teacher, version=version,
                                  image_size=_parse_size(image_size), device=device, shard=_parse_shard(shard),
                                  batch_size=batch_size, prompts=prompts, activation=activation,
                                  superpixels=superpixels, quiet=quiet))
    stdout.print(f"computed {result.computed} samples, kept {result.skipped} already stored (sha256 verified) "
                 f"({result.seconds:.1f} s)")
    if result.superpixels:
        sp = result.superpixels
        stdout.print(f"superpixels ({sp['segments']} per image): computed {sp['computed']} samples, skipped "
                     f"{sp['skipped']}, in {sp['store']}")
    if not result.complete:
        stdout.print(f"{result.missing} samples still missing (other shards?); run again to finish")
        return
    summary = result.summary
    label = " (synthetic)" if summary.synthetic else ""
    print_table(f"teacher {result.teacher}{label}", ["metric", "value"],
                [("uniformity U", summary.uniformity), ("tolerance T", summary.tolerance),
                 ("2D zero-shot accuracy", summary.zero_shot_pixel_accuracy),
                 ("zero-shot mIoU at lidar-paired val points", summary.teacher_zero_shot_miou
                  if summary.teacher_zero_shot_miou is not None else summary.teacher_zero_shot_note),
                 ("samples", summary.samples),
                 ("bytes on disk", summary.bytes_on_disk), ("bytes per sample", summary.bytes_per_sample)])
    stdout.print(f"summary: {Path(out) / 'summary.json'}")


@app.command()
@user_errors
def distill(dataroot: Path = typer.Argument(..., help="nuScenes dataroot."),
            features: Path = typer.Option(..., help="Feature store made by 'rdistill precompute'."),
            out: Path = typer.Option(..., help="Run folder: checkpoint.pt, log.jsonl, distill.json."),
            loss: Optional[str] = typer.Option(None, help="contrastive, similarity or relational (default relational)."),
            config: Optional[Path] = typer.Option(None, help="YAML of DistillConfig fields: a path, or the name of a "
                                                             "shipped config (distill_cpu, distill_gpu)."),
            version: str = VERSION,
            teacher: Optional[str] = typer.Option(None, help="Refuse a store made by another teacher than this."),
            epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
            lr: Optional[float] = typer.Option(None), num_pairs: Optional[int] = typer.Option(None),
            block_size: Optional[int] = typer.Option(None, help="Block-wise loss with blocks of this many rows."),
            preset: Optional[str] = typer.Option(None, help="Student width: small (CPU) or minkunet34."),
            seed: Optional[int] = typer.Option(None), workers: Optional[int] = typer.Option(None),
            eval_every: Optional[int] = typer.Option(None, help="Every N epochs, log val zero-shot mIoU and U / T / G "
                                                     "into log.jsonl (see 'rdistill plot')."),
            device: str = typer.Option("cpu", help="cpu or cuda; under torchrun one process per device."),
            resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
            use_test_scenes: bool = typer.Option(False, "--use-test-scenes",
                                                 help="With --version v1.0-test: distill on the held-out test scenes."),
            overwrite: bool = typer.Option(False, help="Start again in an OUT that holds a run (deletes it)."),
            quiet: bool = QUIET) -> None:
    """Distill the teacher into the sparse 3D student with one loss (multi-GPU / multi-node: run under torchrun)."""
    from .config import load_config
    from .engine.distill import DistillConfig, distill as run
    cfg = load_config(DistillConfig, config, {"loss": loss, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                                              "num_pairs": num_pairs, "block_size": block_size, "preset": preset,
                                              "seed": seed, "workers": workers, "eval_every": eval_every})
    result = run(dataroot, features, out, cfg, version=version, teacher=teacher, device=device, resume=resume,
                 quiet=quiet, use_test_scenes=use_test_scenes, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    print_table(f"distill --loss {cfg.loss}" + (" (synthetic)" if result.synthetic else ""),
                ["epoch", "mean loss"], [(e["epoch"] + 1, e["mean_loss"]) for e in result.epochs])
    speed = f"{result.samples_per_second:.2f} samples/s" if result.samples_per_second else "nothing left to train"
    stdout.print(f"checkpoint: {result.checkpoint}  ({speed})")


def _in_folder(out: Path, name: str) -> Path:
    """``OUT/name``: every command's --out is a folder (made if missing), never the file itself."""
    out = Path(out)
    if out.suffix.lower() in (".json", ".png", ".pt", ".npz") and not out.is_dir():
        raise UserError(f"--out {out}: a folder, not a file (the result is written as FOLDER/{name}); pass "
                        f"--out {out.parent}")
    return out / name


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        stdout.print(f"note: {note}")


def _print_evaluation(result: Evaluation) -> None:
    label = " (synthetic)" if result.synthetic else ""
    _print_notes(result.notes)
    if result.predictions:
        stdout.print(f"predictions ({result.predictions['files']} files) in {result.predictions['folder']}")
    if not result.scored:
        stdout.print(f"split '{result.split}' has no labels: predictions written, nothing scored")
        return
    rows = [(name, "absent" if iou is None else iou) for name, iou in result.per_class_iou.items()]
    print_table(f"{result.mode} segmentation on {result.split} ({result.samples} samples){label}",
                ["class", "IoU"], rows + [("mIoU", result.miou if result.miou is not None
                                           else f"none: {result.miou_null_reason}")])
    if result.absent_classes:
        stdout.print(f"{result.miou_convention}: {', '.join(result.absent_classes)}")


@app.command()
@user_errors
def evaluate(checkpoint: Optional[Path] = typer.Argument(None, help="checkpoint.pt from distill or finetune."),
             zero_shot: bool = typer.Option(False, "--zero-shot", help="Classify points by CLIP text embeddings."),
             teacher_ceiling: bool = typer.Option(False, "--teacher-ceiling",
                                                  help="Instead of a checkpoint: the teacher of --features STORE, its "
                                                       "own zero-shot mIoU at the lidar-paired points (the ceiling)."),
             teacher: Optional[Path] = typer.Option(None, hidden=True),
             dataroot: Optional[Path] = typer.Option(None, help="Evaluate on another dataset than the checkpoint's."),
             version: Optional[str] = typer.Option(None, help="Table version of --dataroot."),
             features: Optional[Path] = typer.Option(None, help="Feature store of the text embeddings (default: the "
                                                                "checkpoint's), e.g. after moving it."),
             split: str = typer.Option("val"), device: str = typer.Option("cpu"),
             out: Optional[Path] = typer.Option(None, help="Folder of the JSON result and its plots (default: the "
                                                           "checkpoint's folder, or the store)."),
             dataset: Optional[str] = DATASET,
             save_predictions: Optional[Path] = typer.Option(
                 None, help="Also write the predictions here in the benchmark's format (nuScenes lidarseg .bin + "
                            "submission.json, or SemanticKITTI .label); a split without labels is then allowed."),
             quiet: bool = QUIET) -> None:
    """Per-class IoU and mIoU of a checkpoint (zero-shot for a distilled one, through its head for a finetuned
    one), or of the teacher itself with --features STORE --teacher-ceiling."""
    from .engine.evaluate import evaluate as run, evaluate_teacher

    if teacher is not None:
        raise UserError(f"evaluate --teacher {teacher}: a feature store is --features; pass --features {teacher} "
                        f"--teacher-ceiling")
    if teacher_ceiling == (checkpoint is not None) or (teacher_ceiling and features is None):
        raise UserError("evaluate: give a checkpoint.pt, or --features STORE --teacher-ceiling for the teacher's own "
                        "zero-shot mIoU")
    if teacher_ceiling:
        name = f"teacher_zero_shot_{split}.json"
        path = _in_folder(out or features, name)
        result = evaluate_teacher(features, dataroot=dataroot, version=version, split=split, quiet=quiet)
    else:
        path = _in_folder(out or Path(checkpoint).parent, "zero_shot.json" if zero_shot else "evaluation.json")
        result = run(checkpoint, zero_shot=zero_shot, dataroot=dataroot, version=version, split=split, device=device,
                     quiet=quiet, dataset=dataset, save_predictions=save_predictions, features=features)
    _print_evaluation(result)
    write_result(path, result)
    stdout.print(f"result: {path}")
    from .engine.render import evaluation_plots

    for name, plot in evaluation_plots(result, path.with_suffix("")).items():  # e.g. RUN/zero_shot/iou.png
        stdout.print(f"{name}: {plot}")


@app.command()
@user_errors
def render(checkpoint: Optional[Path] = typer.Argument(None, help="checkpoint.pt from distill (zero-shot) or finetune "
                                                                  "(its head)."),
           features: Optional[Path] = typer.Option(None, help="Feature store: alone, the teacher's own zero-shot labels "
                                                              "at the paired points; with a distilled checkpoint, its "
                                                              "text embeddings (default: the checkpoint's)."),
           dataroot: Optional[Path] = SAMPLE_DATAROOT, version: Optional[str] = DATAROOT_VERSION,
           dataset: Optional[str] = DATASET, split: str = SAMPLE_SPLIT, sample: str = SAMPLE,
           out: Path = typer.Option(..., help="Folder for bev.png, cam_<CAMERA>.png and render.json."),
           min_depth: float = MIN_DEPTH,
           device: str = typer.Option("cpu"), quiet: bool = QUIET) -> None:
    """Draw one sample as PNGs: bird's-eye view and every camera with the lidar points overlaid, as ground truth,
    prediction and error, in the dataset's own class colours."""
    from .engine.render import render as run

    result = run(checkpoint, out=out, features=features, dataroot=dataroot, version=version, dataset=dataset,
                 split=split, sample=sample, device=device, min_depth=min_depth, quiet=quiet)
    label = " (synthetic)" if result.synthetic else ""
    score = f"mIoU {result.miou:.4g}" if result.miou is not None else result.miou_null_reason
    stdout.print(f"{result.mode} on {result.scene}, sample {result.sample}{label}: {score}")
    stdout.print(f"figures: {len(result.files['cameras']) + 1} PNGs in {out}  result: {result.files['json']}")


@app.command()
@user_errors
def query(checkpoint: Optional[Path] = typer.Argument(None, help="Distilled checkpoint.pt (its features at every point)."),
          text: list[str] = typer.Option([], "--text", help="A query, e.g. 'a traffic cone' (repeatable)."),
          classes: Optional[Path] = typer.Option(None, help="YAML of query name -> synonym or list of synonyms: "
                                                            "several queries give the open-vocabulary labelling."),
          features: Optional[Path] = typer.Option(None, help="Feature store: alone, the teacher's features at the "
                                                             "paired points (default: the checkpoint's store)."),
          prompts: Optional[Path] = typer.Option(None, help="Prompts YAML whose templates wrap each synonym "
                                                            "(open_clip teachers; default configs/prompts.yaml)."),
          dataroot: Optional[Path] = SAMPLE_DATAROOT, version: Optional[str] = DATAROOT_VERSION,
          dataset: Optional[str] = DATASET, split: str = SAMPLE_SPLIT, sample: str = SAMPLE,
          out: Path = typer.Option(..., help="Folder for query.npz, query.json, bev.png and cam_<CAMERA>.png."),
          min_depth: float = MIN_DEPTH,
          device: str = typer.Option("cpu"), quiet: bool = QUIET) -> None:
    """Score every point of a sample against texts, embedded by the teacher's own text tower: per-point cosines,
    heat maps on the bird's-eye view and the cameras, and the argmax over several queries."""
    from .engine.query import query as run

    result = run(checkpoint, texts=text, classes=classes, out=out, features=features, dataroot=dataroot,
                 version=version, dataset=dataset, split=split, sample=sample, prompts=prompts, device=device,
                 min_depth=min_depth, quiet=quiet)
    label = " (synthetic)" if result.synthetic else ""
    for name, q in result.queries.items():
        shown = "no point scored" if q["mean_score"] is None else \
            f"mean cosine {q['mean_score']:.3f}, max {q['max_score']:.3f}, answers most at {q['points_answering_most']} points"
        stdout.print(f"'{name}' on {result.scene}, sample {result.sample}{label}: {shown}")
    stdout.print(f"scores: {result.files['scores']}  figures: {len(result.files['cameras']) + 1} PNGs in {out}")


@app.command()
@user_errors
def finetune(checkpoint: Optional[Path] = typer.Argument(None, help="Distilled checkpoint.pt (omit with --from-scratch)."),
             out: Path = typer.Option(..., help="Run folder: checkpoint.pt, log.jsonl, finetune.json."),
             fraction: Optional[float] = typer.Option(None, help="Share of training scenes: 0.01, 0.05, 0.1, 0.25, 1.0."),
             config: Optional[Path] = typer.Option(None, help="YAML of FinetuneConfig fields: a path, or the name of "
                                                              "a shipped config (finetune_cpu, linear_probe_cpu)."),
             linear_probe: bool = typer.Option(False, "--linear-probe", help="Frozen backbone, linear head."),
             from_scratch: bool = typer.Option(False, "--from-scratch", help="Random initialisation baseline."),
             lovasz: bool = typer.Option(False, "--lovasz", help="Add the Lovasz-softmax loss."),
             dataroot: Optional[Path] = typer.Option(None, help="Dataset to finetune on (default: the checkpoint's); "
                                                             "e.g. a 64-beam town for out-of-distribution."),
             version: Optional[str] = typer.Option(None), dataset: Optional[str] = DATASET,
             epochs: Optional[int] = typer.Option(None),
             batch_size: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
             workers: Optional[int] = typer.Option(None), device: str = typer.Option("cpu"),
             resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
             overwrite: bool = typer.Option(False, help="Start again in an OUT that holds a run (deletes it)."),
             quiet: bool = QUIET) -> None:
    """Few-shot semantic segmentation from a distilled backbone; --linear-probe and --from-scratch baselines."""
    from .config import load_config
    from .engine.finetune import FinetuneConfig, finetune as run
    cfg = load_config(FinetuneConfig, config, {"fraction": fraction, "epochs": epochs, "batch_size": batch_size,
                                               "seed": seed, "workers": workers,
                                               "linear_probe": linear_probe or None, "from_scratch": from_scratch or None,
                                               "lovasz": lovasz or None})
    result = run(checkpoint, out, cfg, dataroot=dataroot, version=version, device=device, resume=resume, quiet=quiet,
                 dataset=dataset, overwrite=overwrite)
    if result.evaluation is not None:  # under torchrun, rank 0 evaluates and reports
        stdout.print(f"{result.mode} on {result.trained_on} ({result.train_samples} samples, "
                     f"fraction {cfg.fraction}, {result.dataset})")
        _print_evaluation(result.evaluation)
        stdout.print(f"result: {Path(out) / 'finetune.json'}")


@app.command()
@user_errors
def analyze(checkpoint: Path = typer.Argument(..., help="Distilled checkpoint.pt."),
            metrics: str = typer.Option("uniformity,tolerance,gap", help="Comma-separated: uniformity, tolerance, gap."),
            per_class: int = typer.Option(5000, help="Features sampled per class (Fig. 1 protocol)."),
            split: str = typer.Option("val"), out: Optional[Path] = typer.Option(None, help="Output folder."),
            features: Optional[Path] = typer.Option(None, help="Feature store (default: the checkpoint's), e.g. after "
                                                               "moving it."),
            dataroot: Optional[Path] = typer.Option(None, help="Dataset (default: the checkpoint's), e.g. after moving it."),
            version: Optional[str] = typer.Option(None, help="Table version of --dataroot."),
            device: str = typer.Option("cpu"), quiet: bool = QUIET) -> None:
    """Uniformity, tolerance and modality gap of the 3D features against the teacher's 2D features, with a PCA plot."""
    from .engine.analyze import analyze as run

    result = run(checkpoint, metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()), per_class=per_class,
                 split=split, out=out, device=device, quiet=quiet, features=features, dataroot=dataroot, version=version)
    rows = []
    if "uniformity" in result.metrics:
        rows.append(("uniformity U", result.uniformity_3d, result.uniformity_2d))
    if "tolerance" in result.metrics:
        rows.append(("tolerance T", result.tolerance_3d, result.tolerance_2d))
    if "gap" in result.metrics:
        rows.append(("modality gap G", result.modality_gap, ""))
    label = " (synthetic)" if result.synthetic else ""
    print_table(f"structure of {result.pairs} paired features{label}", ["metric", "3D student", "2D teacher"],
                [tuple("undefined" if v is None else v for v in row) for row in rows])
    stdout.print(f"plot: {result.plot}  result: {Path(result.plot).parent / 'analysis.json'}" if result.plot else "")


@app.command()
@user_errors
def plot(runs: list[Path] = typer.Argument(..., help="Run folders of distill or finetune (each with a log.jsonl)."),
         out: Path = typer.Option(Path("."), help="Folder for curves.png."),
         smooth: int = typer.Option(10, help="Running mean of the loss over this many steps.")) -> None:
    """Learning curves of one or several runs in one PNG: loss, val zero-shot mIoU and U / T / G against the step
    (the last two from 'distill --eval-every')."""
    from .report import plot_runs

    for run in runs:
        if not (Path(run) / "log.jsonl").exists():
            raise UserError(f"{run}: no log.jsonl; pass a run folder written by 'rdistill distill' or 'finetune'")
    stdout.print(f"curves: {plot_runs(runs, _in_folder(out, 'curves.png'), smooth)}")


@app.command()
@user_errors
def toy(out: Path = typer.Option(Path("runs/toy"), help="Output folder for the plots and toy.json."),
        iterations: int = typer.Option(400), seed: int = typer.Option(0)) -> None:
    """The paper's toy experiment (Figs. 2-4): an MLP trained with each loss to match a 1- or 3-cluster source."""
    from .engine.toy import ToyConfig, run_toy

    summary = run_toy(out, ToyConfig(iterations=iterations, seed=seed))
    rows = []
    for setup, s in summary.setups.items():
        rows.append((setup, "source", s["source_uniformity"], s["source_tolerance"]))
        for loss in ("contrastive", "similarity", "relational"):
            rows.append((setup, loss, s[loss]["final_uniformity"], s[loss]["final_tolerance"]))
    print_table("toy experiment: final output space", ["setup", "space", "U", "T"], rows)
    stdout.print("plots: " + ", ".join(summary.plots))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover  (python -m relational_distill.cli, used under torchrun)
    app()
