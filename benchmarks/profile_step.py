"""Where the time of one CPU distillation step goes, phase by phase, for each loss (configs/distill_cpu.yaml):
loading a sample (lidar, labels, teacher features), pairing (projection into the six cameras) and sampling the
teacher at the pixels, voxelisation, student forward, loss, backward, optimiser step. Medians over --steps
batches of two samples, after one warm-up step; in the main process (no DataLoader worker overlap), on the threads
`rdistill distill` gives the student beside its config's DataLoader workers (relational_distill/threads.py).

    .venv/bin/python benchmarks/profile_step.py --town TOWN --features FEATURES [--steps 8]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    from relational_distill.config import load_config
    from relational_distill.data.dataset import load_sample
    from relational_distill.data.index import camera_list
    from relational_distill.data.nuscenes import load_index
    from relational_distill.data.projection import pair_points
    from relational_distill.data.town import TOWN_VERSION
    from relational_distill.models.voxels import voxel_coordinates, voxelize
    from relational_distill.engine.distill import DistillConfig, anchor_head, teacher_mean
    from relational_distill.losses import make_loss
    from relational_distill.models.sparse_unet import Student
    from relational_distill.models.voxels import VoxelConfig
    from relational_distill.teachers.store import FeatureStore
    from relational_distill.threads import training_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--town", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "distill_cpu.yaml"))
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    cfg = load_config(DistillConfig, Path(a.config), {})
    index, store = load_index(Path(a.town), TOWN_VERSION), FeatureStore.open(Path(a.features))
    train = index.split("train")
    rng = np.random.default_rng(0)
    print("| loss | load + pair + teacher at pixels (2 samples) | of which pairing | voxelise | forward | loss | "
          "backward | optimiser | total |\n|---|---|---|---|---|---|---|---|---|")
    with training_threads(cfg.workers):  # as `rdistill distill` runs the student beside its workers
        for loss_name in ("contrastive", "similarity", "relational"):
            torch.manual_seed(0)
            model = Student(store.manifest.dim, cfg.preset, VoxelConfig(cfg.voxel_size, cfg.voxel_mode))
            anchor_head(model, teacher_mean(index, train, store, cfg.min_depth))
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr)
            loss_fn = make_loss(loss_name, cfg.temperature, cfg.intra_weight, cfg.relational_p, cfg.block_size)
            rows = []
            for step in range(a.steps + 1):
                t = {}
                start = time.perf_counter()
                items = [load_sample(index, train[(2 * step + b) % len(train)], store, cfg.min_depth,
                                     cfg.pairs_per_sample, rng) for b in range(2)]
                t["load"] = time.perf_counter() - start
                start = time.perf_counter()
                for b in range(2):
                    sample = train[(2 * step + b) % len(train)]
                    pair_points(index.read_points(sample)[:, :3], camera_list(sample), cfg.min_depth)
                t["pairing"] = time.perf_counter() - start  # measured again on its own: part of "load"
                points = torch.cat([it["points"] for it in items])
                batch = torch.cat([torch.full((len(it["points"]),), b) for b, it in enumerate(items)])
                offsets = [0, len(items[0]["points"])]
                pair_point = torch.cat([it["pair_point"] + o for it, o in zip(items, offsets)])
                pair_teacher = torch.cat([it["pair_teacher"] for it in items])
                start = time.perf_counter()
                voxelize([voxel_coordinates(it["points"][:, :3], cfg.voxel_size) for it in items])
                t["voxelise"] = time.perf_counter() - start  # measured on its own: part of "forward"
                pick = torch.randperm(len(pair_point))[: cfg.num_pairs]
                start = time.perf_counter()
                k = F.normalize(model(points, batch, rows=pair_point[pick]), dim=1)
                t["forward"] = time.perf_counter() - start
                start = time.perf_counter()
                loss = loss_fn(k, pair_teacher[pick])
                t["loss"] = time.perf_counter() - start
                start = time.perf_counter()
                opt.zero_grad()
                loss.backward()
                t["backward"] = time.perf_counter() - start
                start = time.perf_counter()
                opt.step()
                t["optimiser"] = time.perf_counter() - start
                if step:
                    rows.append(t)
            med = {key: float(np.median([r[key] for r in rows])) for key in rows[0]}
            total = med["load"] + med["forward"] + med["loss"] + med["backward"] + med["optimiser"]
            print(f"| {loss_name} | {med['load']:.3f} s | {med['pairing']:.3f} s | {med['voxelise']:.3f} s | "
                  f"{med['forward']:.3f} s | {med['loss']:.3f} s | {med['backward']:.3f} s | "
                  f"{med['optimiser']:.3f} s | {total:.3f} s |", flush=True)


if __name__ == "__main__":
    main()
