"""Training throughput (samples/s) and peak memory of student + loss on the synthetic town, per loss.

Makes a 40-sample town and its sim-clip features in a temporary folder unless --town/--features are given
(with --baseline, each variant makes its own with its own code).
With ``--baseline REV`` the same losses also run with the code and the configs/distill_cpu.yaml of git revision
REV (extracted into a temporary folder; each variant runs its own revision's ``rdistill make-sim / precompute /
distill`` commands, so a baseline from before a module moved works), one after the other in the same run, and the
table gives the ratio of the medians over --repeats runs of --epochs epochs (16 steps each; a single run moved by up
to 1.5x from one run to the next). Each variant loads its data with its config's DataLoader workers (as `rdistill
distill` does) unless --workers.

    .venv/bin/python benchmarks/bench_distill.py [--config configs/distill_cpu.yaml] [--device cuda]
        [--baseline REV] [--repeats 3] [--epochs 1] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def _cli(argv: list[str]) -> None:
    """Run one ``rdistill`` command in this process, with the package on PYTHONPATH: the command line is the
    interface every revision shares (a baseline from before a module moved keeps its own layout)."""
    from relational_distill.cli import app

    try:
        app(argv)
    except SystemExit as stop:
        if stop.code:
            raise


def child(args) -> None:
    """One distillation (``rdistill distill``) of the code on PYTHONPATH; prints its samples/s and peak memory."""
    argv = ["distill", args.town, "--features", args.features, "--out", args.out, "--loss", args.loss,
            "--config", args.config, "--epochs", str(args.epochs), "--device", args.device, "--quiet"]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    _cli(argv)
    import torch

    result = json.loads((Path(args.out) / "distill.json").read_text())
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else _peak_rss()
    print(json.dumps({"samples_per_second": result["samples_per_second"], "peak_bytes": peak}))


def prepare(town: Path, features: Path) -> None:
    """A 40-sample town and its ``sim-clip`` features, made by the code on PYTHONPATH (each variant makes its own,
    since feature stores of one version are refused by another; the teacher does not change a step's cost)."""
    _cli(["make-sim", str(town), "--scenes", "5", "--samples-per-scene", "8"])
    _cli(["precompute", str(town), "--teacher", "sim-clip", "--out", str(features), "--quiet"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "distill_cpu.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--town")
    parser.add_argument("--features")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="relational")
    parser.add_argument("--out")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loss and variant (median)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each run")
    parser.add_argument("--workers", type=int, help="DataLoader workers for every variant (default: each config's)")
    parser.add_argument("--baseline", help="git revision to compare with (its code and its distill_cpu.yaml)")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.prepare:
        return prepare(Path(args.town), Path(args.features))
    tmp = Path(tempfile.mkdtemp())
    variants = [("this tree", Path(__file__).resolve().parents[1], args.config)]
    if args.baseline:
        root = tmp / "baseline"
        root.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline], capture_output=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        variants.append((f"baseline {args.baseline}", root, str(root / "configs" / "distill_cpu.yaml")))
    data = {}
    for i, (name, root, _) in enumerate(variants):
        if args.town:
            data[name] = (args.town, args.features)
            continue
        town, features = tmp / f"town{i}", tmp / f"features{i}"
        subprocess.run([sys.executable, __file__, "--prepare", "--town", str(town), "--features", str(features)],
                       check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        data[name] = (str(town), str(features))
    print("| loss | code | config | device | samples/s (median) | runs | peak memory (MiB) |\n"
          "|---|---|---|---|---|---|---|")
    rates: dict[tuple[str, str], float] = {}
    for loss in ("contrastive", "similarity", "relational"):
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        for repeat in range(args.repeats):  # interleaved, so a slow spell of the machine hits every variant
            for name, root, config in variants:
                town, features = data[name]
                cmd = [sys.executable, __file__, "--child", "--loss", loss, "--config", config, "--device",
                       args.device, "--town", town, "--features", features,
                       "--out", str(tmp / f"run-{loss}-{name.split()[0]}-{repeat}"), "--epochs", str(args.epochs)]
                if args.workers is not None:
                    cmd += ["--workers", str(args.workers)]
                env = {**os.environ, "PYTHONPATH": str(root)}
                runs[name].append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env,
                                                            cwd=root).stdout.strip().splitlines()[-1]))
        for name, _, config in variants:
            each = [r["samples_per_second"] for r in runs[name]]
            rates[loss, name] = statistics.median(each)
            print(f"| {loss} | {name} | {Path(config).name} | {args.device} | {rates[loss, name]:.2f} | "
                  f"{' '.join(f'{x:.2f}' for x in each)} | {max(r['peak_bytes'] for r in runs[name]) / 2**20:.0f} |",
                  flush=True)
    if args.baseline:
        base = variants[1][0]
        print("\nspeed-up of this tree over " + base + ": " +
              ", ".join(f"{loss} {rates[loss, 'this tree'] / rates[loss, base]:.2f}x"
                        for loss in ("contrastive", "similarity", "relational")))

if __name__ == "__main__":
    main()
