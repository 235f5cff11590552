"""Structure of an embedding space (docs/method.md): uniformity, tolerance, modality gap. Pure tensor math.

* Uniformity (Wang & Isola 2020): ``U = -log mean_{a != b} exp(-t ||z_a - z_b||^2)``, t = 2.
* Tolerance (Wang & Liu 2021): ``T = mean over same-class pairs a != b of z_a . z_b``.
* Modality gap (Liang et al. 2022): ``G = ||mean(K) - mean(Q)||_2``.
"""
from __future__ import annotations

import math

import torch


def uniformity(z: torch.Tensor, t: float = 2.0, block_size: int | None = None) -> float:
    """Exact uniformity of (N, D) L2-normalised ``z``.

    ``block_size=None`` computes the N x N distance matrix at once (float64). An integer works on pairs of
    row blocks of that many rows (upper triangle only, the lower one by symmetry) in ``z``'s dtype, with the
    per-block log-sum-exps combined in float64, so memory stays O(block_size^2) and never N x N.
    """
    n = z.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two features")
    if block_size is None:
        z = z.double()
        sq = torch.cdist(z, z).pow(2)
        off = ~torch.eye(n, dtype=torch.bool, device=z.device)
        lse = torch.logsumexp(-t * sq[off], 0)
    else:
        parts = []
        for i in range(0, n, block_size):
            rows = z[i:i + block_size]
            for j in range(i, n, block_size):
                # ||a - b||^2 = 2 - 2 a.b for unit vectors; the clamp removes rounding below zero
                sq = (2.0 - 2.0 * (rows @ z[j:j + block_size].T)).clamp_min(0)
                if i == j:
                    sq.fill_diagonal_(float("inf"))  # drop a == b
                    parts.append(torch.logsumexp((-t * sq).flatten(), 0).double())
                else:  # the block below the diagonal is the transpose of this one
                    parts.append(torch.logsumexp((-t * sq).flatten(), 0).double() + math.log(2.0))
        lse = torch.logsumexp(torch.stack(parts), 0)
    return float(-(lse - math.log(n * (n - 1))))


def uniformity_sampled(z: torch.Tensor, t: float = 2.0, pairs: int = 200_000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Monte-Carlo estimate of uniformity from ``pairs`` random pairs a != b, with a delta-method confidence
    interval (normal approximation on the mean of exp(-t ||z_a - z_b||^2))."""
    g = torch.Generator().manual_seed(seed)
    n = z.shape[0]
    a = torch.randint(0, n, (pairs,), generator=g)
    b = (a + torch.randint(1, n, (pairs,), generator=g)) % n
    chunk = 16_384  # pairs at a time, so memory stays O(chunk x D)
    k = torch.cat([torch.exp(-t * (z[a[i:i + chunk]].double() - z[b[i:i + chunk]].double()).pow(2).sum(1))
                   for i in range(0, pairs, chunk)])
    mean, std = k.mean(), k.std()
    zq = torch.distributions.Normal(0, 1).icdf(torch.tensor(0.5 + confidence / 2)).item()
    half = zq * std / math.sqrt(pairs)
    return float(-torch.log(mean)), (float(-torch.log(mean + half)), float(-torch.log((mean - half).clamp_min(1e-300))))


def tolerance(z: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine similarity over same-class pairs a != b of (N, D) L2-normalised ``z``; O(C x D) memory."""
    z = z.double()
    total, count = 0.0, 0
    for c in torch.unique(labels):
        zc = z[labels == c]
        m = len(zc)
        if m < 2:
            continue
        s = zc.sum(0)
        total += float(s @ s - (zc * zc).sum())  # sum over ordered pairs a != b of z_a . z_b
        count += m * (m - 1)
    if count == 0:
        raise ValueError("tolerance needs at least one class with two features")
    return total / count


def modality_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Distance between the centroids of two (N, D) feature sets."""
    return float(torch.linalg.vector_norm(a.double().mean(0) - b.double().mean(0)))


def sample_per_class(labels: torch.Tensor, per_class: int = 5000, seed: int = 0,
                     ignore_index: int | None = 0) -> torch.Tensor:
    """Indices of up to ``per_class`` random items of each class (all of a class that has fewer): the paper's
    Fig. 1 protocol."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels):
        if ignore_index is not None and int(c) == ignore_index:
            continue
        idx = torch.nonzero(labels == c).squeeze(1)
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)
