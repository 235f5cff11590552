"""The training loop's schedule (engine/training.py); its reliability is tested in test_reliability.py."""
from __future__ import annotations

import math

import pytest
import torch

from relational_distill.engine.training import cosine_schedule


@pytest.mark.parametrize("total, warmup_fraction", [(100, 0.05), (7, 0.5), (10, 0.0)])
def test_cosine_schedule_against_its_formula(total, warmup_fraction):
    """Linear warm-up over max(1, floor(total x fraction)) steps to the base rate, then a half cosine to 0."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = cosine_schedule(optimizer, total, warmup_fraction)
    warmup = max(1, int(total * warmup_fraction))
    for step in range(total):
        expected = 0.5 * ((step + 1) / warmup if step < warmup else
                          0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        optimizer.step()
        scheduler.step()
