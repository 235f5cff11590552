"""The synthetic town is real nuScenes format: read it back through nuscenes-devkit only."""
from __future__ import annotations

import os

import numpy as np
from nuscenes.utils.data_classes import LidarPointCloud
from typer.testing import CliRunner

from relational_distill.classes import CLASS_NAMES
from relational_distill.cli import app
from relational_distill.data.index import CAMERAS
from relational_distill.data.nuscenes import read_labels
from relational_distill.sim.layout import FINE
from relational_distill.sim.writer import SimConfig, make_town

from .conftest import TOWN_IMAGE
from .helpers import one_line

runner = CliRunner()


def test_devkit_loads_every_table(nusc):
    assert len(nusc.scene) == 3 and len(nusc.sample) == 6
    sample = nusc.sample[0]
    assert set(sample["data"]) == {"LIDAR_TOP", *CAMERAS}
    path, boxes, intrinsic = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
    assert os.path.exists(path) and intrinsic.shape == (3, 3)
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(os.path.join(nusc.dataroot, lidar_sd["filename"]))
    labels = np.fromfile(os.path.join(nusc.dataroot, nusc.get("lidarseg", lidar_sd["token"])["filename"]), np.uint8)
    assert pc.points.shape[1] == len(labels) > 10_000
    assert len(nusc.sample_annotation) > 0 and nusc.get("instance", nusc.instance[0]["token"])
    # log -> map reverse index needs the map table
    assert nusc.log[0]["map_token"] == nusc.map[0]["token"]


DEVKIT_NAMES = {
    "pedestrian": "human.pedestrian.adult", "child": "human.pedestrian.child", "barrier": "movable_object.barrier",
    "pushable": "movable_object.pushable_pullable", "traffic_cone": "movable_object.trafficcone",
    "bicycle": "vehicle.bicycle", "bus": "vehicle.bus.rigid", "car": "vehicle.car",
    "construction_vehicle": "vehicle.construction", "motorcycle": "vehicle.motorcycle", "trailer": "vehicle.trailer",
    "truck": "vehicle.truck", "driveable_surface": "flat.driveable_surface", "other_flat": "flat.other",
    "sidewalk": "flat.sidewalk", "terrain": "flat.terrain", "manmade": "static.manmade",
    "static_other": "static.other", "vegetation": "static.vegetation",
}


def test_fine_category_indices_are_the_devkits(nusc):
    assert {name: nusc.lidarseg_idx2name_mapping[idx] for name, idx in FINE.items()} == DEVKIT_NAMES


def test_all_16_classes_present_with_imbalance(index):
    counts = np.zeros(len(CLASS_NAMES) + 1, np.int64)
    for s in index.samples:
        n = os.path.getsize(os.path.join(index.dataroot, s["lidar"])) // 20
        counts += np.bincount(read_labels(index.dataroot, s["lidarseg"], n, index.fine_to_coarse), minlength=17)
    assert (counts[1:] > 0).all(), dict(zip(CLASS_NAMES, counts[1:]))
    share = counts[1:] / counts[1:].sum()
    big = {CLASS_NAMES.index(c) for c in ("driveable_surface", "manmade")}
    small = {CLASS_NAMES.index(c) for c in ("bicycle", "traffic_cone")}
    assert min(share[i] for i in big) > 20 * max(share[i] for i in small)


def test_ego_moves_and_cameras_fire_after_lidar(nusc):
    sample = nusc.sample[0]
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    stamps = {nusc.get("sample_data", sample["data"][c])["timestamp"] for c in CAMERAS}
    assert lidar["timestamp"] not in stamps and len(stamps) == 6
    poses = {nusc.get("sample_data", sample["data"][c])["ego_pose_token"] for c in CAMERAS}
    assert lidar["ego_pose_token"] not in poses
    nxt = nusc.get("sample", sample["next"])
    p0 = nusc.get("ego_pose", lidar["ego_pose_token"])["translation"]
    p1 = nusc.get("ego_pose", nusc.get("sample_data", nxt["data"]["LIDAR_TOP"])["ego_pose_token"])["translation"]
    assert np.linalg.norm(np.subtract(p1, p0)) > 1.0


def test_deterministic_for_a_seed(town, tmp_path):
    other = tmp_path / "again"
    make_town(other, SimConfig(scenes=3, samples_per_scene=2, seed=3, image_size=(192, 112)), workers=1)
    for rel in ("v1.0-sim/sample_data.json", "v1.0-sim/ego_pose.json"):
        assert (town / rel).read_bytes() == (other / rel).read_bytes()
    lidar = sorted((town / "samples/LIDAR_TOP").iterdir())[0].name
    assert (town / "samples/LIDAR_TOP" / lidar).read_bytes() == (other / "samples/LIDAR_TOP" / lidar).read_bytes()


def test_sidecar_matches_image_size(index):
    cam = index.samples[0]["cameras"]["CAM_FRONT"]
    side = np.load(os.path.join(index.dataroot, "sim_sidecar", cam["image"][:-4] + ".npz"))
    assert side["category"].shape == (cam["image_size"][1], cam["image_size"][0])
    assert (side["category"] == 255).any() and (side["category"] == FINE["driveable_surface"]).any()


# -- disk space -------------------------------------------------------------------------------------------------------
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


