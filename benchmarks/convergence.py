"""Convergence experiments (docs/convergence.md): one student trained for a number of steps on a town whose
samples are held in memory, with one distillation loss (or cross-entropy on the labels), printing the val
zero-shot mIoU (every val point, as ``rdistill evaluate``) every few steps. Isolates the student, the loss and
the optimisation from data loading; every number it prints on the synthetic town is synthetic.

    .venv/bin/python benchmarks/convergence.py --town TOWN --features FEATURES --ceilings
    .venv/bin/python benchmarks/convergence.py --town TOWN --features FEATURES --loss similarity --steps 100
    .venv/bin/python benchmarks/convergence.py ... --target class-mean   # noise-free targets: each pair's
                                                                         # teacher feature -> its class mean
    .venv/bin/python benchmarks/convergence.py ... --supervised          # cross-entropy on the labels
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from relational_distill.data.dataset import load_sample
from relational_distill.data.nuscenes import load_index
from relational_distill.data.projection import DEFAULT_MIN_DEPTH
from relational_distill.data.town import TOWN_VERSION
from relational_distill.engine.distill import DistillConfig, anchor_head, teacher_mean
from relational_distill.engine.training import cosine_schedule
from relational_distill.errors import run_script
from relational_distill.losses import make_loss
from relational_distill.metrics.segmentation import confusion_matrix, miou
from relational_distill.models.sparse_unet import Student
from relational_distill.models.voxels import VoxelConfig
from relational_distill.teachers.store import FeatureStore

D = DistillConfig()  # every training default is DistillConfig's (= configs/distill_cpu.yaml)


def class_means(samples: list[dict], dim: int) -> torch.Tensor:
    """(17, D) mean teacher feature of the pairs of each point class over ``samples`` (not normalised)."""
    sums, count = torch.zeros(17, dim), torch.zeros(17)
    for x in samples:
        y = x["labels"][x["pair_point"]]
        sums.index_add_(0, y, x["pair_teacher"])
        count.index_add_(0, y, torch.ones(len(y)))
    return sums / count.clamp_min(1)[:, None]


def ceilings(train: list[dict], val: list[dict], text: torch.Tensor) -> dict:
    """The teacher's zero-shot mIoU at the val pairs, and the class-mean oracle's (what a perfect distillation
    reaches zero-shot), with the mean cosine to the teacher of the oracle and of the global-mean predictor."""
    conf = torch.zeros(17, 17, dtype=torch.long)
    for x in val:
        conf += confusion_matrix((x["pair_teacher"] @ text.T).argmax(1) + 1, x["labels"][x["pair_point"]])
    means = class_means(train, text.shape[1])
    overall = F.normalize(means[1:].sum(0), dim=0)
    oracle = torch.zeros(17, 17, dtype=torch.long)
    cos_oracle, cos_global = [], []
    for x in val:
        y = x["labels"][x["pair_point"]]
        keep = y > 0
        k = F.normalize(means[y[keep]], dim=1)
        oracle += confusion_matrix((k @ text.T).argmax(1) + 1, y[keep])
        cos_oracle.append((k * x["pair_teacher"][keep]).sum(1))
        cos_global.append(x["pair_teacher"][keep] @ overall)
    return {"teacher_zero_shot_miou": miou(conf)[1], "class_mean_oracle_miou": miou(oracle)[1],
            "oracle_mean_cosine": float(torch.cat(cos_oracle).mean()),
            "global_mean_cosine": float(torch.cat(cos_global).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--town", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--version", default=TOWN_VERSION)
    p.add_argument("--ceilings", action="store_true", help="print the teacher and oracle ceilings and stop")
    p.add_argument("--loss", default="similarity")
    p.add_argument("--supervised", action="store_true", help="cross-entropy on the labels instead of a loss")
    p.add_argument("--target", default="teacher", choices=("teacher", "class-mean"))
    p.add_argument("--p", type=int, default=D.relational_p, help="relational: 1 (L1) or 2 (squared, Gram form)")
    p.add_argument("--block", type=int, default=D.block_size)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--weight-decay", type=float, default=D.weight_decay)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--pairs", type=int, default=D.num_pairs, help="pairs per step (0: every pair of the batch)")
    p.add_argument("--preset", default=D.preset)
    p.add_argument("--voxel", type=float, default=D.voxel_size)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--head-bias", default=D.head_bias, choices=("learned", "teacher-mean"),
                   help="teacher-mean: the head's bias fixed at the mean teacher feature (DistillConfig.head_bias)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    index, store = load_index(a.town, a.version), FeatureStore.open(a.features)
    _, text = store.text_embeddings()
    train = [load_sample(index, s, store) for s in index.split("train")]
    val = [load_sample(index, s, store) for s in index.split("val")]
    if a.ceilings:
        print(json.dumps(ceilings(train, val, text)))
        return
    if a.target == "class-mean":
        means = F.normalize(class_means(train, text.shape[1]), dim=1)
        for x in train:
            x["pair_teacher"] = means[x["labels"][x["pair_point"]]]
    model = Student(17 if a.supervised else text.shape[1], a.preset, VoxelConfig(a.voxel))
    if a.head_bias == "teacher-mean":
        anchor_head(model, teacher_mean(index, index.split("train"), store, DEFAULT_MIN_DEPTH))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=a.weight_decay)
    sched = cosine_schedule(opt, a.steps, 0.05)
    loss_fn = make_loss(a.loss, 0.07, 1.0, a.p, a.block)
    rng = np.random.default_rng(a.seed)

    @torch.no_grad()
    def val_miou() -> tuple[float, float]:
        """(val mIoU, mean norm of the student's outputs before normalisation)."""
        model.eval()
        conf, norms = torch.zeros(17, 17, dtype=torch.long), []
        for x in val:
            out = model(x["points"], torch.zeros(len(x["points"]), dtype=torch.long))
            pred = out[:, 1:].argmax(1) + 1 if a.supervised else (F.normalize(out, dim=1) @ text.T).argmax(1) + 1
            conf += confusion_matrix(pred, x["labels"])
            norms.append(out.norm(dim=1).mean())
        model.train()
        return miou(conf)[1], float(torch.stack(norms).mean())

    started, losses = time.perf_counter(), []
    for step in range(1, a.steps + 1):
        points, pair_point, pair_teacher, labels, batch, offset = [], [], [], [], [], 0
        for b, i in enumerate(rng.choice(len(train), a.batch_size, replace=False)):
            x = train[i]
            angle = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(angle), np.sin(angle)
            rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float32)
            if rng.random() < 0.5:
                rot = rot @ torch.diag(torch.tensor([1.0, -1.0, 1.0]))
            pts = x["points"].clone()
            pts[:, :3] = pts[:, :3] @ rot.T
            points.append(pts)
            pair_point.append(x["pair_point"] + offset)
            pair_teacher.append(x["pair_teacher"])
            labels.append(x["labels"])
            batch.append(torch.full((len(pts),), b))
            offset += len(pts)
        points, pair_point, batch = torch.cat(points), torch.cat(pair_point), torch.cat(batch)
        if a.supervised:
            loss = F.cross_entropy(model(points, batch), torch.cat(labels), ignore_index=0)
        else:
            pick = torch.from_numpy(rng.permutation(len(pair_point))[: a.pairs or None])
            k = F.normalize(model(points, batch, rows=pair_point[pick]), dim=1)
            loss = loss_fn(k, torch.cat(pair_teacher)[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % a.eval_every == 0 or step == a.steps:
            seconds = (time.perf_counter() - started) / step
            mean_iou, norm = val_miou()
            print(json.dumps({"step": step, "loss": round(float(np.mean(losses[-a.eval_every:])), 4),
                              "val_zero_shot_miou" if not a.supervised else "val_miou": round(100 * mean_iou, 2),
                              "output_norm": round(norm, 2), "seconds_per_step": round(seconds, 2)}), flush=True)


if __name__ == "__main__":
    run_script(main)
