"""The results table (docs/method.md, "the paper's claims"): contrastive vs similarity vs relational (and a random-init student), end to end on
the synthetic town, over several seeds.

For each loss and seed: distill, zero-shot mIoU (also as a percentage of the teacher's own zero-shot mIoU at the
lidar-paired val points, the teacher ceiling), finetune at 1 % in distribution and out of distribution (the
64-beam town in SemanticKITTI's layout, scored by SemanticKITTI's convention), linear probe at 100 %, and U, T, G
of the 3D features against the teacher's. Two reference rows: the teacher ceiling, and the supervised upper
bound (the same student from scratch on 100 % of the labels, ``configs/upper_bound_cpu.yaml``). Writes
``results.md``, ``results.json`` and ``results.png`` into --out, and the correlation between the structural
gaps (G, |dU|, |dT|) and the mIoUs. Every number it produces is synthetic.

    .venv/bin/python benchmarks/compare_losses.py --out runs/compare --jobs 2   # CPU size, 2 cores
    .venv/bin/python benchmarks/compare_losses.py --out runs/compare-gpu --scale 4 --device cuda

Runs are resumable: a step whose result JSON exists is not run again.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import date
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from relational_distill.config import CONFIG_DIR, load_config
from relational_distill.sim.kitti_writer import make_kitti_town
from relational_distill.sim.writer import SimConfig, make_town
from relational_distill.engine.analyze import analyze
from relational_distill.engine.distill import DistillConfig, distill
from relational_distill.engine.evaluate import evaluate
from relational_distill.engine.finetune import FinetuneConfig, finetune
from relational_distill.engine.precompute import PrecomputeConfig, precompute
from relational_distill.io import atomic_write_json, atomic_write_text
from relational_distill.report import markdown_table

VARIANTS = ("random-init", "contrastive", "similarity", "relational")
COLUMNS = ("zero_shot", "finetune_1pct_id", "finetune_1pct_ood", "linear_probe", "U_3d", "T_3d", "G")


def cached(path: Path, fn):
    """Run ``fn`` unless ``path`` (its JSON result) exists; return the result."""
    if path.exists():
        return json.loads(path.read_text())
    result = fn()
    atomic_write_json(path, result)
    return result


def run_variant(variant: str, seed: int, args, town: Path, town64: Path, features: Path, teacher: dict) -> dict:
    run = args.out / f"{variant}-seed{seed}"
    base = load_config(DistillConfig, CONFIG_DIR / "distill_cpu.yaml", {})
    cfg = replace(base, loss="relational" if variant == "random-init" else variant, seed=seed,
                  epochs=0 if variant == "random-init" else args.epochs, preset=args.preset, workers=args.workers)
    ckpt = run / "distill" / "checkpoint.pt"
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - start
        return out

    timed("distill", lambda: cached(run / "distill.json", lambda: _drop_heavy(
        distill(town, features, run / "distill", cfg, device=args.device, resume=True, quiet=True))))
    zs = timed("zero_shot", lambda: cached(run / "zero_shot.json",
                                           lambda: evaluate(ckpt, zero_shot=True, device=args.device, quiet=True)))
    ft = load_config(FinetuneConfig, CONFIG_DIR / "finetune_cpu.yaml", {})
    ft = replace(ft, seed=seed, workers=args.workers, epochs=ft.epochs * args.scale)
    ft_id = timed("finetune_id", lambda: cached(run / "finetune_id.json", lambda: _drop_heavy(
        finetune(ckpt, run / "ft-id", replace(ft, fraction=0.01), device=args.device, resume=True, quiet=True))))
    # 1 % of the SemanticKITTI-format town's training frames is one frame (every 100th): batches of one
    ft_ood = timed("finetune_ood", lambda: cached(run / "finetune_ood.json", lambda: _drop_heavy(
        finetune(ckpt, run / "ft-ood", replace(ft, fraction=0.01, batch_size=1), dataroot=town64, device=args.device,
                 resume=True, quiet=True))))
    lp_cfg = load_config(FinetuneConfig, CONFIG_DIR / "linear_probe_cpu.yaml", {})
    lp_cfg = replace(lp_cfg, seed=seed, workers=args.workers, epochs=lp_cfg.epochs * args.scale)
    lp = timed("linear_probe", lambda: cached(run / "linear_probe.json", lambda: _drop_heavy(
        finetune(ckpt, run / "lp", lp_cfg, device=args.device, resume=True, quiet=True))))
    an = timed("analyze", lambda: cached(run / "analysis.json", lambda: analyze(
        ckpt, per_class=args.per_class, out=run / "analysis", device=args.device, quiet=True, plot=seed == 0)))
    return {"variant": variant, "seed": seed, "zero_shot": zs["miou"],
            "zero_shot_of_teacher": zs["miou"] / teacher["teacher_zero_shot_miou"],
            "finetune_1pct_id": ft_id["evaluation"]["miou"], "finetune_1pct_ood": ft_ood["evaluation"]["miou"],
            "linear_probe": lp["evaluation"]["miou"], "U_3d": an["uniformity_3d"], "T_3d": an["tolerance_3d"],
            "G": an["modality_gap"], "U_2d": an["uniformity_2d"], "T_2d": an["tolerance_2d"],
            "dU": abs(an["uniformity_3d"] - an["uniformity_2d"]), "dT": abs(an["tolerance_3d"] - an["tolerance_2d"]),
            "seconds": timings}


def run_upper_bound(seed: int, args, town: Path) -> float:
    """The supervised upper bound: the student from scratch on 100 % of the labels; its val mIoU."""
    cfg = load_config(FinetuneConfig, CONFIG_DIR / "upper_bound_cpu.yaml", {})
    cfg = replace(cfg, seed=seed, workers=args.workers, epochs=cfg.epochs * args.scale)
    run = args.out / f"upper-bound-seed{seed}"
    result = cached(run / "finetune.json", lambda: _drop_heavy(
        finetune(None, run / "run", cfg, dataroot=town, device=args.device, resume=True, quiet=True)))
    return result["evaluation"]["miou"]


def run_task(variant: str, seed: int, args, town: Path, town64: Path, features: Path, teacher: dict):
    """One row of the table (a variant, or the upper bound) for one seed, printed when done."""
    if variant == "upper-bound":
        upper = run_upper_bound(seed, args, town)
        print(f"supervised upper bound seed {seed}: {upper:.3f}", flush=True)
        return upper
    row = run_variant(variant, seed, args, town, town64, features, teacher)
    print(f"{variant} seed {seed}: " + ", ".join(f"{c} {row[c]:.3f}" for c in COLUMNS), flush=True)
    return row


def _drop_heavy(result: dict) -> dict:
    result.get("evaluation", {}).pop("confusion", None)
    return result


def pearson(x: list[float], y: list[float]) -> float:
    x, y = np.asarray(x), np.asarray(y)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def summarise(rows: list[dict], upper: list[float], teacher: dict, args, started: float) -> dict:
    table = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        table[variant] = {c: (float(np.mean([r[c] for r in mine])), float(np.std([r[c] for r in mine])))
                          for c in COLUMNS}
    trained = [r for r in rows if r["variant"] != "random-init"]
    correlations = {gap: {m: pearson([r[gap] for r in trained], [r[m] for r in trained])
                          for m in ("zero_shot", "finetune_1pct_id", "finetune_1pct_ood", "linear_probe")}
                    for gap in ("G", "dU", "dT")}
    stage_seconds: dict[str, float] = {}
    for r in rows:
        for k, v in r["seconds"].items():
            stage_seconds[k] = stage_seconds.get(k, 0.0) + v
    students = {v: {"zero_shot_miou": table[v]["zero_shot"][0], "zero_shot_miou_std": table[v]["zero_shot"][1],
                    "zero_shot_of_teacher": table[v]["zero_shot"][0] / teacher["teacher_zero_shot_miou"]}
                for v in VARIANTS}
    return {"synthetic": True, "date": date.today().isoformat(), "seeds": args.seeds, "scale": args.scale,
            "teacher_zero_shot_miou": teacher["teacher_zero_shot_miou"],
            "supervised_upper_bound_miou": float(np.mean(upper)), "supervised_upper_bound_miou_std": float(np.std(upper)),
            "students": students, "teacher": teacher, "table": table, "correlations_pearson": correlations, "runs": rows,
            "seconds_total": time.perf_counter() - started, "seconds_per_stage": stage_seconds,
            "command": f"python benchmarks/compare_losses.py --out {args.out} --seeds {args.seeds} --scale {args.scale}"}


def write_outputs(summary: dict, out: Path) -> None:
    header = ["student", "zero-shot mIoU", "% of teacher", "1 % ID mIoU", "1 % OOD mIoU (SemanticKITTI format)",
              "linear probe mIoU", "U (3D)", "T (3D)", "G"]
    rows = []
    for variant, cols in summary["table"].items():
        cells = [f"{100 * m:.1f} ± {100 * s:.1f}" if c not in ("U_3d", "T_3d", "G") else f"{m:.3f} ± {s:.3f}"
                 for c, (m, s) in ((c, cols[c]) for c in COLUMNS)]
        rows.append([variant, cells[0], f"{100 * summary['students'][variant]['zero_shot_of_teacher']:.0f} %", *cells[1:]])
    t = summary["teacher"]
    rows.append(["teacher ceiling (2D sim-clip, lidar-paired val points)", f"{100 * t['teacher_zero_shot_miou']:.1f}",
                 "100 %", "", "", "", f"{t['uniformity']:.3f}", f"{t['tolerance']:.3f}", "0"])
    rows.append(["supervised upper bound (from scratch, 100 % labels)",
                 f"{100 * summary['supervised_upper_bound_miou']:.1f} ± {100 * summary['supervised_upper_bound_miou_std']:.1f}"
                 " (val mIoU)", "", "", "", "", "", "", ""])
    corr_rows = [[gap] + [f"{v:+.2f}" if not math.isnan(v) else "n/a" for v in c.values()]
                 for gap, c in summary["correlations_pearson"].items()]
    md = ("**Synthetic** (synthetic town, simulated CLIP teacher): mean ± std over "
          f"{summary['seeds']} seeds, mIoU in %, {summary['date']}.\n\n" + markdown_table(header, rows)
          + "\nPearson correlation over the trained runs (losses x seeds) between a structural gap and an mIoU:\n\n"
          + markdown_table(["gap", "zero-shot", "1 % ID", "1 % OOD", "linear probe"], corr_rows))
    atomic_write_text(out / "results.md", md)
    atomic_write_json(out / "results.json", summary)
    plot(summary, out / "results.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("zero_shot", "zero-shot"), ("finetune_1pct_id", "1 % ID"), ("finetune_1pct_ood", "1 % OOD"),
               ("linear_probe", "linear probe")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colour = dict(zip(VARIANTS, plt.get_cmap("tab10").colors))
    width = 0.2
    for i, variant in enumerate(VARIANTS):
        cols = summary["table"][variant]
        xs = np.arange(len(metrics)) + (i - 1.5) * width
        axes[0].bar(xs, [100 * cols[m][0] for m, _ in metrics], width, yerr=[100 * cols[m][1] for m, _ in metrics],
                    label=variant, color=colour[variant])
    axes[0].set_xticks(np.arange(len(metrics)), [n for _, n in metrics])
    axes[0].set_ylabel("mIoU (%)")
    axes[0].set_title("segmentation (synthetic)")
    axes[0].legend(fontsize=8)
    for variant in VARIANTS[1:]:
        runs = [r for r in summary["runs"] if r["variant"] == variant]
        axes[1].scatter([r["G"] for r in runs], [100 * r["zero_shot"] for r in runs], label=variant,
                        color=colour[variant])
    axes[1].set_xlabel("modality gap G")
    axes[1].set_ylabel("zero-shot mIoU (%)")
    axes[1].set_title("structure vs zero-shot (synthetic)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="multiplies town size and epochs (GPU: 4 or more)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="student preset (default: small, minkunet34 when --scale > 1)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="rows run at once, each in its own process with its share of the threads (spconv's "
                             "CPU convolutions use one core, so on 2 cores --jobs 2 nearly halves the time)")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--replot", action="store_true", help="only redraw results.png from results.json")
    args = parser.parse_args()
    if args.replot:
        return plot(json.loads((args.out / "results.json").read_text()), args.out / "results.png")
    args.preset = args.preset or ("small" if args.scale == 1 else "minkunet34")
    args.epochs = load_config(DistillConfig, CONFIG_DIR / "distill_cpu.yaml", {}).epochs * args.scale
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    town, town64, features = args.out / "town", args.out / "town64-semantickitti", args.out / "features"
    if not (town / "splits.json").exists():
        make_town(town, SimConfig(scenes=8 * args.scale, samples_per_scene=6, seed=0))
    if not town64.exists():  # make_kitti_town writes into a temporary folder and renames it when complete
        make_kitti_town(town64, SimConfig(scenes=6 * args.scale, samples_per_scene=6, seed=1, lidar="hdl64"))
    teacher = cached(args.out / "teacher.json", lambda: precompute(
        PrecomputeConfig(dataroot=town, out=features, quiet=True, summary_per_class=args.per_class)))
    tasks = [(seed, variant) for seed in range(args.seeds) for variant in ("upper-bound", *VARIANTS)]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(max(1, torch.get_num_threads() // args.jobs),)) as pool:
        futures = [pool.submit(run_task, variant, seed, args, town, town64, features, teacher)
                   for seed, variant in tasks]
        results = [f.result() for f in futures]
    rows = [r for (seed, variant), r in zip(tasks, results) if variant != "upper-bound"]
    upper = [r for (seed, variant), r in zip(tasks, results) if variant == "upper-bound"]
    summary = summarise(rows, upper, teacher, args, started)
    write_outputs(summary, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
