"""Structure and segmentation metrics against brute-force loops, torch.pdist and nuscenes-devkit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nuscenes.eval.lidarseg.utils import ConfusionMatrix

from relational_distill.metrics.segmentation import confusion_matrix, miou
from relational_distill.metrics.structure import (modality_gap, sample_per_class, tolerance, uniformity,
                                                  uniformity_sampled)


def unit(n, d, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, d, generator=g, dtype=torch.float64)
    return F.normalize(base + spread * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def test_uniformity_matches_loops_and_pdist():
    z = unit(30, 5, 0)
    total = sum(math.exp(-2 * float(((z[a] - z[b]) ** 2).sum())) for a in range(30) for b in range(30) if a != b)
    brute = -math.log(total / (30 * 29))
    pdist = -torch.log(torch.exp(-2 * torch.pdist(z).pow(2)).mean()).item()
    assert uniformity(z) == pytest.approx(brute, rel=1e-12)
    assert uniformity(z) == pytest.approx(pdist, rel=1e-12)
    for block in (1, 7, 30, 64):
        assert uniformity(z, block_size=block) == pytest.approx(pdist, rel=1e-10)


def test_uniformity_ranks_spread():
    assert uniformity(unit(200, 8, 1, spread=0.2)) < uniformity(unit(200, 8, 1, spread=3.0))


def test_sampled_uniformity_interval_covers_exact():
    z = unit(400, 6, 2)
    est, (lo, hi) = uniformity_sampled(z, pairs=100_000)
    assert lo <= uniformity(z) <= hi and lo < est < hi


def test_tolerance_and_gap_match_loops():
    z = unit(25, 4, 3)
    labels = torch.tensor([i % 3 for i in range(25)])
    sims = [float(z[a] @ z[b]) for a in range(25) for b in range(25) if a != b and labels[a] == labels[b]]
    assert tolerance(z, labels) == pytest.approx(sum(sims) / len(sims), rel=1e-12)
    a, b = unit(10, 4, 4), unit(10, 4, 5)
    want = math.sqrt(sum((float(a[:, d].mean()) - float(b[:, d].mean())) ** 2 for d in range(4)))
    assert modality_gap(a, b) == pytest.approx(want, rel=1e-12)


def test_sample_per_class_caps_each_class():
    labels = torch.tensor([0] * 5 + [1] * 50 + [2] * 3)
    idx = sample_per_class(labels, per_class=10)
    counts = torch.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [0, 10, 3]


def test_confusion_matrix_brute_force():
    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 17, 500), rng.integers(0, 17, 500)
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt))
    want = np.zeros((17, 17), np.int64)
    for g, p in zip(gt, pred):
        if g != 0 and p != 0:
            want[g, p] += 1
    np.testing.assert_array_equal(conf.numpy(), want)


def test_miou_equals_devkit():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 17, 5000)
    gt[gt == 5] = 7  # class 5 absent from ground truth
    pred = np.where(rng.random(5000) < 0.6, gt, rng.integers(1, 17, 5000))
    pred[pred == 0] = 1
    pred[pred == 9] = 10  # class 9 never predicted
    devkit = ConfusionMatrix(17, ignore_idx=0)
    devkit.update(gt, pred)
    iou, mean = miou(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt)))
    np.testing.assert_allclose(np.nan_to_num(iou.numpy(), nan=-1),
                               np.nan_to_num(np.array(devkit.get_per_class_iou(), dtype=float), nan=-1))
    assert mean == pytest.approx(devkit.get_mean_iou(), rel=1e-12)


def test_absent_classes_left_out():
    conf = confusion_matrix(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2]))
    iou, mean = miou(conf)
    assert math.isnan(iou[3]) and mean == pytest.approx((0.5 + 0.5) / 2)


def test_paired_bootstrap_against_a_direct_computation():
    """The interval is the quantiles of the mean difference over resampled seeds, recomputed here with a loop over
    the same draws; and the verdicts follow its sign."""
    import numpy as np

    from relational_distill.metrics.paired import paired_bootstrap

    a, b = [0.40, 0.35, 0.42, 0.38], [0.30, 0.33, 0.36, 0.31]
    res = paired_bootstrap(a, b, resamples=2000, level=0.9, seed=3)
    draws = np.random.default_rng(3).integers(0, 4, size=(2000, 4))
    means = sorted(sum(a[i] - b[i] for i in row) / 4 for row in draws)
    def quantile(q):  # numpy's default (linear) rule, by hand
        pos = q * (len(means) - 1)
        lo = int(pos)
        return means[lo] + (means[min(lo + 1, len(means) - 1)] - means[lo]) * (pos - lo)
    assert res.mean == pytest.approx(sum(x - y for x, y in zip(a, b)) / 4, abs=1e-12)
    assert res.low == pytest.approx(quantile(0.05), abs=1e-12) and res.high == pytest.approx(quantile(0.95), abs=1e-12)
    assert res.verdict == "holds"
    assert paired_bootstrap(b, a).verdict == "does not hold"
    assert paired_bootstrap([0.3, 0.5, 0.4], [0.4, 0.3, 0.45]).verdict == "not resolved"
