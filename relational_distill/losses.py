"""Distillation losses (docs/method.md). ``k``: (N, D) student point features, ``q``: (N, D) teacher pixel features of
the same N pairs; rows L2-normalised; ``q`` is treated as a constant (no gradient flows to it).

* contrastive (PPKT / SLidR InfoNCE): ``L = -1/N sum_i log softmax_j(k_i.q_j / tau)[i]``
* similarity (CLIP2Scene / OpenScene): ``L = 1/N sum_i (1 - k_i.q_i)``
* relational (the paper): ``C = |K Q^T - Q Q^T|``, ``D = |K K^T - Q Q^T|``,
  ``L = mean_i C_ii + mean_{i != j} C_ij + lambda * mean_{i != j} D_ij`` (``p=2``: squared instead of absolute)

``block_size=None`` is the plain form. An integer computes the same value and gradient block by block with a
custom autograd function that keeps only K, Q (and per-row log-sum-exps) between forward and backward, so no
N x N matrix is ever held: memory O(block_size x block_size x ...) instead of O(N^2).

The squared relational loss (``p=2``) has an exact O(N x D^2) form through D x D Gram matrices (docs/method.md,
docs/convergence.md): ``||K Q^T - Q Q^T||^2 = <(K-Q)^T (K-Q), Q^T Q>`` and
``||K K^T - Q Q^T||^2 = ||K^T K||^2 - 2 ||K^T Q||^2 + ||Q^T Q||^2``, minus the diagonal terms. It never forms
an N x N matrix and costs 3 N D^2 multiply-adds forward instead of 2 N^2 D, so it takes every pair of a batch
(N >= 10^6); ``relational_loss`` uses it for ``p=2`` whatever ``block_size`` says.
"""
from __future__ import annotations

from typing import Callable

import torch

from .threads import all_threads


# -- contrastive ------------------------------------------------------------------------------------------------------
class _PlainContrastive(torch.autograd.Function):
    """InfoNCE with one N x N buffer: the forward turns the logits into the softmax in place and keeps it, so the
    backward is one matrix product, ``dL/dk = (P Q - Q) / (tau N)``; autograd through ``cross_entropy`` would keep
    the logits and their log-softmax and redo the softmax (docs/convergence.md, "Throughput")."""
    @staticmethod
    def forward(ctx, k, q, temperature):
        with all_threads():  # the N x N products on every core, also inside a training loop (threads.py)
            p = (k * (1.0 / temperature)) @ q.T
        top = p.amax(1, keepdim=True)
        p.sub_(top).exp_()  # one exp over the N x N logits: their softmax is this over its row sums
        total = p.sum(1, keepdim=True)
        p.div_(total)
        lse = (top + total.log()).squeeze(1)
        positives = (k * q).sum(1) / temperature
        ctx.save_for_backward(p, q)
        ctx.temperature = temperature
        return (lse - positives).mean()

    @staticmethod
    def backward(ctx, grad_out):
        p, q = ctx.saved_tensors
        with all_threads():
            grad = torch.addmm(q, p, q, beta=-1.0)
        return grad * (grad_out / (ctx.temperature * len(q))), None, None


class _BlockContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, q, temperature, block):
        n = k.shape[0]
        lse = torch.empty(n, dtype=k.dtype, device=k.device)
        for r in range(0, n, block):
            kr = k[r:r + block]
            running = torch.full((len(kr),), -torch.inf, dtype=k.dtype, device=k.device)
            for c in range(0, n, block):
                running = torch.logaddexp(running, torch.logsumexp(kr @ q[c:c + block].T / temperature, 1))
            lse[r:r + block] = running
        positives = (k * q).sum(1) / temperature
        ctx.save_for_backward(k, q, lse)
        ctx.temperature, ctx.block = temperature, block
        return (lse - positives).mean()

    @staticmethod
    def backward(ctx, grad_out):
        k, q, lse = ctx.saved_tensors
        t, block, n = ctx.temperature, ctx.block, k.shape[0]
        grad = torch.empty_like(k)
        for r in range(0, n, block):
            kr, acc = k[r:r + block], torch.zeros_like(k[r:r + block])
            for c in range(0, n, block):
                qc = q[c:c + block]
                acc += torch.exp(kr @ qc.T / t - lse[r:r + block, None]) @ qc
            grad[r:r + block] = acc - q[r:r + block]
        return grad * (grad_out / (t * n)), None, None, None


def contrastive_loss(k: torch.Tensor, q: torch.Tensor, temperature: float = 0.07,
                     block_size: int | None = None) -> torch.Tensor:
    """InfoNCE over the N pairs, each pair's pixel the positive and the other N-1 pixels the negatives. Computed in
    float32 even under mixed precision: the custom backward reuses the forward's buffers, which autocast would
    otherwise make float16 beside float32 operands."""
    q = q.detach()
    dtype = torch.promote_types(torch.promote_types(k.dtype, q.dtype), torch.float32)  # float64 stays float64
    with torch.autocast(k.device.type, enabled=False):
        k, q = k.to(dtype), q.to(dtype)
        if block_size is None:
            return _PlainContrastive.apply(k, q, temperature)
        return _BlockContrastive.apply(k, q, temperature, block_size)


def superpixel_pool(x: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """SLidR's pooling: mean of the rows of ``x`` (N, D) per superpixel id ``segment`` (N,), re-normalised.
    Returns (S, D) for the S distinct ids, in ascending id order."""
    ids, inverse = torch.unique(segment, return_inverse=True)
    pooled = torch.zeros(len(ids), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    return torch.nn.functional.normalize(pooled, dim=1)


# -- similarity -------------------------------------------------------------------------------------------------------
def similarity_loss(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between paired features (needs no N x N matrix, so it has no block-wise form)."""
    return (1.0 - (k * q.detach()).sum(1)).mean()


# -- relational -------------------------------------------------------------------------------------------------------
def _relational_plain(k: torch.Tensor, q: torch.Tensor, intra_weight: float) -> torch.Tensor:
    n = k.shape[0]
    qq = q @ q.T
    cross = (k @ q.T - qq).abs()
    intra = (k @ k.T - qq).abs()
    off = ~torch.eye(n, dtype=torch.bool, device=k.device)
    return cross.diagonal().mean() + cross[off].mean() + intra_weight * intra[off].mean()


def _relation_blocks(k: torch.Tensor, q: torch.Tensor, block: int):
    """For every (row block r, column block c): r, c and the blocks of K Q^T - Q Q^T and K K^T - Q Q^T."""
    n = k.shape[0]
    for r in range(0, n, block):
        kr, qr = k[r:r + block], q[r:r + block]
        for c in range(0, n, block):
            qq = qr @ q[c:c + block].T
            yield r, c, kr @ q[c:c + block].T - qq, kr @ k[c:c + block].T - qq


class _BlockRelational(torch.autograd.Function):
    """The L1 relational loss block by block (the squared one has the cheaper exact Gram form)."""

    @staticmethod
    def forward(ctx, k, q, intra_weight, block):
        n = k.shape[0]
        diag = k.new_zeros(())
        cross_off = k.new_zeros(())
        intra_off = k.new_zeros(())
        for r, c, cross_diff, intra_diff in _relation_blocks(k, q, block):
            cross, intra = cross_diff.abs(), intra_diff.abs()
            if r == c:
                d = cross.diagonal().sum()
                diag = diag + d
                cross_off = cross_off + cross.sum() - d
                intra_off = intra_off + intra.sum() - intra.diagonal().sum()
            else:
                cross_off = cross_off + cross.sum()
                intra_off = intra_off + intra.sum()
        ctx.save_for_backward(k, q)
        ctx.intra_weight, ctx.block = intra_weight, block
        pairs = n * (n - 1)
        return diag / n + cross_off / pairs + intra_weight * intra_off / pairs

    @staticmethod
    def backward(ctx, grad_out):
        k, q = ctx.saved_tensors
        lam, block, n = ctx.intra_weight, ctx.block, k.shape[0]
        w_off = 1.0 / (n * (n - 1))
        grad = torch.zeros_like(k)
        for r, c, cross_diff, intra_diff in _relation_blocks(k, q, block):
            slope_c, slope_i = cross_diff.sign(), intra_diff.sign()
            w_c = torch.full_like(slope_c, w_off)
            w_i = torch.full_like(slope_i, 2 * lam * w_off)  # each unordered pair appears twice
            if r == c:
                w_c.fill_diagonal_(1.0 / n)
                w_i.fill_diagonal_(0.0)
            grad[r:r + block] += (w_c * slope_c) @ q[c:c + block] + (w_i * slope_i) @ k[c:c + block]
        return grad * grad_out, None, None, None


def _relational_gram(k: torch.Tensor, q: torch.Tensor, intra_weight: float) -> torch.Tensor:
    """The squared relational loss in O(N D^2) time and O(D^2) extra memory (see the module docstring), from the
    three Gram matrices K^T K, K^T Q and Q^T Q (Q^T Q needs no gradient): ``||K Q^T - Q Q^T||^2 =
    <K^T K, Q^T Q> - 2 <K^T Q, Q^T Q> + ||Q^T Q||^2``. Their Frobenius products are summed in float64, since each
    term is a difference of numbers of order N^2."""
    n = k.shape[0]
    with all_threads():  # the N x D x D products on every core, also inside a training loop (threads.py)
        kk, kq, qq = (k.T @ k).double(), (k.T @ q).double(), (q.T @ q).double()   # (D, D) each
    qq_sq = (qq * qq).sum()
    cross_all = (kk * qq).sum() - 2 * (kq * qq).sum() + qq_sq                  # ||(K - Q) Q^T||^2
    cross_diag = ((k - q) * q).sum(1).double().pow(2).sum()                    # sum_i ((k_i - q_i) . q_i)^2
    intra_all = (kk * kk).sum() - 2 * (kq * kq).sum() + qq_sq                   # ||K K^T - Q Q^T||^2
    intra_diag = ((k * k).sum(1) - (q * q).sum(1)).double().pow(2).sum()
    pairs = n * (n - 1)
    loss = cross_diag / n + (cross_all - cross_diag) / pairs + intra_weight * (intra_all - intra_diag) / pairs
    return loss.to(k.dtype)


def relational_loss(k: torch.Tensor, q: torch.Tensor, intra_weight: float = 1.0, p: int = 1,
                    block_size: int | None = None) -> torch.Tensor:
    """Cross-modal + ``intra_weight`` x intra-modal relational loss; ``p=1`` L1 (plain or block-wise), ``p=2``
    squared error (always the exact O(N D^2) Gram form)."""
    if p not in (1, 2):
        raise ValueError(f"p={p}: the relational loss takes p=1 (L1) or p=2 (squared error)")
    q = q.detach()
    if p == 2:
        return _relational_gram(k, q, intra_weight)
    if block_size is None:
        return _relational_plain(k, q, intra_weight)
    return _BlockRelational.apply(k, q, intra_weight, block_size)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Each loss by name, with the options it takes (the others do not concern it).
LOSSES: dict[str, Callable[..., LossFn]] = {
    "contrastive": lambda temperature, block_size, **_: (lambda k, q: contrastive_loss(k, q, temperature, block_size)),
    "similarity": lambda **_: similarity_loss,
    "relational": lambda intra_weight, p, block_size, **_: (
        lambda k, q: relational_loss(k, q, intra_weight, p, block_size)),
}
LOSS_NAMES = tuple(LOSSES)


def make_loss(name: str, temperature: float = 0.07, intra_weight: float = 1.0, p: int = 1,
              block_size: int | None = None) -> LossFn:
    """The loss called ``name`` with its options bound: contrastive, similarity or relational."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}': choose {', '.join(LOSS_NAMES)}")
    return LOSSES[name](temperature=temperature, intra_weight=intra_weight, p=p, block_size=block_size)
