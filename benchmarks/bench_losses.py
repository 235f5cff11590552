"""Time and peak memory of the three losses, plain vs block-wise, forward + backward, D = 512, on this machine.

Each measurement runs in a fresh subprocess; peak memory is the process's high-water mark (VmHWM) minus its
resident size just before the loss (inputs already allocated), so it is the loss's own extra memory.

    .venv/bin/python benchmarks/bench_losses.py [--sizes 4096,16384,65536] [--losses relational] [--block 4096]
    .venv/bin/python benchmarks/bench_losses.py --losses relational-squared --sizes 4096,65536,1048576

``relational-squared`` is the exact O(N D^2) Gram form (losses.py): its rows add its GFLOP/s (about 10 N D^2
floating-point operations forward + backward) next to the GFLOP/s of one ``torch.mm`` of the same shape
(K^T K, 2 N D^2) measured in the same process, i.e. how close the loss runs to this machine's GEMM speed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PLAIN_LIMIT_BYTES = 12 * 2 ** 30  # skip plain forms whose N x N matrices alone would exceed this


def _vm(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(loss: str, n: int, dim: int, block: int | None, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    from relational_distill.losses import make_loss

    g = torch.Generator().manual_seed(0)
    k = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device).requires_grad_(True)
    q = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    fn = (lambda a, b: make_loss("relational", p=2)(a, b)) if loss == "relational-squared" else make_loss(loss, block_size=block)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _vm("VmRSS")
    start = time.perf_counter()
    fn(k, q).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _vm("VmHWM") - base
    result = {"seconds": time.perf_counter() - start, "peak_bytes": max(peak, 0)}
    if loss == "relational-squared":
        kd = k.detach()
        kd.T @ kd  # warm-up
        start = time.perf_counter()
        kd.T @ kd
        if device == "cuda":
            torch.cuda.synchronize()
        result["gflops"] = 10 * n * dim * dim / result["seconds"] / 1e9
        result["mm_gflops"] = 2 * n * dim * dim / (time.perf_counter() - start) / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="4096,16384,65536")
    parser.add_argument("--losses", default="contrastive,similarity,relational")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loss, n, block = args.child.split(":")
        print(json.dumps(measure(loss, int(n), args.dim, int(block) or None, args.device)))
        return
    print("| loss | N | form | time (s) | peak extra memory (MiB) | block / plain time |\n|---|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        for loss in args.losses.split(","):
            times = {}
            if loss == "relational-squared":
                cmd = [sys.executable, __file__, "--child", f"{loss}:{n}:0", "--dim", str(args.dim), "--device", args.device]
                res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                print(f"| {loss} | {n} | Gram | {res['seconds']:.2f} | {res['peak_bytes'] / 2**20:.0f} | "
                      f"{res['gflops']:.1f} GFLOP/s (torch.mm: {res['mm_gflops']:.1f}) |", flush=True)
                continue
            for form, block in (("plain", 0), ("block", args.block)):
                if loss == "similarity" and form == "block":
                    continue  # no N x N matrix: the plain form is already linear in N
                if form == "plain" and loss != "similarity" and 4 * n * n * 3 > PLAIN_LIMIT_BYTES:
                    print(f"| {loss} | {n} | plain | skipped: needs > {PLAIN_LIMIT_BYTES / 2**30:.0f} GiB | | |")
                    continue
                cmd = [sys.executable, __file__, "--child", f"{loss}:{n}:{block}", "--dim", str(args.dim),
                       "--device", args.device]
                res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                times[form] = res["seconds"]
                ratio = f"{times['block'] / times['plain']:.2f}" if form == "block" and "plain" in times else ""
                print(f"| {loss} | {n} | {form} | {res['seconds']:.2f} | {res['peak_bytes'] / 2**20:.0f} | {ratio} |",
                      flush=True)


if __name__ == "__main__":
    main()
