"""Long jobs stopped by SIGINT / SIGTERM (interrupt.py): one line, the exit code, nothing half-written, a bit-identical
resume (docs/reliability.md)."""
from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from relational_distill.checkpoint import load_checkpoint
from relational_distill.cli import app
from relational_distill.teachers.store import FeatureStore

from .helpers import ROOT, TINY

runner = CliRunner()


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _cli(args: list[str]) -> subprocess.Popen:
    # the same thread count as this process, so that a run finished here is bit-comparable with one started there
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "relational_distill.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_make_sim_stops_with_its_workers_and_leaves_nothing(tmp_path, signum):
    out = tmp_path / "town"
    proc = _cli(["make-sim", str(out), "--scenes", "8", "--samples-per-scene", "3", "--image-size", "192x112",
                 "--workers", "2", "-q"])
    _wait_for(lambda: len(_children(proc.pid)) >= 2 and list(tmp_path.glob(".town.*.tmp")), proc)
    workers = _children(proc.pid)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({signal.Signals(signum).name})"), err
    assert "nothing was written" in lines[0]
    assert list(tmp_path.iterdir()) == []
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)]


def test_precompute_stopped_by_sigterm_is_resumable(town, index, tmp_path):
    out = tmp_path / "f"
    proc = _cli(["precompute", str(town), "--out", str(out), "--image-size", "192x112", "-q"])
    _wait_for(lambda: len(list((out / "features").glob("*.npy.sha256"))) >= 1 if (out / "features").exists() else False,
              proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().count("\n") == 0 and "run the same command again" in err
    assert not list(out.rglob("*.tmp"))
    done = list((out / "features").glob("*.npy.sha256"))  # a .npy without its hash is redone
    r = runner.invoke(app, ["precompute", str(town), "--out", str(out), "--image-size", "192x112", "-q"])
    assert r.exit_code == 0, r.output
    store = FeatureStore.open(out)
    assert all(store.is_valid(s["token"]) for s in index.samples)
    assert f"computed {len(index.samples) - len(done)} samples" in r.output


@pytest.mark.parametrize("command, signum", [("distill", signal.SIGTERM), ("finetune", signal.SIGINT)])
def test_training_stopped_by_a_signal_resumes_bit_identically(run, town, store_dir, tmp_path, command, signum):
    cfg = tmp_path / "c.yaml"
    if command == "distill":
        cfg.write_text("".join(f"{k}: {v}\n" for k, v in {**TINY, "epochs": 3, "workers": 1}.items()))
        head = ["distill", str(town), "--features", str(store_dir)]
    else:
        cfg.write_text("fraction: 1.0\nepochs: 3\nbatch_size: 2\nworkers: 1\n")
        head = ["finetune", str(run / "checkpoint.pt")]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = _cli([*head, "--out", str(killed), "--config", str(cfg), "-q"])
    _wait_for(lambda: (killed / "checkpoint.pt").exists(), proc)
    workers = _children(proc.pid)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run the same command with --resume" in lines[0], err
    stopped_at = load_checkpoint(killed / "checkpoint.pt").epoch
    assert 1 <= stopped_at < 3
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)]
    for args in ([*head, "--out", str(killed), "--config", str(cfg), "--resume", "-q"],
                 [*head, "--out", str(straight), "--config", str(cfg), "-q"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    assert a.epoch == b.epoch == 3
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=0, msg=key)


def test_a_stop_inside_deferred_is_raised_by_the_next_check_not_inside():
    from relational_distill.interrupt import Interrupted, check, deferred, stop_on_signals

    finished = []
    with stop_on_signals():
        with pytest.raises(Interrupted) as stop:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)  # the handler has run by now
                finished.append(True)
            check()
    assert finished == [True] and stop.value.signum == signal.SIGTERM
