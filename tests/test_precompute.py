"""The feature store: precompute with sim-clip, resume, truncated files, mismatched teachers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.data.nuscenes import camera_list
from relational_distill.engine.precompute import PrecomputeConfig, precompute
from relational_distill.errors import UserError
from relational_distill.teachers.store import FeatureStore

runner = CliRunner()
from .conftest import TOWN_IMAGE as IMAGE


def test_summary_and_manifest(store_dir, index):
    summary = json.loads((store_dir / "summary.json").read_text())
    for key in ("uniformity", "tolerance", "zero_shot_pixel_accuracy", "teacher", "samples", "bytes_on_disk"):
        assert key in summary
    assert summary["synthetic"] and summary["samples"] == len(index.samples)
    assert 0 < summary["uniformity"] < 4 and 0 < summary["tolerance"] < 1
    store = FeatureStore.open(store_dir, teacher="sim-clip", version="v1.0-sim")
    feats = store.read(index.samples[0]["token"])
    assert feats.dtype == np.float16 and feats.shape == (6, 512, IMAGE[1] // 16, IMAGE[0] // 16)
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=2e-3)
    classes, text = store.text_embeddings()
    assert len(classes) == 16 and text.shape == (16, 512)


def test_sim_teacher_zero_shot_beats_chance(store_dir):
    summary = json.loads((store_dir / "summary.json").read_text())
    assert summary["zero_shot_pixel_accuracy"] > 0.5


def test_resume_redoes_only_missing_and_truncated(store_dir, index):
    store = FeatureStore.open(store_dir)
    gone, cut = index.samples[1]["token"], index.samples[2]["token"]
    store.path(gone).unlink()
    data = store.path(cut).read_bytes()
    store.path(cut).write_bytes(data[: len(data) // 2])
    assert not store.is_valid(cut)
    untouched = store.path(index.samples[0]["token"]).stat().st_mtime_ns
    result = precompute(PrecomputeConfig(dataroot=index.dataroot, out=store_dir, image_size=IMAGE,
                                         summary_per_class=500, quiet=True))
    assert result["computed"] == 2 and result["skipped"] == len(index.samples) - 2
    assert store.is_valid(gone) and store.is_valid(cut)
    assert store.path(index.samples[0]["token"]).stat().st_mtime_ns == untouched


def test_shards_split_the_work(town, tmp_path, index):
    out = tmp_path / "sharded"
    r0 = precompute(PrecomputeConfig(dataroot=town, out=out, image_size=IMAGE, shard=(0, 2), quiet=True))
    assert not r0["complete"] and r0["computed"] == (len(index.samples) + 1) // 2
    r1 = precompute(PrecomputeConfig(dataroot=town, out=out, image_size=IMAGE, shard=(1, 2), summary_per_class=200,
                                     quiet=True))
    assert r1["complete"] and r0["computed"] + r1["computed"] == len(index.samples)


def test_other_teacher_is_refused(store_dir):
    with pytest.raises(UserError, match="openclip:ViT-B-16/openai"):
        FeatureStore.open(store_dir, teacher="openclip:ViT-B-16/openai")
    result = runner.invoke(app, ["precompute", str(store_dir.parent), "--out", str(store_dir), "-q",
                                 "--version", "v9"])
    assert result.exit_code == 2


def test_sim_features_follow_the_sidecar(index, store_dir):
    """Patch features of a patch that is all one class are closest to that class's text embedding, mostly."""
    from relational_distill.teachers.sim_clip import SimClipConfig, SimClipTeacher
    from relational_distill.config import CONFIG_DIR

    teacher = SimClipTeacher(SimClipConfig.from_yaml(CONFIG_DIR / "sim_clip.yaml"), index.fine_to_coarse)
    sample = index.samples[0]
    cam = camera_list(sample)[0]
    side = np.load(f"{index.dataroot}/sim_sidecar/{cam['image'][:-4]}.npz")
    feats = teacher.image_features(side["category"], side["instance"], "x")
    text = teacher.text_embeddings().numpy()
    cat = side["category"][: feats.shape[1] * 16, : feats.shape[2] * 16].reshape(feats.shape[1], 16, feats.shape[2], 16)
    cat = cat.transpose(0, 2, 1, 3).reshape(feats.shape[1], feats.shape[2], -1)
    pure = (cat == cat[..., :1]).all(-1) & (cat[..., 0] != 255)
    labels = np.asarray(index.fine_to_coarse)[np.minimum(cat[..., 0], 31)]
    pure &= labels > 0
    pred = np.einsum("dhw,cd->hwc", feats, text).argmax(-1) + 1
    assert pure.sum() > 10 and (pred[pure] == labels[pure]).mean() > 0.8


def test_openclip_teacher_end_to_end(town, tmp_path, index):
    """precompute with a real open_clip model (tiny config, random weights, offline) through MaskCLIP."""
    import open_clip

    from .test_maskclip import TINY

    open_clip.add_model_config(TINY)
    out = tmp_path / "clip"
    result = precompute(PrecomputeConfig(dataroot=town, out=out, teacher="openclip:rdistill-tiny-vit", image_size=IMAGE,
                                         summary_per_class=200, quiet=True))
    assert result["complete"] and result["computed"] == len(index.samples)
    store = FeatureStore.open(out, teacher="openclip:rdistill-tiny-vit")
    assert store.read(index.samples[0]["token"]).shape == (6, 32, IMAGE[1] // 16, IMAGE[0] // 16)
    classes, text = store.text_embeddings()
    assert text.shape == (16, 32)
    with pytest.raises(UserError, match="sim-clip"):
        FeatureStore.open(out, teacher="sim-clip")
