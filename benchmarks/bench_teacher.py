"""MaskCLIP ViT-B/16 (random weights, no download) dense-feature throughput at the default image size.

    .venv/bin/python benchmarks/bench_teacher.py [--device cuda] [--batch 6]
"""
from __future__ import annotations

import argparse
import time

import open_clip
import torch

from relational_distill.errors import run_script
from relational_distill.teachers.maskclip import dense_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=6, help="images per forward (one sample = 6 cameras)")
    parser.add_argument("--size", default="416x224")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    model = open_clip.create_model("ViT-B-16", pretrained=None, device=args.device).eval()
    images = torch.randn(args.batch, 3, height, width, device=args.device)
    rows = []
    for dtype in ([torch.float32, torch.float16] if args.device == "cuda" else [torch.float32]):
        m = model.to(dtype)
        x = images.to(dtype)
        dense_features(m, x)  # warm-up
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeats):
            dense_features(m, x)
        if args.device == "cuda":
            torch.cuda.synchronize()
        rows.append((str(dtype).split(".")[-1], args.batch * args.repeats / (time.perf_counter() - start)))
    print("| device | dtype | image size | images/s |\n|---|---|---|---|")
    for dtype, rate in rows:
        print(f"| {args.device} ({torch.get_num_threads()} threads) | {dtype} | {width}x{height} | {rate:.2f} |")


if __name__ == "__main__":
    run_script(main)
