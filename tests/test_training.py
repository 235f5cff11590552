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


def test_two_trainings_into_one_folder_one_refuses(town, store_dir, tmp_path):
    """A distill running in a folder holds its lock: a second distill into it is refused in one line (exit 2)
    and the first finishes into a valid run; after a kill the lock is free again (the OS drops it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from typer.testing import CliRunner

    from relational_distill.checkpoint import load_checkpoint
    from relational_distill.cli import app
    from relational_distill.io import LOCK_FILE

    out, config = tmp_path / "run", tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(dict(preset="small", epochs=4, batch_size=2, num_pairs=256, pairs_per_sample=512,
                                          workers=0, loss="similarity")))
    args = ["distill", str(town), "--features", str(store_dir), "--out", str(out), "--config", str(config), "-q"]
    cmd = [sys.executable, "-c", "from relational_distill.cli import app; app()", *args]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / LOCK_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 2, second.output
    lines = [line for line in second.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "another rdistill process" in lines[0] and str(first.pid) in lines[0]
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert load_checkpoint(out / "checkpoint.pt").epoch == 4 and not (out / LOCK_FILE).exists()
    # a killed holder leaves its lock file behind, but not its lock: a resume takes the folder
    killed = subprocess.Popen([*cmd, "--resume", "--epochs", "8"], stderr=subprocess.DEVNULL)
    while not (out / LOCK_FILE).exists() and time.time() < deadline + 120:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (out / LOCK_FILE).exists()
    again = CliRunner().invoke(app, [*args, "--resume", "--epochs", "5"])
    assert again.exit_code == 0, again.output
    assert load_checkpoint(out / "checkpoint.pt").epoch >= 5
