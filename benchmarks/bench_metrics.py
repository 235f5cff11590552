"""Exact block-wise uniformity on 80,000 x 512 features (the Fig. 1 protocol's size): time and extra memory.

    .venv/bin/python benchmarks/bench_metrics.py [--n 80000] [--block 4096]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from relational_distill.errors import run_script
from relational_distill.metrics.structure import tolerance, uniformity, uniformity_sampled


def _vm(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=80_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=4096)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(args.n, args.dim, generator=g) + 2.0 * torch.randn(1, args.dim, generator=g), dim=1)
    labels = torch.randint(0, 16, (args.n,), generator=g)
    base = _vm("VmRSS")
    print("| metric | N x D | time (s) | peak extra memory (MiB) | value |\n|---|---|---|---|---|")
    start = time.perf_counter()
    u = uniformity(z, block_size=args.block)
    print(f"| uniformity, exact, block {args.block} | {args.n} x {args.dim} | {time.perf_counter() - start:.1f} | "
          f"{(_vm('VmHWM') - base) / 2**20:.0f} | {u:.4f} |", flush=True)
    start = time.perf_counter()
    est, (lo, hi) = uniformity_sampled(z, pairs=1_000_000)
    print(f"| uniformity, sampled (1e6 pairs, 95 % CI) | {args.n} x {args.dim} | {time.perf_counter() - start:.1f} | "
          f"{(_vm('VmHWM') - base) / 2**20:.0f} | {est:.4f} [{lo:.4f}, {hi:.4f}] |")
    start = time.perf_counter()
    t = tolerance(z, labels)
    print(f"| tolerance | {args.n} x {args.dim} | {time.perf_counter() - start:.2f} | "
          f"{(_vm('VmHWM') - base) / 2**20:.0f} | {t:.4f} |")


if __name__ == "__main__":
    run_script(main)
