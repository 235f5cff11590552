"""Training throughput (samples/s) and peak memory of student + loss on the synthetic town, per loss.

Makes a 40-sample town and its sim-clip features in a temporary folder unless --town/--features are given.

    .venv/bin/python benchmarks/bench_distill.py [--config configs/distill_cpu.yaml] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def child(args) -> None:
    import torch

    from relational_distill.config import load_config
    from relational_distill.engine.distill import DistillConfig, distill

    cfg = load_config(DistillConfig, Path(args.config), {"loss": args.loss, "epochs": 1, "workers": 0})
    result = distill(Path(args.town), Path(args.features), Path(args.out), cfg, device=args.device, quiet=True)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else _peak_rss()
    print(json.dumps({"samples_per_second": result["samples_per_second"], "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "distill_cpu.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--town")
    parser.add_argument("--features")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="relational")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        return child(args)
    tmp = Path(tempfile.mkdtemp())
    if not args.town:
        from relational_distill.data.sim.writer import SimConfig, make_town
        from relational_distill.engine.precompute import PrecomputeConfig, precompute

        args.town, args.features = str(tmp / "town"), str(tmp / "features")
        make_town(Path(args.town), SimConfig(scenes=5, samples_per_scene=8))
        precompute(PrecomputeConfig(dataroot=Path(args.town), out=Path(args.features), quiet=True, summary_per_class=100))
    print("| loss | config | device | samples/s | peak memory (MiB) |\n|---|---|---|---|---|")
    for loss in ("contrastive", "similarity", "relational"):
        cmd = [sys.executable, __file__, "--child", "--loss", loss, "--config", args.config, "--device", args.device,
               "--town", args.town, "--features", args.features, "--out", str(tmp / f"run-{loss}")]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"| {loss} | {Path(args.config).name} | {args.device} | {res['samples_per_second']:.2f} | "
              f"{res['peak_bytes'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
