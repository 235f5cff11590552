"""CPU threads in training. The student's sparse convolutions are thousands of small matrix products a step, and a
DataLoader worker loads beside them: with more threads than free cores they wait on each other (on 2 cores, one
worker and two threads made similarity distillation 1.2-2x slower than one thread). So the training loop gives each
worker a core and the student the rest, and the losses' large matrix products take every thread the caller had
(docs/convergence.md, section 10)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_budgets: list[int] = []  # the caller's thread count, while a training loop runs


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Within the block, torch's CPU operations use ``n`` threads (at least one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def training_threads(workers: int) -> Iterator[None]:
    """A training loop on CPU: the caller's threads less one for each of ``workers`` DataLoader workers."""
    _budgets.append(torch.get_num_threads())
    try:
        with cpu_threads(_budgets[-1] - workers):
            yield
    finally:
        _budgets.pop()


@contextmanager
def all_threads() -> Iterator[None]:
    """A large matrix product: every thread of the caller's budget, also inside a training loop."""
    with cpu_threads(_budgets[-1] if _budgets else torch.get_num_threads()):
        yield
