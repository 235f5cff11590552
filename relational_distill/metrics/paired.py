"""Paired comparisons over seeds: is variant A better than variant B, seed for seed? (docs/method.md, "The
paper's claims"). Pure numpy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VERDICTS = ("holds", "does not hold", "not resolved")


@dataclass(frozen=True)
class PairedDifference:
    mean: float            # mean over seeds of a_i - b_i
    low: float             # the percentile bootstrap interval of that mean
    high: float
    seeds: int

    @property
    def verdict(self) -> str:
        """"holds" when the whole interval is above 0 (A > B), "does not hold" when it is below, else
        "not resolved"."""
        return VERDICTS[0] if self.low > 0 else VERDICTS[1] if self.high < 0 else VERDICTS[2]


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> PairedDifference:
    """Mean of the paired differences ``a[i] - b[i]`` (one pair per seed) with a percentile bootstrap interval:
    ``resamples`` draws of the seeds with replacement (numpy ``default_rng(seed).integers``), the mean difference
    of each, and its ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's linear interpolation)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists (one value per seed)")
    draws = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[draws].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(float(d.mean()), float(low), float(high), len(d))
