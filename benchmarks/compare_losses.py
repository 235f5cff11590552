"""The results table (docs/method.md, "the paper's claims"): contrastive vs similarity vs relational (and a random-init student), end to end on
synthetic towns, over several seeds and under one or more simulated teachers.

Each seed has its own town (``make-sim --scenes 8 --samples-per-scene 6 --seed S``) and its own 64-beam town in
SemanticKITTI's layout (seed 100 + S), so a verdict holds across towns and not for one. For each teacher, loss and
seed: distill, zero-shot mIoU (also as a fraction of that town's teacher ceiling: the teacher's own zero-shot mIoU
at the lidar-paired val points), finetune at 1 % in distribution and out of distribution (scored by
SemanticKITTI's convention), linear probe at 100 %, and U, T, G of the 3D features against the teacher's.
Reference rows: the teacher ceiling, the class-mean oracle (each val pair gets the mean train teacher feature of
its class: what a perfect distillation reaches zero-shot, benchmarks/convergence.py) and the supervised upper
bound (the same student from scratch on 100 % of the labels, ``configs/upper_bound_cpu.yaml``; it does not depend
on the teacher, so the teachers share it). The paper's claims are tested per teacher (benchmarks/claims.py).
Writes ``results.md``, ``results.json`` (``by_teacher``, ``claims``) and ``results-<teacher>.png`` into --out.
Every number it produces is synthetic.

    .venv/bin/python benchmarks/compare_losses.py --out runs/compare --jobs 2 --teacher sim-clip --teacher sim-clip:clean
    .venv/bin/python benchmarks/compare_losses.py --out runs/compare-gpu --scale 4 --device cuda

Runs are resumable: a step whose result JSON exists is not run again, so a second teacher added later reuses the
towns and the upper bounds; a cached distillation made with other epochs, loss, seed or student stops the run
before it starts. Comparisons run with different ``--epochs`` are combined, each teacher's block with its own
protocol, by ``--merge``:

    .venv/bin/python benchmarks/compare_losses.py --out docs/results \
        --merge sim-clip=runs/compare64/results.json --merge sim-clip:clean=runs/compare2/results.json
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

from claims import claims as test_claims, claims_markdown
from convergence import ceilings
from relational_distill.config import CONFIG_DIR, load_config
from relational_distill.data.dataset import load_sample
from relational_distill.data.nuscenes import load_index
from relational_distill.data.town import TOWN_VERSION
from relational_distill.engine.analyze import analyze
from relational_distill.engine.distill import DistillConfig, distill
from relational_distill.engine.evaluate import evaluate
from relational_distill.engine.finetune import FinetuneConfig, finetune
from relational_distill.engine.precompute import PrecomputeConfig, precompute
from relational_distill.errors import UserError, run_script
from relational_distill.io import atomic_write_json, atomic_write_text
from relational_distill.report import markdown_table
from relational_distill.results import Result
from relational_distill.sim.kitti_writer import make_kitti_town
from relational_distill.sim.writer import SimConfig, make_town
from relational_distill.teachers.store import FeatureStore

VARIANTS = ("random-init", "contrastive", "similarity", "relational")
COLUMNS = ("zero_shot", "finetune_1pct_id", "finetune_1pct_ood", "linear_probe", "U_3d", "T_3d", "G")
OOD_SEED_OFFSET = 100  # the SemanticKITTI-format town of seed S is made with seed 100 + S


def cached(path: Path, fn):
    """Run ``fn`` unless ``path`` (its JSON result) exists; return the result as JSON (a dict, whether read back
    or just made by ``fn``, which may return a typed result). The seconds ``fn`` took are kept beside it
    (``<path>.seconds``), so a resumed comparison still reports what each step cost."""
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = fn()
    result = result.to_json() if isinstance(result, Result) else result
    atomic_write_json(path, result)
    atomic_write_text(path.with_name(path.name + ".seconds"), f"{time.perf_counter() - start:.1f}\n")
    return result


def started(run: Path) -> bool:
    """Whether the training run folder ``run`` holds a checkpoint to resume (a step stopped half-way)."""
    return (run / "checkpoint.pt").is_file()


def step_seconds(path: Path) -> float | None:
    """What the step whose result is ``path`` took when it ran (None: run before its time was kept)."""
    try:
        return float(path.with_name(path.name + ".seconds").read_text())
    except (OSError, ValueError):
        return None


def slug(teacher: str) -> str:
    """A folder name for a teacher spec: ``sim-clip:clean`` -> ``sim-clip-clean``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in teacher)


def towns(args, seed: int) -> tuple[Path, Path]:
    """The seed's town and its SemanticKITTI-format town (made once, shared by every teacher)."""
    root = args.out / "towns" / f"seed{seed}"
    town, town64 = root / "town", root / "town64-semantickitti"
    if not (town / "splits.json").exists():
        make_town(town, SimConfig(scenes=8 * args.scale, samples_per_scene=6, seed=seed))
    if not town64.exists():  # make_kitti_town writes into a temporary folder and renames it when complete
        make_kitti_town(town64, SimConfig(scenes=6 * args.scale, samples_per_scene=6, seed=OOD_SEED_OFFSET + seed,
                                          lidar="hdl64"))
    return town, town64


def teacher_run(args, teacher: str, seed: int) -> Path:
    return args.out / slug(teacher) / f"seed{seed}"


def run_teacher(teacher: str, seed: int, args) -> dict:
    """The teacher's store on the seed's town, its summary (ceiling, U, T) and the class-mean oracle."""
    town, _ = towns(args, seed)
    root = teacher_run(args, teacher, seed)
    summary = cached(root / "teacher.json", lambda: precompute(PrecomputeConfig(
        dataroot=town, out=root / "features", teacher=teacher, quiet=True, summary_per_class=args.per_class)))

    def oracle() -> dict:
        index, store = load_index(town, TOWN_VERSION), FeatureStore.open(root / "features")
        _, text = store.text_embeddings()
        train = [load_sample(index, s, store) for s in index.split("train")]
        val = [load_sample(index, s, store) for s in index.split("val")]
        return ceilings(train, val, text)

    summary["class_mean_oracle_miou"] = cached(root / "oracle.json", oracle)["class_mean_oracle_miou"]
    return summary


def distill_config(args, variant: str, seed: int) -> DistillConfig:
    """``distill_cpu.yaml`` for one student (``random-init``: 0 epochs) of this comparison."""
    base = load_config(DistillConfig, CONFIG_DIR / "distill_cpu.yaml", {})
    return replace(base, loss="relational" if variant == "random-init" else variant, seed=seed,
                   epochs=0 if variant == "random-init" else args.epochs, preset=args.preset, workers=args.workers)


def check_made_as_asked(made: Path, cfg: DistillConfig) -> None:
    """A distillation cached by an earlier invocation (``made``, its distill.json) counts only if it was made with
    this comparison's loss, epochs, seed and student; otherwise stop, naming the folder."""
    if not made.exists():
        return
    old = json.loads(made.read_text())["config"]
    differs = [(k, old.get(k), v) for k, v in (("loss", cfg.loss), ("epochs", cfg.epochs), ("seed", cfg.seed),
                                                ("preset", cfg.preset)) if old.get(k) != v]
    if differs:
        raise UserError(f"{made}: made with " + ", ".join(f"{k} {a}" for k, a, _ in differs)
                        + ", this comparison asks " + ", ".join(f"{k} {b}" for k, _, b in differs)
                        + ": give another --out")


def distill_step(args, town: Path, features: Path, run: Path, variant: str, seed: int) -> tuple[Path, dict]:
    """Distill one student into ``run`` (or read it back, if it was made as asked); its checkpoint and result."""
    cfg = distill_config(args, variant, seed)
    made = run / "distill.json"
    check_made_as_asked(made, cfg)
    result = cached(made, lambda: _drop_heavy(
        distill(town, features, run / "distill", cfg, device=args.device, resume=started(run / "distill"),
                quiet=True)))
    return run / "distill" / "checkpoint.pt", result


def zero_shot_step(args, ckpt: Path, run: Path) -> dict:
    return cached(run / "zero_shot.json", lambda: evaluate(ckpt, zero_shot=True, device=args.device, quiet=True))


def finetune_config(args, name: str, seed: int, **changes) -> FinetuneConfig:
    """configs/<name>.yaml for this seed, its epochs times --scale, with ``changes``."""
    cfg = load_config(FinetuneConfig, CONFIG_DIR / f"{name}.yaml", {})
    return replace(cfg, seed=seed, workers=args.workers, epochs=cfg.epochs * args.scale, **changes)


def finetune_id_step(args, ckpt: Path, run: Path, seed: int) -> dict:
    """Finetune at 1 % of the town's labels (``finetune_cpu.yaml``); the result, with its val evaluation."""
    ft = finetune_config(args, "finetune_cpu", seed, fraction=0.01)
    return cached(run / "finetune_id.json", lambda: _drop_heavy(
        finetune(ckpt, run / "ft-id", ft, device=args.device, resume=started(run / "ft-id"), quiet=True)))


def run_variant(variant: str, seed: int, args, teacher: str, ceiling: float) -> dict:
    town, town64 = towns(args, seed)
    run = teacher_run(args, teacher, seed) / variant
    timings = {}
    files = {"distill": "distill.json", "zero_shot": "zero_shot.json", "finetune_id": "finetune_id.json",
             "finetune_ood": "finetune_ood.json", "linear_probe": "linear_probe.json", "analyze": "analysis.json"}

    def timed(name, fn):
        out = fn()
        timings[name] = step_seconds(run / files[name])
        return out

    features = teacher_run(args, teacher, seed) / "features"
    ckpt, distilled = timed("distill", lambda: distill_step(args, town, features, run, variant, seed))
    zs = timed("zero_shot", lambda: zero_shot_step(args, ckpt, run))
    ft_id = timed("finetune_id", lambda: finetune_id_step(args, ckpt, run, seed))
    # 1 % of the SemanticKITTI-format town's training frames is one frame (every 100th): batches of one
    ft = finetune_config(args, "finetune_cpu", seed, fraction=0.01, batch_size=1)
    ft_ood = timed("finetune_ood", lambda: cached(run / "finetune_ood.json", lambda: _drop_heavy(
        finetune(ckpt, run / "ft-ood", ft, dataroot=town64, device=args.device,
                 resume=started(run / "ft-ood"), quiet=True))))
    lp_cfg = finetune_config(args, "linear_probe_cpu", seed)
    lp = timed("linear_probe", lambda: cached(run / "linear_probe.json", lambda: _drop_heavy(
        finetune(ckpt, run / "lp", lp_cfg, device=args.device, resume=started(run / "lp"), quiet=True))))
    an = timed("analyze", lambda: cached(run / "analysis.json", lambda: analyze(
        ckpt, per_class=args.per_class, out=run / "analysis", device=args.device, quiet=True, plot=seed == 0)))
    return {"variant": variant, "seed": seed, "teacher": teacher, "distill_epochs": distilled["config"]["epochs"],
            "zero_shot": zs["miou"], "zero_shot_of_teacher": zs["miou"] / ceiling,
            "finetune_1pct_id": ft_id["evaluation"]["miou"], "finetune_1pct_ood": ft_ood["evaluation"]["miou"],
            "linear_probe": lp["evaluation"]["miou"], "U_3d": an["uniformity_3d"], "T_3d": an["tolerance_3d"],
            "G": an["modality_gap"], "U_2d": an["uniformity_2d"], "T_2d": an["tolerance_2d"],
            "dU": abs(an["uniformity_3d"] - an["uniformity_2d"]), "dT": abs(an["tolerance_3d"] - an["tolerance_2d"]),
            "seconds": timings}


def run_upper_bound(seed: int, args) -> float:
    """The supervised upper bound: the student from scratch on 100 % of the seed's town's labels; its val mIoU."""
    town, _ = towns(args, seed)
    cfg = finetune_config(args, "upper_bound_cpu", seed)
    run = args.out / "towns" / f"seed{seed}" / "upper-bound"
    result = cached(run / "finetune.json", lambda: _drop_heavy(
        finetune(None, run / "run", cfg, dataroot=town, device=args.device, resume=started(run / "run"),
                 quiet=True)))
    return result["evaluation"]["miou"]


def run_task(kind: str, seed: int, args, teacher: str | None = None, ceiling: float | None = None):
    """One step (a teacher's store, the upper bound, or one row of the table) for one seed, printed when done."""
    if kind == "teacher":
        summary = run_teacher(teacher, seed, args)
        print(f"{teacher} seed {seed}: ceiling {summary['teacher_zero_shot_miou']:.3f}, class-mean oracle "
              f"{summary['class_mean_oracle_miou']:.3f}", flush=True)
        return summary
    if kind == "upper-bound":
        upper = run_upper_bound(seed, args)
        print(f"supervised upper bound seed {seed}: {upper:.3f}", flush=True)
        return upper
    row = run_variant(kind, seed, args, teacher, ceiling)
    print(f"{teacher} {kind} seed {seed}: " + ", ".join(f"{c} {row[c]:.3f}" for c in COLUMNS), flush=True)
    return row


def _drop_heavy(result: Result) -> dict:
    """``result`` as JSON without its evaluation's confusion matrix (the comparison keeps the scores)."""
    data = result.to_json()
    (data.get("evaluation") or {}).pop("confusion", None)
    return data


def pearson(x: list[float], y: list[float]) -> float:
    x, y = np.asarray(x), np.asarray(y)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarise(rows: list[dict], upper: list[float], teachers: list[dict], when: str, command: str) -> dict:
    """One teacher's summary: its rows (variants x seeds), the seeds' upper bounds and teacher summaries; ``when``
    (a date) and ``command`` say how it was made, with the seeds and epochs, in its ``protocol``."""
    trained = [r for r in rows if r["variant"] != "random-init"]
    epochs = sorted({r["distill_epochs"] for r in trained})
    if len(epochs) != 1:
        raise UserError(f"{teachers[0]['teacher']}: its students were distilled for {epochs} epochs; one "
                        "comparison has one schedule (give another --out)")
    seeds = len({r["seed"] for r in rows})
    table = {v: {c: mean_std([r[c] for r in rows if r["variant"] == v]) for c in COLUMNS} for v in VARIANTS}
    correlations = {gap: {m: pearson([r[gap] for r in trained], [r[m] for r in trained])
                          for m in ("zero_shot", "finetune_1pct_id", "finetune_1pct_ood", "linear_probe")}
                    for gap in ("G", "dU", "dT")}
    stage_seconds: dict[str, float] = {}
    for r in rows:
        for k, v in r["seconds"].items():
            if v is not None:  # steps run before their time was kept (dd299da) are left out
                stage_seconds[k] = stage_seconds.get(k, 0.0) + v
    ceiling = mean_std([t["teacher_zero_shot_miou"] for t in teachers])
    students = {v: {"zero_shot_miou": table[v]["zero_shot"][0], "zero_shot_miou_std": table[v]["zero_shot"][1],
                    "zero_shot_of_teacher": mean_std([r["zero_shot_of_teacher"] for r in rows if r["variant"] == v])[0]}
                for v in VARIANTS}
    return {"teacher": teachers[0]["teacher"], "distill_epochs": epochs[0], "seeds": seeds, "date": when,
            "protocol": f"{seeds} seeds, each its own town, {epochs[0]} distillation epochs, {when}",
            "command": command, "teacher_zero_shot_miou": ceiling[0], "teacher_zero_shot_miou_std": ceiling[1],
            "class_mean_oracle_miou": mean_std([t["class_mean_oracle_miou"] for t in teachers])[0],
            "uniformity": mean_std([t["uniformity"] for t in teachers])[0],
            "tolerance": mean_std([t["tolerance"] for t in teachers])[0],
            "supervised_upper_bound_miou": float(np.mean(upper)), "supervised_upper_bound_miou_std": float(np.std(upper)),
            "students": students, "teacher_per_seed": teachers, "table": table, "correlations_pearson": correlations,
            "claims": test_claims(rows), "runs": rows, "seconds_per_stage": stage_seconds}


def teacher_markdown(spec: str, s: dict) -> str:
    header = ["student", "zero-shot mIoU", "of the teacher", "1 % ID mIoU", "1 % OOD mIoU (SemanticKITTI format)",
              "linear probe mIoU", "U (3D)", "T (3D)", "G"]
    rows = []
    for variant, cols in s["table"].items():
        cells = [f"{100 * m:.1f} ± {100 * sd:.1f}" if c not in ("U_3d", "T_3d", "G") else f"{m:.3f} ± {sd:.3f}"
                 for c, (m, sd) in ((c, cols[c]) for c in COLUMNS)]
        rows.append([variant, cells[0], f"{s['students'][variant]['zero_shot_of_teacher']:.2f}x", *cells[1:]])
    rows.append([f"teacher ceiling (2D {spec}, lidar-paired val points)",
                 f"{100 * s['teacher_zero_shot_miou']:.1f} ± {100 * s['teacher_zero_shot_miou_std']:.1f}", "1.00x",
                 "", "", "", f"{s['uniformity']:.3f}", f"{s['tolerance']:.3f}", "0"])
    rows.append(["class-mean oracle (mean train teacher feature of each val pair's class)",
                 f"{100 * s['class_mean_oracle_miou']:.1f}",
                 f"{s['class_mean_oracle_miou'] / s['teacher_zero_shot_miou']:.2f}x", "", "", "", "", "", ""])
    rows.append(["supervised upper bound (from scratch, 100 % labels)",
                 f"{100 * s['supervised_upper_bound_miou']:.1f} ± {100 * s['supervised_upper_bound_miou_std']:.1f}"
                 " (val mIoU)", "", "", "", "", "", "", ""])
    corr_rows = [[gap] + [f"{v:+.2f}" if not math.isnan(v) else "n/a" for v in c.values()]
                 for gap, c in s["correlations_pearson"].items()]
    return (f"### Teacher `{spec}`\n\n**Synthetic**: mean ± std, mIoU in %, {s['protocol']}.\n\n"
            + markdown_table(header, rows)
            + "\nPearson correlation over the trained runs (losses x seeds) between a structural gap and an mIoU:\n\n"
            + markdown_table(["gap", "zero-shot", "1 % ID", "1 % OOD", "linear probe"], corr_rows))


def merged(items: list[str], parser: argparse.ArgumentParser) -> dict:
    """One summary from teacher blocks of several comparisons (``TEACHER=path/to/results.json`` each), every block
    as its comparison wrote it, with its own protocol; ``sources`` says where each came from."""
    by_teacher, sources = {}, []
    for item in items:
        spec, sep, path = item.rpartition("=")
        if not sep or not spec:
            parser.error(f"--merge {item}: give TEACHER=RESULTS, e.g. sim-clip=runs/compare/results.json")
        if spec in by_teacher:
            parser.error(f"--merge: teacher {spec} named twice")
        try:
            source = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable results.json ({err}); run benchmarks/compare_losses.py first")
        block = source.get("by_teacher", {}).get(spec)
        if block is None or "protocol" not in block:
            raise UserError(f"{path}: no teacher {spec} with its protocol (it has "
                            f"{', '.join(source.get('by_teacher', {})) or 'none'}); rerun the command that made it "
                            "(every step is cached) to write it")
        by_teacher[spec] = block
        sources.append({"teacher": spec, "results": path, "command": block["command"], "date": block["date"],
                        "seconds_total": source.get("seconds_total")})
    return {"synthetic": True, "date": date.today().isoformat(), "by_teacher": by_teacher,
            "claims": {t: s["claims"] for t, s in by_teacher.items()}, "sources": sources,
            "command": "python benchmarks/compare_losses.py " + " ".join(f"--merge {i}" for i in items)}


def write_outputs(summary: dict, out: Path) -> None:
    md = ("**Synthetic** (synthetic towns, simulated CLIP teachers); each teacher's protocol is given with its "
          "table.\n\n"
          + "\n".join(teacher_markdown(spec, s) + "\n" + claims_markdown(spec, s["claims"], summary, s["protocol"])
                      for spec, s in summary["by_teacher"].items()))
    atomic_write_text(out / "results.md", md)
    atomic_write_json(out / "results.json", summary)
    for spec, s in summary["by_teacher"].items():
        plot(s, spec, out / f"results-{slug(spec)}.png")


def plot(summary: dict, spec: str, path: Path) -> None:
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
    axes[0].axhline(100 * summary["teacher_zero_shot_miou"], color="k", ls="--", lw=1, label="teacher ceiling")
    axes[0].set_xticks(np.arange(len(metrics)), [n for _, n in metrics])
    axes[0].set_ylabel("mIoU (%)")
    axes[0].set_title(f"segmentation, teacher {spec} (synthetic)")
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
    parser.add_argument("--teacher", action="append", default=None,
                        help="a simulated or open_clip teacher spec, repeatable (default: sim-clip)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="multiplies town size and epochs (GPU: 4 or more)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="distillation epochs (default: configs/distill_cpu.yaml's, times --scale); the finetune "
                             "configs keep theirs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="student preset (default: small, minkunet34 when --scale > 1)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="steps run at once, each in its own process with its share of the threads (spconv's "
                             "CPU convolutions use one core, so on 2 cores --jobs 2 nearly halves the time)")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--replot", action="store_true", help="only redraw the PNGs from results.json")
    parser.add_argument("--merge", action="append", metavar="TEACHER=RESULTS", default=None,
                        help="write --out's results from one teacher's block of each named results.json (repeatable; "
                             "e.g. two comparisons run with different --epochs), running nothing")
    args = parser.parse_args()
    teachers = args.teacher or ["sim-clip"]
    if args.merge:
        write_outputs(merged(args.merge, parser), args.out)
        print((args.out / "results.md").read_text())
        return
    if args.replot:
        summary = json.loads((args.out / "results.json").read_text())
        for spec, s in summary["by_teacher"].items():
            plot(s, spec, args.out / f"results-{slug(spec)}.png")
        return
    args.preset = args.preset or ("small" if args.scale == 1 else "minkunet34")
    args.epochs = args.epochs or load_config(DistillConfig, CONFIG_DIR / "distill_cpu.yaml", {}).epochs * args.scale
    started = time.perf_counter()
    seeds = range(args.seeds)
    for t in teachers:  # before any step runs: a stale cached student would stop the comparison half-way
        for s in seeds:
            for v in VARIANTS:
                check_made_as_asked(teacher_run(args, t, s) / v / "distill.json", distill_config(args, v, s))
    for seed in seeds:
        towns(args, seed)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(max(1, torch.get_num_threads() // args.jobs),)) as pool:
        summaries = {(t, s): pool.submit(run_task, "teacher", s, args, t) for t in teachers for s in seeds}
        summaries = {k: f.result() for k, f in summaries.items()}
        uppers = [pool.submit(run_task, "upper-bound", s, args) for s in seeds]
        rows = {(t, s, v): pool.submit(run_task, v, s, args, t, summaries[t, s]["teacher_zero_shot_miou"])
                for t in teachers for s in seeds for v in VARIANTS}
        upper = [f.result() for f in uppers]
        rows = {k: f.result() for k, f in rows.items()}
    command = (f"python benchmarks/compare_losses.py --out {args.out} --seeds {args.seeds} --scale {args.scale} "
               f"--epochs {args.epochs} " + " ".join(f"--teacher {t}" for t in teachers))
    today = date.today().isoformat()
    by_teacher = {t: summarise([rows[t, s, v] for s in seeds for v in VARIANTS], upper, [summaries[t, s] for s in seeds],
                               today, command)
                  for t in teachers}
    summary = {"synthetic": True, "date": today, "seeds": args.seeds, "scale": args.scale,
               "distill_epochs": args.epochs,
               "by_teacher": by_teacher, "claims": {t: s["claims"] for t, s in by_teacher.items()},
               "seconds_total": time.perf_counter() - started, "command": command}
    write_outputs(summary, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    run_script(main)
