"""How the answer depends on the teacher: the three losses under simulated teachers from ``sim-clip:clean``
through the CLIP-like default (``sim-clip``) to noisier, and over the systematic share of the CLIP-like noise
(the one parameter no source fixes; docs/teachers.md). Zero-shot and 1 % in-distribution mIoU per loss, one seed
per point, on the town of seed 0 of a comparison (benchmarks/compare_losses.py), with its protocol step for step.

A point is (q, share): ``q`` scales the CLIP-like terms of ``configs/sim_clip.yaml`` (confusion, context, blobs,
per-image bias; the confusion's pull is capped at 1, all the way) and, up to q = 1, moves the class weight and the
image gap from ``sim-clip:clean``'s values to ``sim-clip``'s; ``share`` is the systematic share of the confusion.
q = 0 is ``sim-clip:clean`` and (1, 0.5) is ``sim-clip`` exactly (same digest), so those two points are read from
the comparison's runs (--compare) rather than run again. The teacher's own zero-shot mIoU at the lidar-paired val
points is each point's x: a user whose 2D model scores about that reads off which loss to pick.

    .venv/bin/python benchmarks/teacher_sweep.py --compare runs/compare2 --out runs/sweep --jobs 2

Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` into --out; resumable per step. Every number is synthetic.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, fields
from datetime import date
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from compare_losses import cached, distill_step, finetune_id_step, teacher_run, towns, zero_shot_step
from relational_distill.config import CONFIG_DIR, load_config
from relational_distill.engine.distill import DistillConfig
from relational_distill.engine.precompute import PrecomputeConfig, precompute
from relational_distill.errors import UserError, run_script
from relational_distill.io import atomic_write_json, atomic_write_text
from relational_distill.report import markdown_table
from relational_distill.teachers.sim_clip import SimClipConfig

LOSSES = ("contrastive", "similarity", "relational")
SEED = 0
SCALED = ("confusion_weight", "context_share", "blob_weight", "image_bias_weight")  # multiplied by q
MOVED = ("class_weight", "image_gap")                                            # clean -> sim-clip up to q = 1
# (q, share): the quality axis at the default share, then the share at the default quality
POINTS = ((0.0, 0.5), (0.5, 0.5), (1.0, 0.5), (1.6, 0.5), (1.0, 0.0), (1.0, 1.0))


def point_config(q: float, share: float) -> SimClipConfig:
    clean, like = SimClipConfig.named("sim-clip:clean"), SimClipConfig.named("sim-clip")
    if q == 0:
        return clean
    values = {f.name: getattr(like, f.name) for f in fields(SimClipConfig)}
    for name in SCALED:
        values[name] = min(1.0, q * values[name]) if name == "confusion_weight" else q * values[name]
    if q < 1:
        for name in MOVED:
            values[name] = getattr(clean, name) + q * (getattr(like, name) - getattr(clean, name))
    values["systematic_share"] = share
    return SimClipConfig(**values)


def point_name(q: float, share: float) -> str:
    return f"q{q:.2f}-share{share:.2f}"


def named_spec(cfg: SimClipConfig) -> str | None:
    """``sim-clip:clean`` or ``sim-clip`` when ``cfg`` is exactly that teacher (then the comparison ran it)."""
    for spec in ("sim-clip:clean", "sim-clip"):
        if cfg.digest() == SimClipConfig.named(spec).digest():
            return spec
    return None


def point_root(args, q: float, share: float) -> Path:
    spec = named_spec(point_config(q, share))
    return teacher_run(argparse.Namespace(out=args.compare), spec, SEED) if spec else args.out / point_name(q, share)


def run_teacher(q: float, share: float, args) -> dict:
    cfg, root = point_config(q, share), point_root(args, q, share)
    town, _ = towns(argparse.Namespace(out=args.compare, scale=1), SEED)
    if named_spec(cfg) is None:
        path = root / "sim_clip.yaml"
        data = {k: v for k, v in asdict(cfg).items() if k != "groups"}
        data["groups"] = {g: list(m) for g, m in cfg.groups}
        if not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
        make = lambda: precompute(PrecomputeConfig(dataroot=town, out=root / "features", teacher="sim-clip",  # noqa: E731
                                                   sim_config=path, quiet=True, summary_per_class=args.per_class))
    elif not (root / "teacher.json").exists():
        raise UserError(f"{root / 'teacher.json'}: missing; run benchmarks/compare_losses.py --out {args.compare} "
                        f"--teacher sim-clip --teacher sim-clip:clean first")
    else:
        make = None  # the comparison's own store and summary, read back by cached()
    summary = cached(root / "teacher.json", make)
    print(f"{point_name(q, share)}: teacher {summary['teacher_zero_shot_miou']:.3f}", flush=True)
    return summary


def run_student(q: float, share: float, loss: str, args) -> dict:
    root = point_root(args, q, share)
    town, _ = towns(argparse.Namespace(out=args.compare, scale=1), SEED)
    run = root / loss
    ckpt = distill_step(args, town, root / "features", run, loss, SEED)
    zs = zero_shot_step(args, ckpt, run)
    ft = finetune_id_step(args, ckpt, run, SEED)
    row = {"q": q, "share": share, "loss": loss, "zero_shot": zs["miou"], "finetune_1pct_id": ft["evaluation"]["miou"]}
    print(f"{point_name(q, share)} {loss}: zero-shot {row['zero_shot']:.3f}, 1 % ID {row['finetune_1pct_id']:.3f}",
          flush=True)
    return row


def markdown(result: dict) -> str:
    header = ["q", "systematic share", "teacher", "teacher zero-shot mIoU", "U", "T",
              *[f"{loss} zero-shot (of the teacher)" for loss in LOSSES], *[f"{loss} 1 % ID" for loss in LOSSES],
              "best zero-shot", "best 1 % ID"]
    rows = []
    for p in result["points"]:
        t, s = p["teacher_zero_shot_miou"], p["students"]
        best = lambda key: max(LOSSES, key=lambda loss: s[loss][key])  # noqa: E731
        rows.append([f"{p['q']:.2f}", f"{p['share']:.2f}", p["spec"] or "derived", f"{100 * t:.1f}",
                     f"{p['uniformity']:.3f}", f"{p['tolerance']:.3f}",
                     *[f"{100 * s[loss]['zero_shot']:.1f} ({s[loss]['zero_shot'] / t:.2f}x)" for loss in LOSSES],
                     *[f"{100 * s[loss]['finetune_1pct_id']:.1f}" for loss in LOSSES],
                     best("zero_shot"), best("finetune_1pct_id")])
    return (f"**Synthetic** teacher sweep, {result['date']}: one seed (town of seed {SEED}), mIoU in %. "
            f"`{result['command']}`\n\n" + markdown_table(header, rows))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colour = dict(zip(LOSSES, plt.get_cmap("tab10").colors[1:]))
    quality = sorted((p for p in result["points"] if p["share"] == 0.5), key=lambda p: p["teacher_zero_shot_miou"])
    shares = [p for p in result["points"] if p["share"] != 0.5]
    for ax, key, title in ((axes[0], "zero_shot", "zero-shot"), (axes[1], "finetune_1pct_id", "1 % in distribution")):
        for loss in LOSSES:
            xs = [100 * p["teacher_zero_shot_miou"] for p in quality]
            ax.plot(xs, [100 * p["students"][loss][key] for p in quality], "o-", color=colour[loss], label=loss)
            ax.scatter([100 * p["teacher_zero_shot_miou"] for p in shares],
                       [100 * p["students"][loss][key] for p in shares], marker="s", facecolors="none",
                       edgecolors=colour[loss])
            for p in shares:
                ax.annotate(f"share {p['share']:.0f}", (100 * p["teacher_zero_shot_miou"], 100 * p["students"][loss][key]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        if key == "zero_shot":
            lim = [0, 100 * max(p["teacher_zero_shot_miou"] for p in result["points"]) * 1.05]
            ax.plot(lim, lim, "k--", lw=1, label="student = teacher")
        ax.set_xlabel("teacher zero-shot mIoU at lidar-paired val points (%)")
        ax.set_ylabel(f"student {title} mIoU (%)")
        ax.set_title(f"{title} vs teacher quality (synthetic; squares: systematic share 0 / 1)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, default=Path("runs/compare"),
                        help="a comparison's --out: its town of seed 0, and its sim-clip and sim-clip:clean runs")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--replot", action="store_true", help="only redraw sweep.png and sweep.md from sweep.json")
    args = parser.parse_args()
    if args.replot:
        result = json.loads((args.out / "sweep.json").read_text())
    else:
        # the comparison's protocol at scale 1 (compare_losses.py's defaults)
        args.scale, args.device, args.preset = 1, "cpu", "small"
        args.epochs = load_config(DistillConfig, CONFIG_DIR / "distill_cpu.yaml", {}).epochs
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                                 initargs=(max(1, torch.get_num_threads() // args.jobs),)) as pool:
            teachers = {p: pool.submit(run_teacher, *p, args) for p in POINTS}
            teachers = {p: f.result() for p, f in teachers.items()}
            students = {(p, loss): pool.submit(run_student, *p, loss, args) for p in POINTS for loss in LOSSES}
            students = {k: f.result() for k, f in students.items()}
        points = []
        for p in POINTS:
            cfg, t = point_config(*p), teachers[p]
            points.append({"q": p[0], "share": p[1], "spec": named_spec(cfg), "teacher": t["teacher"],
                           "config": {k: getattr(cfg, k) for k in (*SCALED, *MOVED, "systematic_share")},
                           "teacher_zero_shot_miou": t["teacher_zero_shot_miou"],
                           "zero_shot_pixel_accuracy": t["zero_shot_pixel_accuracy"],
                           "uniformity": t["uniformity"], "tolerance": t["tolerance"],
                           "students": {loss: {k: students[p, loss][k] for k in ("zero_shot", "finetune_1pct_id")}
                                        for loss in LOSSES}})
        result = {"synthetic": True, "date": date.today().isoformat(), "seed": SEED, "points": points,
                  "command": f"python benchmarks/teacher_sweep.py --compare {args.compare} --out {args.out}"}
        atomic_write_json(args.out / "sweep.json", result)
    atomic_write_text(args.out / "sweep.md", markdown(result) + "\n")
    plot(result, args.out / "sweep.png")
    print((args.out / "sweep.md").read_text())


if __name__ == "__main__":
    run_script(main)
