"""Shared fixtures: one tiny synthetic town per test session (generated, then read through the devkit)."""
from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RDISTILL_CACHE", tempfile.mkdtemp(prefix="rdistill-test-cache-"))


@pytest.fixture(scope="session")
def town(tmp_path_factory):
    """A 3-scene, 2-samples-per-scene town with small images; returns its dataroot."""
    from relational_distill.sim.writer import SimConfig, make_town

    root = tmp_path_factory.mktemp("town") / "town"
    make_town(root, SimConfig(scenes=3, samples_per_scene=2, seed=3, image_size=(192, 112)), workers=2)
    return root


@pytest.fixture(scope="session")
def index(town, tmp_path_factory):
    from relational_distill.data.nuscenes import load_index

    return load_index(town, "v1.0-sim", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def nusc(town):
    from relational_distill.data.nuscenes import load_devkit

    return load_devkit(town, "v1.0-sim")


TOWN_IMAGE = (192, 112)


def loss_forms() -> dict:
    """Every form of the three losses (plain, block-wise, Gram), as ``fn(k, q) -> loss``, for tests run on each."""
    from relational_distill.losses import contrastive_loss, relational_loss, similarity_loss

    return {"contrastive-plain": lambda k, q: contrastive_loss(k, q),
            "contrastive-block": lambda k, q: contrastive_loss(k, q, block_size=64),
            "similarity": similarity_loss,
            "relational-p1-plain": lambda k, q: relational_loss(k, q, p=1),
            "relational-p1-block": lambda k, q: relational_loss(k, q, p=1, block_size=64),
            "relational-p2-gram": lambda k, q: relational_loss(k, q, p=2)}


@pytest.fixture(scope="session")
def store_dir(town, tmp_path_factory):
    """sim-clip:clean features of the test town (tests that need a teacher with a clear class signal)."""
    from relational_distill.engine.precompute import PrecomputeConfig, precompute

    out = tmp_path_factory.mktemp("store") / "features"
    precompute(PrecomputeConfig(dataroot=town, out=out, teacher="sim-clip:clean", image_size=TOWN_IMAGE, summary_per_class=500, quiet=True))
    return out


def tiny_distill_config(**overrides):
    from relational_distill.engine.distill import DistillConfig

    base = dict(preset="small", epochs=2, batch_size=2, num_pairs=256, pairs_per_sample=512, lr=3e-3,
                block_size=None, workers=0, augment=True)
    base.update(overrides)
    return DistillConfig(**base)


@pytest.fixture(scope="session")
def distilled_checkpoint(town, store_dir, tmp_path_factory):
    """A student distilled for one epoch on the test town (the start of finetuning and zero-shot tests)."""
    from relational_distill.engine.distill import distill

    out = tmp_path_factory.mktemp("distilled-session")
    distill(town, store_dir, out, tiny_distill_config(loss="similarity", epochs=1), quiet=True)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """The tiny distillation config of the one-line-error tests (tests/helpers.py TINY), as a YAML file."""
    from .helpers import TINY

    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()))
    return path


@pytest.fixture(scope="session")
def run(town, store_dir, tiny_config, tmp_path_factory):
    """A finished 1-epoch distill run folder (copy it before changing it)."""
    from typer.testing import CliRunner

    from relational_distill.cli import app

    runner = CliRunner()
    out = tmp_path_factory.mktemp("run") / "run"
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_dir), "--out", str(out),
                            "--config", str(tiny_config), "-q"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture()
def store_copy(store_dir, tmp_path):
    """A copy of the sim-clip:clean store, to damage."""
    import shutil

    dst = tmp_path / "features"
    shutil.copytree(store_dir, dst)
    return dst
