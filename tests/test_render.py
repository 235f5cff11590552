"""``rdistill render``: overlay pixels against the devkit's map_pointcloud_to_image, class colours against the
datasets' own colour maps, the PNGs and render.json of a distilled student and of the teacher, and bad input."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.data.nuscenes import read_lidar
from relational_distill.data.projection import IMAGE_MARGIN_PX
from relational_distill.data.semantickitti import LEARNING_MAP_FILE
from relational_distill.engine.render import (CAMERA_PANEL_PX, MARGIN_PX, bev_size, camera_pairs, camera_size,
                                              class_colors, evaluation_plots, find_sample, render)
from relational_distill.errors import UserError

from .test_cli_errors import _one_line_error

runner = CliRunner()


def test_overlay_pixels_are_the_devkits(nusc, index):
    """CAM_FRONT of one sample: every overlay point is a point the devkit's map_pointcloud_to_image keeps, at its
    pixel (within 0.01 px), and the other way round (but for points within half a pixel of the border, where the two roundings may
    differ), as tests/test_projection.py checks the pairs."""
    sample = nusc.sample[1]
    rec = next(s for s in index.samples if s["token"] == sample["token"])
    cameras, _, _, _ = camera_pairs(read_lidar(index.dataroot, rec["lidar"])[:, :3], rec)
    cam = next(c for c in cameras if c["name"] == "CAM_FRONT")
    dev_uv, _, im = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], sample["data"]["CAM_FRONT"])
    dev_uv = dev_uv[:2].T
    uv = cam["uv"]
    assert len(uv) > 50 and tuple(cam["image_size"]) == im.size
    d = np.sqrt(((uv[:, None, :] - dev_uv[None, :, :]) ** 2).sum(-1))
    ours_to_dev = d.argmin(1)
    matched = d[np.arange(len(uv)), ours_to_dev] < 0.01  # the devkit projects in float32: ~0.002 px apart
    w, h = im.size

    def near_border(p):
        return ((np.abs(p[:, 0] - IMAGE_MARGIN_PX) < 0.5) | (np.abs(p[:, 0] - (w - IMAGE_MARGIN_PX)) < 0.5)
                | (np.abs(p[:, 1] - IMAGE_MARGIN_PX) < 0.5) | (np.abs(p[:, 1] - (h - IMAGE_MARGIN_PX)) < 0.5))

    assert (matched | near_border(uv)).all()
    assert near_border(dev_uv[np.setdiff1d(np.arange(len(dev_uv)), ours_to_dev[matched])]).all()
    assert (np.diff(cam["point_index"]) > 0).all()  # one pair per point and camera, in point order


def test_class_colours_are_the_datasets_own(nusc):
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.utils.color_map import get_colormap

    mapper = LidarsegClassMapper(nusc)  # built on the town's own NuScenes object
    colors = class_colors("nuscenes")
    assert colors.shape == (17, 3)
    fine = get_colormap()
    for name, i in mapper.coarse_name_2_coarse_idx_mapping.items():
        assert tuple(colors[i]) == tuple(mapper.coarse_colormap[name])
        # the colour of one of the class's fine categories in the devkit's 32-category colormap
        assert tuple(colors[i]) in {fine[f] for f, c in mapper.fine_name_2_coarse_name_mapping.items() if c == name}

    official = yaml.safe_load(LEARNING_MAP_FILE.read_text())
    kitti = class_colors("semantickitti")
    assert kitti.shape == (20, 3)
    for c, raw in official["learning_map_inv"].items():
        blue, green, red = official["color_map"][raw]
        assert tuple(kitti[c]) == (red, green, blue)


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def zero_shot_render(distilled_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("render-zero-shot")
    return render(distilled_checkpoint, out=out, quiet=True), out


def test_render_a_distilled_student(zero_shot_render, index):
    result, out = zero_shot_render
    first_val = index.split("val")[0]
    assert result.mode == "zero-shot" and result.sample == first_val["token"] and result.synthetic
    assert 0 <= result.miou <= 1 and result.pairs > 0
    assert json.loads((out / "render.json").read_text()) == result.to_json()
    assert result.files["json"] == str(out / "render.json")
    bev = _png(out / "bev.png")
    assert bev.shape[1::-1] == bev_size(3)
    assert len(np.unique(bev.reshape(-1, 3), axis=0)) > 20
    assert sorted(result.files["cameras"]) == sorted(first_val["cameras"])
    colors = class_colors("nuscenes")
    for name, path in result.files["cameras"].items():
        assert path == str(out / f"cam_{name}.png")
        image = _png(path)
        assert image.shape[1::-1] == camera_size(tuple(first_val["cameras"][name]["image_size"]), 3)
        assert image.std() > 10
    # the ground-truth panel of CAM_FRONT shows its most frequent class in that class's colour
    cameras, _, _, _ = camera_pairs(read_lidar(index.dataroot, first_val["lidar"])[:, :3], first_val)
    front = next(c for c in cameras if c["name"] == "CAM_FRONT")
    labels = index.read_labels(first_val, len(read_lidar(index.dataroot, first_val["lidar"])))[front["point_index"]]
    common = np.bincount(labels[labels > 0]).argmax()
    panel = _png(out / "cam_CAM_FRONT.png")[:, : MARGIN_PX + CAMERA_PANEL_PX]
    assert (np.abs(panel.astype(int) - colors[common]).max(-1) <= 2).sum() >= 10


def test_render_the_teacher_from_its_store(store_dir, index, tmp_path):
    scene = index.split("val")[0]["scene"]
    result = render(None, features=store_dir, sample=scene, out=tmp_path, quiet=True)
    first = next(s for s in index.samples if s["scene"] == scene)
    assert result.mode == "teacher zero-shot" and result.sample == first["token"]
    assert result.features == str(store_dir) and result.checkpoint is None
    assert 0 <= result.miou <= 1 and sum(map(sum, result.confusion)) <= result.pairs
    assert (tmp_path / "bev.png").stat().st_size > 0 and len(result.files["cameras"]) == 6
    assert json.loads((tmp_path / "render.json").read_text())["sample"] == first["token"]


def test_evaluation_plots(zero_shot_render, tmp_path):
    result, _ = zero_shot_render
    paths = evaluation_plots(result, tmp_path)
    assert sorted(paths) == ["confusion", "iou"]
    for path in paths.values():
        assert _png(path).std() > 10
    assert evaluation_plots(replace(result, confusion=None, per_class_iou=None, miou=None), tmp_path / "x") == {}


def test_a_sample_by_token_scene_or_index_into_the_split(index):
    train = index.split("train")
    assert find_sample(index, train[1]["token"], "val") is train[1]
    assert find_sample(index, "1", "train") is train[1]
    assert find_sample(index, train[1]["scene"], "val") == next(s for s in index.samples
                                                                if s["scene"] == train[1]["scene"])
    with pytest.raises(UserError, match=f"index into split 'train' \\(0-{len(train) - 1}\\)"):
        find_sample(index, str(len(train)), "train")


def test_render_needs_a_checkpoint_or_features(tmp_path):
    _one_line_error(runner.invoke(app, ["render", "--out", str(tmp_path), "-q"]), "--features")


def test_render_refuses_an_unknown_sample(distilled_checkpoint, tmp_path):
    _one_line_error(runner.invoke(app, ["render", str(distilled_checkpoint), "--sample", "no-such-sample",
                                        "--out", str(tmp_path), "-q"]), "--sample no-such-sample", "--sample 0")
    _one_line_error(runner.invoke(app, ["render", str(distilled_checkpoint), "--sample", "99",
                                        "--out", str(tmp_path), "-q"]), "--sample 99")


def test_render_refuses_a_store_for_another_dataset(store_dir, town, tmp_path):
    """A store whose manifest names another state of the dataset (as after regenerating the town)."""
    other = tmp_path / "features"
    shutil.copytree(store_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["dataset_fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    _one_line_error(runner.invoke(app, ["render", "--features", str(other), "--out", str(tmp_path / "out"), "-q"]),
                    "features were made for dataset 000000000000", "precompute")
