"""The feature store: precompute with sim-clip, resume, truncated files, mismatched teachers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.data.index import camera_list
from relational_distill.engine.precompute import PrecomputeConfig, precompute
from relational_distill.errors import UserError
from relational_distill.teachers.store import FeatureStore

from .conftest import TOWN_IMAGE as IMAGE
from .test_maskclip import tiny_tags  # noqa: F401  (fixture)

runner = CliRunner()


def test_summary_and_manifest(store_dir, index):
    summary = json.loads((store_dir / "summary.json").read_text())
    for key in ("uniformity", "tolerance", "zero_shot_pixel_accuracy", "teacher", "samples", "bytes_on_disk"):
        assert key in summary
    assert summary["synthetic"] and summary["samples"] == len(index.samples)
    assert 0 < summary["uniformity"] < 4 and 0 < summary["tolerance"] < 1
    store = FeatureStore.open(store_dir, teacher="sim-clip:clean", version="v1.0-sim")
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
    result = precompute(PrecomputeConfig(dataroot=index.dataroot, out=store_dir, teacher="sim-clip:clean",
                                         image_size=IMAGE, summary_per_class=500, quiet=True))
    assert result.computed == 2 and result.skipped == len(index.samples) - 2
    assert store.is_valid(gone) and store.is_valid(cut)
    assert store.path(index.samples[0]["token"]).stat().st_mtime_ns == untouched


def test_shards_split_the_work(town, tmp_path, index):
    out = tmp_path / "sharded"
    r0 = precompute(PrecomputeConfig(dataroot=town, out=out, image_size=IMAGE, shard=(0, 2), quiet=True))
    assert not r0.complete and r0.computed == (len(index.samples) + 1) // 2
    r1 = precompute(PrecomputeConfig(dataroot=town, out=out, image_size=IMAGE, shard=(1, 2), summary_per_class=200,
                                     quiet=True))
    assert r1.complete and r0.computed + r1.computed == len(index.samples)


def test_other_teacher_is_refused(store_dir):
    with pytest.raises(UserError, match="openclip:ViT-B-16/openai"):
        FeatureStore.open(store_dir, teacher="openclip:ViT-B-16/openai")
    result = runner.invoke(app, ["precompute", str(store_dir.parent), "--out", str(store_dir), "-q",
                                 "--version", "v9"])
    assert result.exit_code == 2


def test_sim_features_follow_the_sidecar(index, store_dir):
    """Patch features of sim-clip:clean of a patch that is all one class are closest to that class's text
    embedding, mostly (the CLIP-like teacher is calibrated to be wrong more often: tests/test_sim_clip.py)."""
    from relational_distill.teachers.sim_clip import SimClipConfig, SimClipTeacher

    teacher = SimClipTeacher(SimClipConfig.named("sim-clip:clean"), index.fine_to_coarse)
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
    assert result.complete and result.computed == len(index.samples)
    store = FeatureStore.open(out, teacher="openclip:rdistill-tiny-vit")
    assert store.read(index.samples[0]["token"]).shape == (6, 32, IMAGE[1] // 16, IMAGE[0] // 16)
    classes, text = store.text_embeddings()
    assert text.shape == (16, 32)
    with pytest.raises(UserError, match="sim-clip"):
        FeatureStore.open(out, teacher="sim-clip")


def test_resnet_teacher_makes_a_store_of_its_width(town, tmp_path, index):
    """openclip RN (MaskCLIP's ResNet variant): features of the model's width on a stride-32 grid."""
    import open_clip

    from .test_maskclip import TINY_RN

    open_clip.add_model_config(TINY_RN)
    out = tmp_path / "rn"
    result = precompute(PrecomputeConfig(dataroot=town, out=out, teacher="openclip:rdistill-tiny-rn",
                                         image_size=(192, 96), summary_per_class=100, quiet=True))
    assert result.complete
    store = FeatureStore.open(out, teacher="openclip:rdistill-tiny-rn")
    assert store.manifest.dim == 32 and store.manifest.grid == (3, 6) and store.manifest.activation == "gelu"
    feats = store.read(index.samples[0]["token"])
    assert feats.shape == (6, 32, 3, 6)
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=2e-3)


@pytest.mark.parametrize("teacher, size, nearest", [
    ("openclip:rdistill-tiny-vit", "200x112", "nearest valid sizes: 192x112, 208x112"),
    ("openclip:rdistill-tiny-rn", "192x112", "nearest valid sizes: 192x96, 192x128"),
    ("openclip:rdistill-tiny-rn", "200x100", "nearest valid sizes: 192x96, 224x96, 192x128, 224x128"),
])
def test_input_size_off_the_patch_grid_is_refused(town, tmp_path, teacher, size, nearest, monkeypatch):
    """Refused in one line, naming the nearest valid sizes, before any weights are read or any file written."""
    import open_clip

    from .test_maskclip import TINY, TINY_RN

    open_clip.add_model_config(TINY)
    open_clip.add_model_config(TINY_RN)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the image size was checked")

    monkeypatch.setattr(open_clip, "create_model", no_weights)
    out = tmp_path / "features"
    result = runner.invoke(app, ["precompute", str(town), "--out", str(out), "--teacher", teacher,
                                 "--image-size", size, "-q"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and nearest in lines[0] and f"--image-size {size}" in lines[0], result.output
    assert not out.exists()


def test_refusals_and_failures_leave_no_store_folder(town, tmp_path, monkeypatch):
    import open_clip

    from relational_distill.teachers import factory as module

    from .test_maskclip import TINY

    open_clip.add_model_config(TINY)
    timm_cfg = tmp_path / "rdistill-tiny-timm2.json"
    timm_cfg.write_text(TINY.read_text().replace('"vision_cfg": {', '"vision_cfg": {"timm_model_name": "vit_tiny", '))
    open_clip.add_model_config(timm_cfg)
    out = tmp_path / "features"
    with pytest.raises(UserError, match="not supported"):
        precompute(PrecomputeConfig(dataroot=town, out=out, teacher="openclip:rdistill-tiny-timm2", quiet=True))
    assert not out.exists()
    with pytest.raises(UserError, match="pass --image-size 192x112"):
        precompute(PrecomputeConfig(dataroot=town, out=out, teacher="sim-clip", image_size=(416, 224), quiet=True))
    assert not out.exists()

    def broken(self, samples, image_size):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(module.OpenClipAdapter, "features", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        precompute(PrecomputeConfig(dataroot=town, out=out, teacher="openclip:rdistill-tiny-vit", image_size=IMAGE,
                                    quiet=True))
    assert not out.exists()


def test_store_made_with_another_activation_is_refused(town, tmp_path, tiny_tags):
    spec = f"openclip:rdistill-tiny-vit/{tiny_tags}"
    out = tmp_path / "features"
    precompute(PrecomputeConfig(dataroot=town, out=out, teacher=spec, image_size=IMAGE, activation="gelu",
                                shard=(0, 3), quiet=True))
    assert FeatureStore.open(out).manifest.activation == "gelu"
    with pytest.raises(UserError, match="activation is 'gelu', expected 'quick_gelu'"):
        precompute(PrecomputeConfig(dataroot=town, out=out, teacher=spec, image_size=IMAGE, activation="quick_gelu",
                                    shard=(1, 3), quiet=True))
    tagged = tmp_path / "tagged"
    precompute(PrecomputeConfig(dataroot=town, out=tagged, teacher="openclip:rdistill-tiny-vit/rdqg", image_size=IMAGE,
                                shard=(0, 3), quiet=True))
    assert FeatureStore.open(tagged).manifest.activation == "quick_gelu"


def test_openclip_features_of_a_1600x900_camera_at_416x224(tmp_path, tiny_tags):
    """The real pairing on nuScenes-sized images: the teacher sees the 1600x900 image resized to 416x224 with the
    weights' filter and mean/std (the tag's own, not CLIP's); a point at the centre of a cell's footprint in the
    camera image reads exactly that cell's MaskCLIP feature."""
    import torch
    from PIL import Image

    from relational_distill.config import CONFIG_DIR
    from relational_distill.data.dataset import load_sample
    from relational_distill.teachers.factory import OpenClipAdapter
    from relational_distill.teachers.maskclip import dense_features

    from .test_maskclip import TAG_MEAN, TAG_STD
    from .test_projection import CAMERA_SIZE, TEACHER_SIZE, one_camera_dataset

    gw, gh = TEACHER_SIZE[0] // 16, TEACHER_SIZE[1] // 16
    cells = [(0, 0), (3, 7), (7, 13), (13, 25), (10, 2)]
    pixels = np.array([[(c + 0.5) * CAMERA_SIZE[0] / gw - 0.5, (r + 0.5) * CAMERA_SIZE[1] / gh - 0.5] for r, c in cells])
    index = one_camera_dataset(tmp_path, pixels, np.full(len(cells), 10.0))
    teacher = OpenClipAdapter("openclip:rdistill-tiny-vit/rdqg", index, CONFIG_DIR / "prompts.yaml", "cpu")
    assert teacher.grid(TEACHER_SIZE) == (gh, gw)
    feats = teacher.features(index.samples, TEACHER_SIZE)[0]
    assert feats.shape == (1, 32, gh, gw)

    class Reader:
        def read(self, token):
            return feats

    item = load_sample(index, index.samples[0], Reader())
    image = Image.open(tmp_path / "front.png").convert("RGB").resize(TEACHER_SIZE, Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - torch.tensor(TAG_MEAN).view(1, 3, 1, 1)) / torch.tensor(TAG_STD).view(1, 3, 1, 1)
    want = dense_features(teacher.model, x)[0]
    for m, p in enumerate(item["pair_point"].tolist()):
        r, c = cells[p]
        torch.testing.assert_close(item["pair_teacher"][m], want[:, r, c], atol=3e-3, rtol=0)


def test_superpixels_are_computed_once_into_a_resumable_store(town, tmp_path, index):
    """precompute --superpixels: one SLIC map per camera image, equal to skimage's SLIC on that image; a rerun
    redoes only missing or truncated files; a store of another segment count or version is refused."""
    from PIL import Image
    from skimage.segmentation import slic

    from relational_distill.data.superpixels import SuperpixelStore

    out = tmp_path / "features"
    result = precompute(PrecomputeConfig(dataroot=town, out=out, image_size=IMAGE, superpixels=20,
                                         summary_per_class=100, quiet=True))
    assert result.superpixels["computed"] == len(index.samples)
    store = SuperpixelStore.open(SuperpixelStore.folder(out, 20), 20, "v1.0-sim")
    sample = index.samples[0]
    cams = camera_list(sample)
    maps = store.read(sample["token"])
    assert len(maps) == len(cams)
    image = np.asarray(Image.open(f"{index.dataroot}/{cams[2]['image']}").convert("RGB"))
    np.testing.assert_array_equal(maps[2], slic(image, n_segments=20, compactness=10, start_label=0))
    assert maps[2].shape == (IMAGE[1], IMAGE[0])
    gone, cut = index.samples[1]["token"], index.samples[2]["token"]
    store.path(gone).unlink()
    store.path(cut).write_bytes(store.path(cut).read_bytes()[:100])
    with pytest.raises(UserError, match="--superpixels 20"):
        store.read(cut)
    # the same integrity as the feature store: a byte changed in place, size kept, is refused by its sha256
    flipped = store.path(index.samples[3]["token"])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 mismatch"):
        store.read(index.samples[3]["token"])
    again = precompute(PrecomputeConfig(dataroot=town, out=out, image_size=IMAGE, superpixels=20,
                                        summary_per_class=100, quiet=True))
    assert again.computed == 0 and again.superpixels["computed"] == 3
    with pytest.raises(UserError, match="--superpixels 30"):
        SuperpixelStore.open(SuperpixelStore.folder(out, 30), 30, "v1.0-sim")
    with pytest.raises(UserError, match="not 20 for 'v1.0-trainval'"):
        SuperpixelStore.open(SuperpixelStore.folder(out, 20), 20, "v1.0-trainval")


def test_teacher_zero_shot_miou_against_a_brute_force_loop(store_dir, index):
    """summary.json's teacher_zero_shot_miou (and evaluate --teacher-ceiling) against a loop over every lidar-pixel pair of
    the val split: the teacher's argmax class, counted into per-class intersections and unions by hand, with
    classes absent from prediction and ground truth left out (the nuScenes convention)."""
    from relational_distill.data.dataset import load_sample
    from relational_distill.engine.evaluate import evaluate_teacher
    from relational_distill.teachers.store import FeatureStore

    store = FeatureStore.open(store_dir)
    _, text = store.text_embeddings()
    inter, pred_count, true_count = [0] * 17, [0] * 17, [0] * 17
    for sample in index.split("val"):
        item = load_sample(index, sample, store)
        for feature, point in zip(item["pair_teacher"], item["pair_point"].tolist()):
            truth = int(item["labels"][point])
            if truth == 0:
                continue
            pred = max(range(16), key=lambda c: float(feature @ text[c])) + 1
            pred_count[pred] += 1
            true_count[truth] += 1
            inter[pred] += pred == truth
    ious = [inter[c] / (pred_count[c] + true_count[c] - inter[c]) for c in range(1, 17)
            if pred_count[c] + true_count[c] > 0]
    want = sum(ious) / len(ious)
    summary = json.loads((store_dir / "summary.json").read_text())
    assert summary["teacher_zero_shot_miou"] == pytest.approx(want, abs=1e-12)
    assert evaluate_teacher(store_dir, quiet=True).miou == pytest.approx(want, abs=1e-12)


def test_concurrent_precomputes_lock_per_shard(town, index, tmp_path):
    """Two precomputes of one shard into one store: the second is refused in one line naming the first's pid (exit
    2), and the first, let go on, finishes a valid store. A lock left by a killed process does not block the next
    run. Two different shards run side by side and finish one complete store (real processes, held mid-run with
    SIGSTOP so the overlap is certain)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from relational_distill.io import is_scratch_file

    def command(out, shard="0/1"):
        return [sys.executable, "-c", "from relational_distill.cli import app; app()", "precompute", str(town),
                "--out", str(out), "--teacher", "sim-clip:clean", "--image-size", "192x112", "--shard", shard, "-q"]

    def started(out, shard="0/1"):
        """A precompute stopped once it holds its shard's lock (its lock file exists)."""
        proc = subprocess.Popen(command(out, shard), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lock = out / f".rdistill-shard-{shard.replace('/', '-of-')}.lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip() == str(proc.pid)) and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)
        return proc

    out = tmp_path / "features"
    first = started(out)
    second = runner.invoke(app, command(out)[3:])
    lines = [line for line in second.output.splitlines() if line.strip()]
    assert second.exit_code == 2 and len(lines) == 1, second.output
    assert "another rdistill process" in lines[0] and str(first.pid) in lines[0] and "shard 0/1" in lines[0]
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    store = FeatureStore.open(out)
    assert all(store.is_valid(s["token"]) for s in index.samples)
    assert not [p for p in out.iterdir() if is_scratch_file(p)]

    # killed while holding the lock: its lock file stays, its lock does not
    stale = tmp_path / "stale"
    killed = started(stale)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert [p for p in stale.iterdir() if is_scratch_file(p)]
    (stale / ".manifest.json.k1ll3d.tmp").write_text('{"tea')  # as a kill inside create()'s atomic write leaves
    again = runner.invoke(app, command(stale)[3:])
    assert again.exit_code == 0, again.output
    assert json.loads((stale / "summary.json").read_text())["complete"]

    # two shards at once: both finish, the store is complete and every file verifies
    both = tmp_path / "sharded"
    shard0 = started(both, "0/2")
    shard1 = subprocess.Popen(command(both, "1/2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.kill(shard0.pid, signal.SIGCONT)
    assert shard0.wait(timeout=300) == 0 and shard1.wait(timeout=300) == 0
    store = FeatureStore.open(both)
    assert all(store.is_valid(s["token"]) for s in index.samples)
    final = runner.invoke(app, command(both)[3:])  # a full run verifies the store and computes nothing
    assert final.exit_code == 0 and "computed 0 samples" in final.output
