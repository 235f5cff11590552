"""Time to generate a 40-sample synthetic town (lidar + 6 cameras at the default image size).

    .venv/bin/python benchmarks/bench_sim.py [--workers 2]
"""
from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

from relational_distill.errors import run_script
from relational_distill.sim.writer import SimConfig, make_town


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = SimConfig(scenes=5, samples_per_scene=8)
    out = Path(tempfile.mkdtemp()) / "town"
    start = time.perf_counter()
    make_town(out, cfg, workers=args.workers)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out.parent)
    samples = cfg.scenes * cfg.samples_per_scene
    print(f"| what | value |\n|---|---|\n| machine | {platform.machine()}, {args.workers} workers |")
    print(f"| town | {samples} samples, image {cfg.image_size[0]}x{cfg.image_size[1]}, lidar {cfg.lidar} |")
    print(f"| time | {seconds:.1f} s ({seconds / samples:.2f} s/sample) |\n| size on disk | {size / 2**20:.1f} MiB |")


if __name__ == "__main__":
    run_script(main)
