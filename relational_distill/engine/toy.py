"""``rdistill toy``: the paper's toy experiment (Figs. 2-4, docs/method.md).

A "source" space of 3-d unit vectors (one von Mises-Fisher cluster, or three) plays the teacher. Each source
vector is seen by the student through another modality: a fixed random linear map into 8-d plus noise. An MLP
maps those inputs to 3-d unit vectors and is trained with each loss to match the source; we follow the
uniformity of its output over the iterations against the source's and plot the final output spaces.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses import LOSS_NAMES, make_loss
from ..metrics.structure import tolerance, uniformity
from ..report import write_result
from ..results import ToyResult


@dataclass
class ToyConfig:
    points_per_cluster: int = 300
    kappa: float = 5.5            # vMF concentration: one cluster then has U ~ 0.89, T ~ 0.67 (the paper's source)
    cluster_angle_deg: float = 60.0  # 3-cluster setup: polar angle of the cluster centres
    input_dim: int = 8
    input_noise: float = 0.35
    hidden: int = 64
    iterations: int = 400
    lr: float = 5e-3
    temperature: float = 0.07
    record_every: int = 5
    seed: int = 0


def sample_vmf(centre: np.ndarray, kappa: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors in 3-d from a von Mises-Fisher distribution (Wood's exact sampler for S^2)."""
    u = rng.random(n)
    w = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * kappa)) / kappa
    v = rng.normal(size=(n, 3))
    v -= np.outer(v @ centre, centre)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w[:, None] * centre + np.sqrt(np.clip(1 - w ** 2, 0, None))[:, None] * v


def source_space(clusters: int, cfg: ToyConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    theta = np.radians(cfg.cluster_angle_deg) if clusters > 1 else 0.0
    feats, labels = [], []
    for c in range(clusters):
        phi = 2 * np.pi * c / clusters
        centre = np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
        feats.append(sample_vmf(centre, cfg.kappa, cfg.points_per_cluster, rng))
        labels.append(np.full(cfg.points_per_cluster, c))
    return torch.tensor(np.concatenate(feats), dtype=torch.float32), torch.tensor(np.concatenate(labels))


def run_setup(clusters: int, cfg: ToyConfig) -> dict:
    rng = np.random.default_rng(cfg.seed + clusters)
    q, labels = source_space(clusters, cfg, rng)
    mixing = torch.tensor(rng.normal(size=(3, cfg.input_dim)), dtype=torch.float32)
    x = q @ mixing + cfg.input_noise * torch.tensor(rng.normal(size=(len(q), cfg.input_dim)), dtype=torch.float32)
    out = {"source": {"uniformity": uniformity(q.double()), "tolerance": tolerance(q, labels),
                      "points": q.tolist(), "labels": labels.tolist()}, "losses": {}}
    for name in LOSS_NAMES:
        torch.manual_seed(cfg.seed)
        mlp = nn.Sequential(nn.Linear(cfg.input_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden),
                            nn.ReLU(), nn.Linear(cfg.hidden, 3))
        opt = torch.optim.Adam(mlp.parameters(), lr=cfg.lr)
        loss_fn = make_loss(name, temperature=cfg.temperature)
        curve = []
        for it in range(cfg.iterations + 1):
            k = F.normalize(mlp(x), dim=1)
            if it % cfg.record_every == 0:
                kd = k.detach()
                curve.append({"iteration": it, "uniformity": uniformity(kd.double()), "tolerance": tolerance(kd, labels)})
            if it == cfg.iterations:
                break
            loss = loss_fn(k, q)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["losses"][name] = {"curve": curve, "final_uniformity": curve[-1]["uniformity"],
                               "final_tolerance": curve[-1]["tolerance"], "points": k.detach().tolist()}
    return out


def run_toy(out: Path, cfg: ToyConfig = ToyConfig()) -> ToyResult:
    """Both setups (1 and 3 clusters), all three losses; writes toy.json, toy_spaces.png and toy_uniformity.png."""
    setups = {f"{c}-cluster": run_setup(c, cfg) for c in (1, 3)}
    out = Path(out)
    paths = plot_toy(setups, out)
    summary = ToyResult(config=asdict(cfg), plots=[str(p) for p in paths], setups={})
    for name, s in setups.items():
        summary.setups[name] = {"source_uniformity": s["source"]["uniformity"],
                                   "source_tolerance": s["source"]["tolerance"],
                                   **{loss: {"final_uniformity": r["final_uniformity"],
                                             "final_tolerance": r["final_tolerance"],
                                             "uniformity_curve": [(c["iteration"], c["uniformity"]) for c in r["curve"]]}
                                      for loss, r in s["losses"].items()}}
    write_result(out / "toy.json", summary)
    return summary


def plot_toy(setups: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    colours = np.array(["tab:blue", "tab:orange", "tab:green"])
    fig = plt.figure(figsize=(16, 8))
    for row, (setup, data) in enumerate(setups.items()):
        labels = np.asarray(data["source"]["labels"])
        panels = [("source", data["source"])] + list(data["losses"].items())
        for col, (name, entry) in enumerate(panels):
            ax = fig.add_subplot(2, 4, row * 4 + col + 1, projection="3d")
            pts = np.asarray(entry["points"])
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=2, c=colours[labels])
            u = entry.get("uniformity", entry.get("final_uniformity"))
            t = entry.get("tolerance", entry.get("final_tolerance"))
            ax.set_title(f"{setup}: {name}\nU {u:.2f}  T {t:.2f}", fontsize=9)
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
            ax.set_box_aspect((1, 1, 1))
    fig.tight_layout()
    spaces = out / "toy_spaces.png"
    fig.savefig(spaces, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (setup, data) in zip(axes, setups.items()):
        for name, entry in data["losses"].items():
            its = [c["iteration"] for c in entry["curve"]]
            ax.plot(its, [c["uniformity"] for c in entry["curve"]], label=name)
        ax.axhline(data["source"]["uniformity"], color="black", linestyle="--", label="source")
        ax.set_title(f"{setup}: uniformity of the output space")
        ax.set_xlabel("iteration")
        ax.set_ylabel("U (t = 2)")
        ax.legend()
    fig.tight_layout()
    curves = out / "toy_uniformity.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)
    return [spaces, curves]
