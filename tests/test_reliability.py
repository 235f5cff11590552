"""docs/reliability.md, one test per row: each fault or bad input, the exit code, the one-line message, and that
no earlier result changed. Fault injection by truncating, flipping bytes, crafting pickles, regenerating a
dataset in place and sending SIGINT / SIGTERM to a subprocess."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from relational_distill.checkpoint import CheckpointMeta, load_checkpoint
from relational_distill.cli import app, user_errors
from relational_distill.engine import training
from relational_distill.engine.training import LoopConfig, TrainingDiverged, train
from relational_distill.errors import UserError
from relational_distill.teachers.store import FeatureStore

from .conftest import TOWN_IMAGE

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
TINY = dict(preset="small", epochs=1, batch_size=2, num_pairs=256, pairs_per_sample=512, lr=0.003, workers=0)


# -- helpers ------------------------------------------------------------------------------------------------------
def one_line(result, code: int = 2, *fragments: str) -> str:
    """The single error line of a CLI result with exit code ``code``, containing every fragment (a resumed run's
    note of the settings it applies may come before it)."""
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip() and not ln.startswith("resuming ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but TensorBoard's event files, which (like log.jsonl) each run only adds to."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and "tensorboard" not in p.relative_to(folder).parts}


def run_api(fn, capsys) -> tuple[int, str]:
    """Call ``fn`` behind the CLI's error handling: (exit code, stderr)."""
    try:
        user_errors(fn)()
        code = 0
    except typer.Exit as exit_:
        code = exit_.exit_code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))
    return path


@pytest.fixture(scope="module")
def run(town, store_dir, tiny_config, tmp_path_factory) -> Path:
    """A finished 1-epoch distill run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "-q"])
    assert r.exit_code == 0, r.output
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# -- checkpoints ----------------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("command", ["evaluate", "finetune", "analyze"])
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, command):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": 2, "model": _Evil(str(marker))}, evil)
    args = {"evaluate": ["evaluate", str(evil), "--zero-shot"], "analyze": ["analyze", str(evil)],
            "finetune": ["finetune", str(evil), "--out", str(tmp_path / "ft")]}[command]
    one_line(runner.invoke(app, args + ["-q"]), 2, str(evil), "nothing in it was run")
    assert not marker.exists()
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "flipped byte", "no format", "older format",
                                    "weights do not fit"])
def test_damaged_checkpoint_is_one_line(run, tmp_path, damage):
    ckpt = copy_run(run, tmp_path) / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    if damage == "random bytes":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":  # inside the first weight tensor's storage; the file keeps its size
        with zipfile.ZipFile(ckpt) as z:
            info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
        name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:info.header_offset + 30]), "<u2")
        data[info.header_offset + 30 + int(name_len) + int(extra_len) + 16] ^= 0x40  # local header, then the bytes
        ckpt.write_bytes(data)
    elif damage == "no format":
        torch.save({"model": {}, "meta": {}}, ckpt)
    elif damage == "older format":  # rdistill 0.1 stored the numpy RNG state as an ndarray: not weights-only
        torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}}, ckpt)
    else:  # a well-formed checkpoint whose meta names another student than its weights
        from dataclasses import replace

        from relational_distill.checkpoint import save_checkpoint

        state = load_checkpoint(ckpt)
        save_checkpoint(ckpt, replace(state.meta, preset="minkunet34"), state.model, state.epoch, state.step)
    before = ckpt.read_bytes()
    expected = {"random bytes": "nothing in it was run", "truncated": "truncated", "flipped byte": "sha256",
                "no format": "no format version", "older format": "older rdistill",
                "weights do not fit": "do not fit the student"}[damage]
    one_line(runner.invoke(app, ["evaluate", str(ckpt), "--zero-shot", "-q"]), 2, str(ckpt), expected)
    assert ckpt.read_bytes() == before


def test_checkpoint_of_the_wrong_kind(run, tmp_path):
    ft = tmp_path / "ft"
    torch.manual_seed(0)
    r = runner.invoke(app, ["finetune", str(run / "checkpoint.pt"), "--out", str(ft), "--epochs", "0", "-q"])
    assert r.exit_code == 0, r.output
    one_line(runner.invoke(app, ["finetune", str(ft / "checkpoint.pt"), "--out", str(tmp_path / "ft2"), "-q"]), 2,
             "'finetune' checkpoint", "distill")


# -- runs -----------------------------------------------------------------------------------------------------------
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
from tests.test_reliability import _META, _Points, _linear_step

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


# -- feature stores -------------------------------------------------------------------------------------------------
@pytest.fixture()
def store_copy(store_dir, tmp_path) -> Path:
    dst = tmp_path / "features"
    shutil.copytree(store_dir, dst)
    return dst


def test_changed_feature_bytes_are_refused_and_precompute_redoes_only_them(town, store_copy, index, tiny_config,
                                                                        tmp_path):
    store = FeatureStore.open(store_copy)
    token = index.split("train")[0]["token"]
    victim = store.path(token)
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0x01  # same size, one bit of one feature
    victim.write_bytes(data)
    (tmp_path / "w.yaml").write_text(tiny_config.read_text().replace("workers: 0", "workers: 1"))
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_copy), "--out", str(tmp_path / "x"),
                            "--config", str(tmp_path / "w.yaml"), "-q"])  # read in a DataLoader worker
    one_line(r, 2, victim.name, "sha256 mismatch", "precompute")
    others = {k: v for k, v in snapshot(store_copy).items() if token not in k}
    r = runner.invoke(app, ["precompute", str(town), "--out", str(store_copy), "--teacher", "sim-clip:clean", "--image-size", "192x112", "-q"])
    assert r.exit_code == 0, r.output
    assert "computed 1 samples" in r.output
    assert store.is_valid(token)
    after = snapshot(store_copy)
    assert all(after[k] == v for k, v in others.items() if k not in ("summary.json", "manifest.json"))


def test_store_of_the_town_that_used_to_live_there_is_refused(tmp_path, tiny_config):
    from relational_distill.sim.writer import SimConfig, make_town

    town = tmp_path / "town"
    make_town(town, SimConfig(scenes=2, samples_per_scene=1, seed=1, image_size=(64, 64)), workers=1)
    r = runner.invoke(app, ["precompute", str(town), "--out", str(tmp_path / "f"), "--image-size", "64x64", "-q"])
    assert r.exit_code == 0, r.output
    store_before = snapshot(tmp_path / "f")
    shutil.rmtree(town)  # regenerated in place with another seed
    make_town(town, SimConfig(scenes=2, samples_per_scene=1, seed=2, image_size=(64, 64)), workers=1)
    old = json.loads((tmp_path / "f" / "manifest.json").read_text())["dataset_fingerprint"][:12]
    r = runner.invoke(app, ["distill", str(town), "--features", str(tmp_path / "f"), "--out", str(tmp_path / "run"),
                            "--config", str(tiny_config), "-q"])
    line = one_line(r, 2, "manifest.json", old, str(town.resolve()))
    assert "now holds dataset" in line
    r = runner.invoke(app, ["precompute", str(town), "--out", str(tmp_path / "f"), "--image-size", "64x64", "-q"])
    one_line(r, 2, "made for dataset", old)
    assert snapshot(tmp_path / "f") == store_before and not (tmp_path / "run").exists()


def test_finished_precompute_rerun_only_checks(town, store_copy, monkeypatch):
    from relational_distill.engine import precompute as precompute_module

    before = snapshot(store_copy)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the teacher summary was measured again")

    monkeypatch.setattr(precompute_module, "teacher_summary", must_not_run)
    start = time.perf_counter()
    r = runner.invoke(app, ["precompute", str(town), "--out", str(store_copy), "--teacher", "sim-clip:clean", "--image-size", "192x112", "-q"])
    seconds = time.perf_counter() - start
    assert r.exit_code == 0, r.output
    assert "computed 0 samples" in r.output and "uniformity U" in r.output
    assert snapshot(store_copy) == before
    assert seconds < 10, seconds


def test_store_manifest_records_every_file_hash(store_copy, index):
    import hashlib

    manifest = json.loads((store_copy / "manifest.json").read_text())
    files = manifest["files"]
    assert len(files) == len(index.samples) + 1
    for rel, sha in files.items():
        assert hashlib.sha256((store_copy / rel).read_bytes()).hexdigest() == sha


def test_store_of_an_older_format_is_refused(town, store_copy, tiny_config, tmp_path):
    manifest = json.loads((store_copy / "manifest.json").read_text())
    manifest["format"] = 1
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_copy), "--out", str(tmp_path / "x"),
                            "--config", str(tiny_config), "-q"])
    one_line(r, 2, "store format 1", "new folder")


def test_changed_text_embeddings_are_refused(run, store_copy, tmp_path):
    path = store_copy / "text_embeddings.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    r = runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--features", str(store_copy),
                            "--out", str(tmp_path / "zs"), "-q"])
    one_line(r, 2, "text_embeddings.pt", "sha256 mismatch")
    assert not (tmp_path / "zs" / "zero_shot.json").exists()


# -- configs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, fragments", [
    ("lr: '1e-3'", ["lr = '1e-3' (str)", "a number > 0"]),
    ("lr: -0.1", ["lr = -0.1", "a number > 0"]),
    ("batch_size: 0", ["batch_size = 0", "an integer >= 1"]),
    ("epochs: 2.5", ["epochs = 2.5", "an integer >= 0"]),
    ("augment: 'yes'", ["augment = 'yes'", "true or false"]),
    ("warmup_fraction: 1.5", ["warmup_fraction = 1.5", "in [0, 1]"]),
    ("optimizer: adam", ["optimizer = 'adam'", "one of adamw, sgd"]),
    ("eval_every: -1", ["eval_every = -1", "an integer >= 0"]),
    ("num_pairs: 0", ["num_pairs = 0", "an integer >= 1 (or null)"]),
    ("epochs: 1\nbogus: 3", ["unknown key(s) bogus"]),
])
def test_bad_config_values_are_one_line(town, store_dir, tmp_path, text, fragments):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(tmp_path / "x"),
                            "--config", str(bad), "-q"])
    one_line(r, 2, str(bad), *fragments)
    assert not (tmp_path / "x").exists()


def test_bad_flag_values_are_one_line(town, store_dir, tmp_path):
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(tmp_path / "x"),
                            "--lr", "-1", "-q"])
    one_line(r, 2, "--lr", "lr = -1.0", "a number > 0")
    r = runner.invoke(app, ["make-sim", str(tmp_path / "t"), "--samples-per-scene", "0", "-q"])
    one_line(r, 2, "samples_per_scene=0")
    assert not (tmp_path / "t").exists() and not (tmp_path / "x").exists()


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    from relational_distill.config import load_config
    from relational_distill.engine.distill import DistillConfig

    (tmp_path / "c.yaml").write_text("lr: 1e-3\nweight_decay: 5E-5\n")
    cfg = load_config(DistillConfig, tmp_path / "c.yaml", {})
    assert cfg.lr == 0.001 and cfg.weight_decay == 5e-5


def test_null_means_every_pair(tmp_path):
    from relational_distill.config import load_config
    from relational_distill.engine.distill import DistillConfig

    (tmp_path / "c.yaml").write_text("num_pairs: null\npairs_per_sample: null\neval_every: 2\n")
    cfg = load_config(DistillConfig, tmp_path / "c.yaml", {})
    assert cfg.num_pairs is None and cfg.pairs_per_sample is None and cfg.eval_every == 2


def test_config_by_name_or_path(tmp_path):
    from relational_distill.config import CONFIG_DIR, load_config
    from relational_distill.engine.distill import DistillConfig

    by_name = load_config(DistillConfig, Path("distill_cpu"), {})
    by_path = load_config(DistillConfig, ROOT / "configs" / "distill_cpu.yaml", {})
    assert by_name == by_path and CONFIG_DIR.resolve() == (ROOT / "configs").resolve()
    with pytest.raises(UserError, match="distill_cpu, distill_gpu"):
        load_config(DistillConfig, Path("distill_nope"), {})


# -- answers instead of tracebacks ----------------------------------------------------------------------------------
def test_dataset_without_lidarseg_labels(run, town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    (copy / "v1.0-sim" / "lidarseg.json").unlink()
    r = runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--dataroot", str(copy),
                            "--out", str(tmp_path / "zs"), "-q"])
    one_line(r, 2, "no lidarseg labels")
    assert not (tmp_path / "zs" / "zero_shot.json").exists()


def test_nan_miou_is_written_as_null_with_a_reason(run, town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    for f in (copy / "lidarseg").rglob("*.bin"):  # every point labelled 0 (noise -> ignored)
        f.write_bytes(bytes(f.stat().st_size))
    r = runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--dataroot", str(copy),
                            "--out", str(tmp_path / "zs"), "-q"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "zs" / "zero_shot.json").read_text()
    assert "NaN" not in text
    result = json.loads(text)
    assert result["miou"] is None and "no labelled point" in result["miou_null_reason"]


def test_truncated_table_json(town, tmp_path):
    copy = tmp_path / "town"
    shutil.copytree(town, copy)
    table = copy / "v1.0-sim" / "sample_data.json"
    table.write_bytes(table.read_bytes()[:-50])
    one_line(runner.invoke(app, ["inspect", str(copy), "-q"]), 2, str(table), "not valid JSON")


def test_unknown_device(run, town, store_dir, tmp_path):
    one_line(runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--device", "gpu", "-q"]), 2,
             "--device gpu", "cpu, cuda or cuda:N")
    one_line(runner.invoke(app, ["precompute", str(town), "--out", str(tmp_path / "f"), "--device", "gpu", "-q"]), 2,
             "--device gpu")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left")])
def test_read_only_or_full_output_folder(run, town, store_dir, tiny_config, tmp_path, monkeypatch, code, words):
    """Tests run as root here, where chmod cannot make a folder read-only: the OS error is injected where every
    checkpoint write ends (the fsync of its temporary file)."""
    import relational_distill.io as rio

    out = copy_run(run, tmp_path)
    before = snapshot(out)

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rio.os, "fsync", fail)
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "--resume", "--epochs", "2", "-q"])
    one_line(r, 2, words, "checkpoint.pt")
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# -- long jobs: signals, disk space, umask ----------------------------------------------------------------------------
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
    _wait_for(lambda: len(_children(proc.pid)) >= 2 and list(tmp_path.glob("town.partial-*")), proc)
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


def test_make_sim_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    from collections import namedtuple

    from relational_distill.sim import writer

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    r = runner.invoke(app, ["make-sim", str(tmp_path / "t"), "--scenes", "4", "-q"])
    one_line(r, 2, "MiB free", "--scenes")
    assert list(tmp_path.iterdir()) == []


def test_make_sim_size_estimate_is_an_upper_bound_of_the_real_size(town):
    from relational_distill.sim.writer import SimConfig, estimated_bytes

    real = sum(p.stat().st_size for p in town.rglob("*") if p.is_file())
    estimate = estimated_bytes(SimConfig(scenes=3, samples_per_scene=2, seed=3, image_size=TOWN_IMAGE))
    assert real <= estimate <= 1.5 * real


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    from relational_distill.io import atomic_torch_save, atomic_write_json

    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save(tmp_path / "b.pt", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_evaluate_and_analyze_find_moved_data(run, town, store_dir, tmp_path):
    moved_town, moved_store = tmp_path / "moved-town", tmp_path / "moved-features"
    shutil.copytree(town, moved_town)
    shutil.copytree(store_dir, moved_store)
    from dataclasses import replace

    from relational_distill.checkpoint import save_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    state = load_checkpoint(run / "checkpoint.pt")
    gone = replace(state.meta, dataroot=str(tmp_path / "gone-town"), features=str(tmp_path / "gone-features"))
    save_checkpoint(ckpt, gone, state.model, state.epoch, state.step, state.training)
    one_line(runner.invoke(app, ["evaluate", str(ckpt), "--zero-shot", "-q"]), 2, "gone-")
    r = runner.invoke(app, ["evaluate", str(ckpt), "--zero-shot", "--features", str(moved_store), "--dataroot",
                            str(moved_town), "--out", str(tmp_path / "zs"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(ckpt), "--features", str(moved_store), "--dataroot", str(moved_town),
                            "--per-class", "100", "--out", str(tmp_path / "an"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "an" / "analysis.json").read_text())["features"] > 0


# -- packaging ------------------------------------------------------------------------------------------------------
def test_every_package_is_in_the_wheel_list():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "relational_distill").rglob("__init__.py")}
    assert found | {"relational_distill.configs"} == listed


def test_wheel_ships_the_configs(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    for name in ("relational_distill", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PIP_NO_CACHE_DIR="1"))
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))).namelist()
    for config in sorted(p.name for p in (ROOT / "configs").glob("*.yaml")):
        assert f"relational_distill/configs/{config}" in names
    assert "relational_distill/checkpoint.py" in names
    assert "relational_distill/data/semantic_kitti.yaml" in names  # the SemanticKITTI learning map


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
