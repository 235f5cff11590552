"""Losses against brute-force loops, and block-wise against plain (value and gradient, float64)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relational_distill.losses import contrastive_loss, relational_loss, similarity_loss


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def assert_same_value_and_gradient(loss_a, loss_b, k0):
    """Two losses of the student features agree at ``k0`` in value and in the gradient of 2.5 x the loss."""
    results = []
    for fn in (loss_a, loss_b):
        k = k0.clone().requires_grad_(True)
        loss = fn(k)
        (2.5 * loss).backward()
        results.append((loss.detach(), k.grad))
    (v0, g0), (v1, g1) = results
    torch.testing.assert_close(v0, v1, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(g0, g1, atol=1e-10, rtol=1e-10)


def brute_contrastive(k, q, tau):
    n = len(k)
    total = 0.0
    for i in range(n):
        denom = sum(math.exp(float(k[i] @ q[j]) / tau) for j in range(n))
        total += -math.log(math.exp(float(k[i] @ q[i]) / tau) / denom)
    return total / n


def brute_relational(k, q, lam, p):
    n = len(k)
    diag = sum(abs(float(k[i] @ q[i] - q[i] @ q[i])) ** p for i in range(n)) / n
    cross = intra = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                cross += abs(float(k[i] @ q[j] - q[i] @ q[j])) ** p
                intra += abs(float(k[i] @ k[j] - q[i] @ q[j])) ** p
    return diag + cross / (n * (n - 1)) + lam * intra / (n * (n - 1))


def test_contrastive_matches_loops():
    k, q = unit(7, 5, 0), unit(7, 5, 1)
    assert contrastive_loss(k, q, 0.07).item() == pytest.approx(brute_contrastive(k, q, 0.07), rel=1e-10)


@pytest.mark.parametrize("n,d", [(2, 3), (50, 12), (300, 8)])
def test_contrastive_equals_cross_entropy_in_value_and_gradient(n, d):
    """The in-place softmax form equals autograd through F.cross_entropy on the logits (float64)."""
    q = unit(n, d, 17)
    assert_same_value_and_gradient(lambda k: contrastive_loss(k, q, 0.07),
                                   lambda k: F.cross_entropy(k @ q.T / 0.07, torch.arange(n)), unit(n, d, 18) * 1.2)


def test_similarity_matches_loops():
    k, q = unit(7, 5, 0), unit(7, 5, 1)
    want = sum(1 - float(k[i] @ q[i]) for i in range(7)) / 7
    assert similarity_loss(k, q).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_relational_matches_loops(p, lam):
    k, q = unit(6, 4, 2), unit(6, 4, 3)
    assert relational_loss(k, q, lam, p).item() == pytest.approx(brute_relational(k, q, lam, p), rel=1e-10)


def test_relational_cross_contains_similarity():
    """C_ii = 1 - k_i.q_i: with intra weight 0 the relational loss is the similarity loss plus the mean of the
    off-diagonal |k_i.q_j - q_i.q_j| (a loop over pairs)."""
    q, k = unit(5, 3, 4).double(), unit(5, 3, 5).double()
    off = [abs(float(k[i] @ q[j] - q[i] @ q[j])) for i in range(5) for j in range(5) if i != j]
    expected = similarity_loss(k, q).item() + sum(off) / len(off)
    assert relational_loss(k, q, 0.0).item() == pytest.approx(expected, rel=1e-12)
    assert relational_loss(q, q, 1.0).item() == pytest.approx(0.0, abs=1e-12)


def test_relational_zero_at_teacher_and_grows_with_perturbation():
    q = unit(40, 16, 6)
    noise = unit(40, 16, 7)
    values = [relational_loss(F.normalize(q + eps * noise, dim=1), q).item() for eps in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert values[1] < values[2] < values[3]


@pytest.mark.parametrize("name", ["contrastive", "relational1"])
@pytest.mark.parametrize("block", [1, 16, 64])
def test_block_equals_plain(name, block):
    n, d = 50, 12
    q = unit(n, d, 8)
    k0 = unit(n, d, 9)
    results = []
    for b in (None, block):
        k = k0.clone().requires_grad_(True)
        if name == "contrastive":
            loss = contrastive_loss(k, q, 0.07, block_size=b)
        else:
            loss = relational_loss(k, q, 0.7, 1, block_size=b)
        (2.5 * loss).backward()
        results.append((loss.detach(), k.grad))
    (v0, g0), (v1, g1) = results
    torch.testing.assert_close(v1, v0, atol=1e-8, rtol=0)
    torch.testing.assert_close(g1, g0, atol=1e-8, rtol=0)


def dense_squared_relational(k, q, lam):
    """The squared relational loss written with its N x N matrices (docs/method.md), differentiable by autograd."""
    n = len(k)
    qq = q @ q.T
    cross, intra = (k @ q.T - qq) ** 2, (k @ k.T - qq) ** 2
    off = ~torch.eye(n, dtype=torch.bool)
    return cross.diagonal().mean() + cross[off].mean() + lam * intra[off].mean()


@pytest.mark.parametrize("n,d,lam", [(2, 3, 1.0), (50, 12, 0.7), (300, 8, 1.0)])
def test_gram_squared_relational_equals_dense_form(n, d, lam):
    """The O(N D^2) Gram form equals the N x N form in value and gradient (float64), unnormalised rows too."""
    q = unit(n, d, 13)
    assert_same_value_and_gradient(lambda k: relational_loss(k, q, lam, 2),
                                   lambda k: dense_squared_relational(k, q, lam), unit(n, d, 14) * 1.3)


def test_gram_squared_relational_ignores_block_size():
    k, q = unit(20, 6, 15), unit(20, 6, 16)
    assert relational_loss(k, q, 1.0, 2, block_size=4).item() == relational_loss(k, q, 1.0, 2).item()


def test_no_gradient_to_teacher():
    k = unit(8, 4, 10).requires_grad_(True)
    q = unit(8, 4, 11).requires_grad_(True)
    for loss in (contrastive_loss(k, q), similarity_loss(k, q), relational_loss(k, q),
                 relational_loss(k, q, block_size=3), relational_loss(k, q, p=2), contrastive_loss(k, q, block_size=3)):
        loss.backward()
    assert q.grad is None and k.grad is not None


def test_superpixel_pool_against_loop():
    from relational_distill.losses import superpixel_pool

    x = unit(9, 3, 12)
    seg = torch.tensor([5, 2, 5, 9, 2, 2, 9, 5, 7])
    got = superpixel_pool(x, seg)
    for row, s in zip(got, (2, 5, 7, 9)):
        members = [x[i] for i in range(9) if seg[i] == s]
        torch.testing.assert_close(row, F.normalize(sum(members), dim=0))
