"""The training loop (engine/training.py): its schedule, its run folders (lock, resume, overwrite), divergence,
the data loader and threads (docs/reliability.md)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from relational_distill.checkpoint import CheckpointMeta, load_checkpoint
from relational_distill.cli import app
from relational_distill.engine import training
from relational_distill.engine.training import LoopConfig, TrainingDiverged, cosine_schedule, train
from relational_distill.errors import UserError

from .helpers import ROOT, TINY, copy_run, one_line, run_api, snapshot

runner = CliRunner()


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

    from typer.testing import CliRunner
    import yaml

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


# -- run folders, resume, divergence, loader and threads --------------------------------------------------------------
def test_run_folder_is_not_overwritten_by_accident(run, town, store_dir, tiny_config, tmp_path):
    out = copy_run(run, tmp_path)
    before = snapshot(out)
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "-q"])
    one_line(r, 2, str(out), "--resume", "--overwrite")
    assert snapshot(out) == before


def test_resume_with_nothing_to_resume(town, store_dir, tiny_config, tmp_path):
    out = tmp_path / "empty"
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--resume", "-q"])
    one_line(r, 2, "nothing to resume")
    assert not out.exists()
    # the engine's resume=True means the same: continue a run, never start one silently
    from relational_distill.config import load_config
    from relational_distill.engine.distill import DistillConfig, distill

    with pytest.raises(UserError, match="nothing to resume"):
        distill(town, store_dir, out, load_config(DistillConfig, tiny_config, {}), resume=True, quiet=True)
    assert not out.exists()


def test_log_of_a_run_killed_before_its_first_checkpoint_is_appended_to(town, store_dir, tiny_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    earlier = "".join(f'{{"step": {s}, "epoch": 0, "loss": 99.0}}\n' for s in range(1, 6)) + '{"step": 6, "ep'
    (out / "log.jsonl").write_text(earlier)  # 5 steps and a line cut short by the kill; the new run has 2 steps
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "-q"])
    assert r.exit_code == 0, r.output
    log = (out / "log.jsonl").read_text()
    assert log.startswith(earlier) and '\n{"event": "start"}\n' in log
    new = [json.loads(x)["loss"] for x in log.split('{"event": "start"}\n')[1].splitlines()]
    result = json.loads((out / "distill.json").read_text())
    assert len(new) == 2 and result["epochs"] == [{"epoch": 0, "mean_loss": pytest.approx(np.mean(new), rel=1e-12)}]


def test_overwrite_starts_again_and_says_so(run, town, store_dir, tiny_config, tmp_path):
    out = copy_run(run, tmp_path)
    (out / "log.jsonl").write_text('{"step": 99, "epoch": 7, "loss": 1.0}\n')
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--overwrite", "-q"])
    assert r.exit_code == 0, r.output
    assert "--overwrite: starting again" in r.output
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert 99 not in steps and load_checkpoint(out / "checkpoint.pt").epoch == 1


@pytest.mark.parametrize("flag", [["--num-pairs", "128"], ["--loss", "similarity"], ["--preset", "minkunet34"]])
def test_resume_with_a_setting_it_cannot_honour_is_refused(run, town, store_dir, tiny_config, tmp_path, flag):
    out = copy_run(run, tmp_path)
    before = snapshot(out)
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--resume", "--epochs", "2", *flag, "-q"])
    key = flag[0][2:].replace("-", "_")
    one_line(r, 2, f"{key}=", "--overwrite")
    assert snapshot(out) == before


def test_resume_applies_and_logs_a_new_lr_and_epochs(run, town, store_dir, tiny_config, tmp_path):
    out = copy_run(run, tmp_path)
    log_before = (out / "log.jsonl").read_text()
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--resume", "--epochs", "2", "--lr", "0.001", "-q"])
    assert r.exit_code == 0, r.output
    assert "lr 0.003 -> 0.001" in r.output
    log = (out / "log.jsonl").read_text()
    assert log.startswith(log_before)  # appended, nothing emptied
    rows = [json.loads(x) for x in log.splitlines()]
    event = next(r for r in rows if r.get("event") == "resume")
    assert event["changed"] == {"epochs": [1, 2], "lr": [0.003, 0.001]}
    # independent reference: the cosine schedule with warmup, by hand, for the new lr and the new total
    steps = [r for r in rows if "loss" in r]
    total = len(steps)
    warmup = max(1, int(total * TINY.get("warmup_fraction", 0.05)))
    for row in steps[total // 2:]:
        s = row["step"]  # logged after the scheduler's step: the lr of the next update
        factor = (s + 1) / warmup if s < warmup else 0.5 * (1 + np.cos(np.pi * min((s - warmup) / (total - warmup), 1)))
        assert row["lr"] == pytest.approx(0.001 * factor, rel=1e-9, abs=1e-15)
    assert load_checkpoint(out / "checkpoint.pt").meta.config["lr"] == 0.001


def test_nan_loss_via_cli_keeps_last_good_checkpoint(run, town, store_dir, tiny_config, tmp_path, monkeypatch):
    from relational_distill.engine import distill as distill_module

    out = copy_run(run, tmp_path)
    before = snapshot(out)
    real = distill_module.make_loss
    monkeypatch.setattr(distill_module, "make_loss", lambda *a, **k: (lambda q, k_, f=real(*a, **k): f(q, k_) * np.nan))
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--resume", "--epochs", "2", "-q"])
    one_line(r, 2, "loss became nan", "last good checkpoint", "(epoch 1)")
    assert {k: v for k, v in snapshot(out).items() if k != "log.jsonl"} == \
           {k: v for k, v in before.items() if k != "log.jsonl"}
    assert (out / "log.jsonl").read_bytes().startswith(before["log.jsonl"])


class _Points(torch.utils.data.Dataset):
    """8 tiny samples in the format ``collate`` takes, keyed by (epoch, i) as ``train`` asks; the same each epoch."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, key: tuple[int, int]) -> dict:
        _, i = key
        g = torch.Generator().manual_seed(i)
        return {"token": str(i), "points": torch.randn(4, 5, generator=g), "labels": torch.zeros(4, dtype=torch.long)}


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose update explodes the weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


_META = CheckpointMeta(kind="distill", out_dim=2, preset="small", voxel={}, teacher_id="test", dataroot="-",
                       version="-", dataset_fingerprint="-", config={"lr": 0.01})


def _linear_step(model, batch, step):
    x = batch["points"].to(next(model.parameters()).dtype)
    return model(x).pow(2).mean()


def test_weights_that_become_nan_with_a_finite_loss_are_never_saved(tmp_path, capsys):
    model = torch.nn.Linear(5, 2)
    cfg = LoopConfig(out=tmp_path / "r", epochs=3, batch_size=2, workers=0, quiet=True)

    def step(m, batch, s):
        loss = _linear_step(m, batch, s)
        return _InfiniteGradient.apply(loss) if s == 7 else loss  # last step of epoch 2: finite loss, inf update

    with pytest.raises(TrainingDiverged):
        train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(), step, _META)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    before = ckpt.read_bytes()
    assert load_checkpoint(ckpt).epoch == 1 and all(torch.isfinite(t).all() for t in load_checkpoint(ckpt).model.values())
    cfg.resume = True
    model = torch.nn.Linear(5, 2)
    code, err = run_api(lambda: train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(), step,
                                      _META), capsys)
    assert code == 2 and err.count("\n") == 1 and "weights became NaN or infinite" in err and "(epoch 1)" in err
    assert ckpt.read_bytes() == before


def test_resume_moves_the_model_before_loading_the_optimizer_state(tmp_path, monkeypatch):
    """A fake device move (to float64, as a GPU move changes where tensors live): the optimiser state loaded on
    resume must follow the parameters, which it does only if the model moved first."""
    made = []
    real = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 2)
        model.to = lambda *a, **k: torch.nn.Module.to(model, torch.float64)
        return model

    cfg = LoopConfig(out=tmp_path / "r", epochs=1, batch_size=2, workers=0, quiet=True)
    model = fresh()
    train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(), _linear_step, _META)
    cfg.epochs, cfg.resume = 2, True
    model = fresh()
    train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(), _linear_step, _META)
    optimizer = made[-1]
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p.dtype == torch.float64
            for name, value in optimizer.state[p].items():
                if name != "step":
                    assert value.dtype == torch.float64, name


class _KeyedPoints(_Points):
    """9 samples whose token says which (epoch, i) was asked for, and by which process."""

    def __len__(self) -> int:
        return 9

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return {**super().__getitem__(key), "token": (*key, os.getpid())}


def test_every_epoch_reads_its_own_order_from_one_worker_started_once(tmp_path):
    """Three epochs of 9 samples in batches of 2: each epoch's 4 steps read that epoch's seeded permutation in
    order (the ninth sample dropped), keyed by its epoch; one DataLoader worker serves the whole run."""
    seen = []

    def step(model, batch, s):
        seen.append(batch["tokens"])
        return _linear_step(model, batch, s)

    model = torch.nn.Linear(5, 2)
    cfg = LoopConfig(out=tmp_path / "r", epochs=3, batch_size=2, seed=4, workers=1, quiet=True)
    train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _KeyedPoints(), step, _META)
    want = []
    for epoch in range(3):
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(4 * 100_003 + epoch)).tolist()
        want += [[(epoch, i) for i in perm[b:b + 2]] for b in (0, 2, 4, 6)]
    assert [[(e, i) for e, i, _ in tokens] for tokens in seen] == want
    pids = {pid for tokens in seen for _, _, pid in tokens}
    assert len(pids) == 1 and os.getpid() not in pids


def test_training_on_cpu_leaves_a_core_to_each_worker_and_restores_the_threads(tmp_path):
    """Inside the loop the student has the cores the DataLoader worker does not take (at least one), the losses'
    large products every core; after it, the caller's thread count is back."""
    from relational_distill.losses import contrastive_loss

    seen = []
    real_mm = torch.Tensor.__matmul__

    def step(model, batch, s):
        seen.append(("step", torch.get_num_threads()))
        k = torch.nn.functional.normalize(torch.randn(8, 4, requires_grad=True), dim=1)
        contrastive_loss(k, torch.nn.functional.normalize(torch.randn(8, 4), dim=1))
        return _linear_step(model, batch, s)

    def mm(a, b):
        seen.append(("mm", torch.get_num_threads()))
        return real_mm(a, b)

    before = torch.get_num_threads()
    model = torch.nn.Linear(5, 2)
    cfg = LoopConfig(out=tmp_path / "r", epochs=1, batch_size=2, workers=1, quiet=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "__matmul__", mm)
        train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(), step, _META)
    assert {n for what, n in seen if what == "step"} == {max(1, before - 1)}
    assert {n for what, n in seen if what == "mm"} == {before}
    assert torch.get_num_threads() == before


def test_global_batch_must_divide_over_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "init_distributed", lambda device: training.Distributed(0, 2))
    model = torch.nn.Linear(5, 2)
    cfg = LoopConfig(out=tmp_path / "r", epochs=1, batch_size=3, workers=0, quiet=True)
    code, err = run_api(lambda: train(cfg, model, [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(),
                                      _linear_step, _META), capsys)
    assert code == 2 and err.count("\n") == 1 and "global batch" in err and "multiple of the 2 processes" in err
    assert not (tmp_path / "r").exists()


_DDP_SCRIPT = '''
import sys, torch
from relational_distill.checkpoint import CheckpointMeta
from relational_distill.engine.training import LoopConfig, TrainingDiverged, train
from tests.test_training import _META, _Points, _linear_step

def step(model, batch, s):
    loss = _linear_step(model, batch, s)
    return loss * float("nan") if torch.distributed.get_rank() == 1 and s == 5 else loss

torch.manual_seed(0)
model = torch.nn.Linear(5, 2)
try:
    train(LoopConfig(out=sys.argv[1], epochs=3, batch_size=2, workers=0, quiet=True), model,
          [{"params": model.parameters(), "lr": 0.01}], 0.0, _Points(), step, _META)
except TrainingDiverged as err:
    print(f"rank {torch.distributed.get_rank()} stopped: {err}", flush=True)
    sys.exit(2)
print("finished", flush=True)
'''


def test_nan_on_one_ddp_rank_stops_every_rank(tmp_path):
    script = tmp_path / "ddp_nan.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "r")], capture_output=True, text=True, timeout=180, env=env,
                          cwd=ROOT)
    assert proc.returncode != 0
    assert "rank 0 stopped" in proc.stdout and "rank 1 stopped" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "finished" not in proc.stdout
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt").epoch == 1  # the last good one


