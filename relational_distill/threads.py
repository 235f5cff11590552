"""CPU threads in training. The student's sparse convolutions are thousands of small matrix products a step, and a
DataLoader worker loads beside them: with more threads than free cores they wait on each other (on 2 cores, one
worker and two threads made similarity distillation 1.2-2x slower than one thread). So the training loop gives each
worker a core and the student the rest, and the losses' large matrix products take every core
(docs/convergence.md, section 10)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

CORES = torch.get_num_threads()  # this process's intra-op threads when it started (OMP_NUM_THREADS, else the cores)


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Within the block, torch's CPU operations use ``n`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
