"""SemanticKITTI as distributed: the learning map against the official table, the reader on a folder written
here, finetune / evaluate / predictions scored by the official convention, the synthetic town in that layout,
and bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.data.datasets import open_index
from relational_distill.data.projection import project_points
from relational_distill.data.semantickitti import learning_map
from relational_distill.data.splits import few_shot_frames
from relational_distill.engine.evaluate import evaluate
from relational_distill.engine.finetune import FinetuneConfig, finetune
from relational_distill.errors import UserError

from .test_cli_errors import _one_line_error

runner = CliRunner()

# semantic-kitti-api, config/semantic-kitti.yaml: learning_map, typed here from that table (all 34 raw ids)
OFFICIAL_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
    49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7,
    254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}
OFFICIAL_LEARNING_MAP_INV = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48, 12: 49, 13: 50,
    14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}
OFFICIAL_CLASSES = ("car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
                    "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
                    "terrain", "pole", "traffic-sign")
# KITTI odometry sequence 00's calibration (P2 has a translation in every row: the general case)
CALIB = """P0: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 0.000000000000e+00 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 -3.861448000000e+02 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 4.538225000000e+01 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 -1.130887000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 3.779761000000e-03
P3: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 -3.372877000000e+02 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 2.369057000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 4.915215000000e-03
Tr: 4.276802385584e-04 -9.999672484946e-01 -8.084491683471e-03 -1.198459927713e-02 -7.210626507497e-03 8.081198471645e-03 -9.999413164504e-01 -5.403984729748e-02 9.999738645903e-01 4.859485810390e-04 -7.206933692422e-03 -2.921968648686e-01
"""
IMAGE_SIZE = (1241, 376)


def _scan(rng: np.random.Generator, n: int = 2500) -> tuple[np.ndarray, np.ndarray]:
    """A street in front of the sensor: (n, 4) float32 points, (n,) uint32 labels with raw ids and instances."""
    x, y = rng.uniform(4, 40, n), rng.uniform(-14, 14, n)
    z = np.full(n, -1.73) + rng.normal(0, 0.02, n)
    raw = np.where(np.abs(y) < 4, 40, np.where(np.abs(y) < 6, 48, 72)).astype(np.uint32)
    raw[np.abs(y) < 0.15] = 60                                   # lane marking -> road
    inst = np.zeros(n, np.uint32)
    car = (x > 10) & (x < 14) & (y > 1) & (y < 3)                # a car on the road, points lifted onto it
    z[car] = rng.uniform(-1.6, -0.3, car.sum())
    raw[car], inst[car] = (252 if rng.random() < 0.5 else 10), 5  # moving or parked
    person = (x > 20) & (x < 20.6) & (y > 4.5) & (y < 5.1)
    z[person] = rng.uniform(-1.6, 0.0, person.sum())
    raw[person], inst[person] = 254, 7
    wall = y > 12
    z[wall] = rng.uniform(-1.7, 3.0, wall.sum())
    raw[wall] = 50
    tree = y < -12
    z[tree] = rng.uniform(0.0, 4.0, tree.sum())
    raw[tree] = 70
    raw[rng.random(n) < 0.02] = 1                                # outliers -> ignore
    raw[rng.random(n) < 0.02] = 52                               # other-structure -> ignore
    points = np.column_stack([x, y, z, rng.uniform(0, 1, n)]).astype(np.float32)
    return points, (inst << 16) | raw


def write_tiny_kitti(root: Path, frames: dict[str, int], labelled: tuple[str, ...] = ("00", "08")) -> None:
    """A SemanticKITTI-layout folder: ``frames`` per sequence, labels only for ``labelled`` ones."""
    rng = np.random.default_rng(13)
    for seq, count in frames.items():
        folder = root / "sequences" / seq
        (folder / "velodyne").mkdir(parents=True)
        (folder / "image_2").mkdir()
        (folder / "calib.txt").write_text(CALIB)
        poses = []
        for k in range(count):
            points, labels = _scan(rng)
            points.tofile(folder / "velodyne" / f"{k:06d}.bin")
            if seq in labelled:
                (folder / "labels").mkdir(exist_ok=True)
                labels.tofile(folder / "labels" / f"{k:06d}.label")
            Image.new("RGB", IMAGE_SIZE).save(folder / "image_2" / f"{k:06d}.png")
            poses.append(f"1 0 0 0 0 1 0 0 0 0 1 {0.8 * k}")
        (folder / "poses.txt").write_text("\n".join(poses) + "\n")


@pytest.fixture(scope="module")
def kitti(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti") / "dataset"
    write_tiny_kitti(root, {"00": 4, "08": 2, "11": 1})
    return root


def official_iou(dataroot: Path, predictions: Path, sequences: list[str]) -> tuple[float, np.ndarray]:
    """semantic-kitti-api's evaluate_semantics + iouEval, written again: label and prediction files listed and
    sorted per sequence, both mapped through the learning map, confusion rows = prediction, columns = ground
    truth, the ignore column zeroed, IoU = TP / (TP + FP + FN + 1e-15), mean over classes 1-19."""
    lut = np.zeros(1 << 16, np.int64)
    for raw, cls in OFFICIAL_LEARNING_MAP.items():
        lut[raw] = cls
    gt_files, pred_files = [], []
    for seq in sequences:
        gt_files += sorted((dataroot / "sequences" / seq / "labels").glob("*.label"))
        pred_files += sorted((predictions / "sequences" / seq / "predictions").glob("*.label"))
    assert len(gt_files) == len(pred_files) > 0
    conf = np.zeros((20, 20), np.int64)
    for g, p in zip(gt_files, pred_files):
        gt = lut[np.fromfile(g, np.int32) & 0xFFFF]
        pred = lut[np.fromfile(p, np.int32) & 0xFFFF]
        for a, b in zip(pred, gt):  # brute force, one point at a time
            conf[a, b] += 1
    conf[:, 0] = 0
    tp = np.diag(conf)
    fp, fn = conf.sum(1) - tp, conf.sum(0) - tp
    iou = tp / (tp + fp + fn + 1e-15)
    return float(iou[1:].mean()), conf


def test_learning_map_is_the_official_table():
    lmap = learning_map()
    assert len(lmap.to_class) == 34
    assert lmap.to_class == OFFICIAL_LEARNING_MAP
    assert lmap.to_raw == OFFICIAL_LEARNING_MAP_INV
    assert lmap.class_names == OFFICIAL_CLASSES
    assert lmap.split == {"train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10), "val": (8,), "test": tuple(range(11, 22))}
    lut, raw = lmap.class_lut(), lmap.raw_lut()
    assert all(lut[r] == c for r, c in OFFICIAL_LEARNING_MAP.items())
    assert all(lut[raw[c]] == c for c in range(20))  # predictions survive the official evaluation's mapping


def test_reads_the_layout(kitti):
    index = open_index(kitti, "v1.0-sim")
    assert index.dataset == "semantickitti" and index.class_names == OFFICIAL_CLASSES
    assert [s["token"] for s in index.split("train")] == [f"00/{k:06d}" for k in range(4)]
    assert [s["token"] for s in index.split("val")] == ["08/000000", "08/000001"]
    assert [s["token"] for s in index.split("test")] == ["11/000000"]
    assert not index.has_labels(index.split("test")[0])
    assert any("01, 02" in note and "absent" in note for note in index.notes)
    sample = index.split("val")[1]
    file_points = np.fromfile(kitti / sample["lidar"], np.float32).reshape(-1, 4)
    points = index.read_points(sample)
    np.testing.assert_array_equal(points[:, :3], file_points[:, :3])
    np.testing.assert_allclose(points[:, 3], file_points[:, 3] * 255, rtol=1e-6)  # remission as 0-255 intensity
    raw = np.fromfile(kitti / sample["labels"], np.uint32)
    expected = [OFFICIAL_LEARNING_MAP[int(r) & 0xFFFF] for r in raw]
    np.testing.assert_array_equal(index.read_labels(sample, len(points)), expected)
    assert sample["pose"][11] == pytest.approx(0.8)


def test_camera_projects_through_p2_tr(kitti):
    index = open_index(kitti, "v1.0-sim", dataset="semantickitti")
    sample = index.split("train")[0]
    cam = sample["cameras"]["image_2"]
    assert cam["image"] == "sequences/00/image_2/000000.png" and cam["image_size"] == list(IMAGE_SIZE)
    rows = {ln.split(":")[0]: np.array(ln.split(":")[1].split(), float) for ln in CALIB.splitlines()}
    p2, tr = rows["P2"].reshape(3, 4), np.vstack([rows["Tr"].reshape(3, 4), [0, 0, 0, 1]])
    xyz = index.read_points(sample)[:, :3].astype(np.float64)
    idx, uv, _ = project_points(xyz, np.array(cam["lidar_to_camera"]), np.array(cam["intrinsic"]), IMAGE_SIZE)
    uvw = np.column_stack([xyz, np.ones(len(xyz))]) @ (p2 @ tr).T  # uvw = P2 . Tr . [x y z 1]
    assert len(idx) > 100
    np.testing.assert_allclose(uv, uvw[idx, :2] / uvw[idx, 2:], atol=1e-6)


def test_few_shot_keeps_every_kth_frame_of_the_sorted_list():
    samples = [{"token": f"{seq:02d}/{k:06d}"} for seq in (10, 0, 9) for k in range(120)]
    ordered = sorted(s["token"] for s in samples)
    for fraction, k in ((0.01, 100), (0.05, 20), (0.1, 10), (0.25, 4), (1.0, 1)):
        expected = [t for i, t in enumerate(ordered) if i % k == 0]
        assert [s["token"] for s in few_shot_frames(samples, fraction)] == expected
    assert [s["token"] for s in few_shot_frames(samples, 0.01)] == ["00/000000", "00/000100", "09/000080", "10/000060"]


def test_finetune_evaluate_and_official_iou(kitti, tmp_path):
    cfg = FinetuneConfig(fraction=0.5, epochs=1, batch_size=1, workers=0, from_scratch=True)
    result = finetune(None, tmp_path / "ft", cfg, dataroot=kitti, quiet=True)
    assert result.train_frames == ["00/000000", "00/000002"]
    assert result.evaluation.dataset == "semantickitti"
    ev = evaluate(tmp_path / "ft" / "checkpoint.pt", save_predictions=tmp_path / "pred", quiet=True)
    assert "counted as 0" in ev.miou_convention and len(ev.per_class_iou) == 19
    assert ev.absent_classes and all(ev.per_class_iou[name] == 0.0 for name in ev.absent_classes)
    labels = sorted((tmp_path / "pred" / "sequences" / "08" / "predictions").iterdir())
    assert [p.name for p in labels] == ["000000.label", "000001.label"]
    assert all(p.stat().st_size == (kitti / "sequences/08/velodyne" / p.name).with_suffix(".bin").stat().st_size // 4
               for p in labels)
    predicted = np.fromfile(labels[0], np.uint32)
    assert set(np.unique(predicted)) <= set(OFFICIAL_LEARNING_MAP_INV.values()) - {0}
    reference, conf = official_iou(kitti, tmp_path / "pred", ["08"])
    np.testing.assert_array_equal(np.array(ev.confusion).T, conf)
    assert ev.miou == pytest.approx(reference, rel=1e-12, abs=1e-15)  # the reference adds 1e-15 to unions


def test_test_split_predictions_only(kitti, tmp_path):
    cfg = FinetuneConfig(fraction=1.0, epochs=0, batch_size=1, workers=0, from_scratch=True)
    finetune(None, tmp_path / "ft", cfg, dataroot=kitti, quiet=True)
    with pytest.raises(UserError, match="no labels"):
        evaluate(tmp_path / "ft" / "checkpoint.pt", split="test", quiet=True)
    ev = evaluate(tmp_path / "ft" / "checkpoint.pt", split="test", save_predictions=tmp_path / "pred", quiet=True)
    assert ev.miou is None and (tmp_path / "pred/sequences/11/predictions/000000.label").exists()


def test_nuscenes_classes_are_refused_on_kitti(distilled_checkpoint, kitti):
    with pytest.raises(UserError, match="classes of nuscenes"):
        evaluate(distilled_checkpoint, zero_shot=True, dataroot=kitti, quiet=True)


def test_synthetic_town_in_kitti_layout(tmp_path):
    from relational_distill.sim.kitti_writer import RAW_ID
    from relational_distill.sim.layout import FINE

    root = tmp_path / "town"
    r = runner.invoke(app, ["make-sim", str(root), "--format", "semantickitti", "--scenes", "3",
                            "--samples-per-scene", "2", "--image-size", "192x112", "--seed", "4", "-q"])
    assert r.exit_code == 0, r.output
    index = open_index(root, "v1.0-sim")
    assert [s["token"] for s in index.split("train")] == [f"00/{k:06d}" for k in range(4)]
    assert [s["token"] for s in index.split("val")] == ["08/000000", "08/000001"]
    raw_all = np.concatenate([np.fromfile(root / s["labels"], np.uint32) for s in index.samples])
    semantic, instance = raw_all & 0xFFFF, raw_all >> 16
    assert set(np.unique(semantic)) <= set(OFFICIAL_LEARNING_MAP)
    assert {252, 254, 258, 10, 30, 80, 71} <= set(np.unique(semantic))      # moving ids, poles, trunks
    things = np.isin(semantic, [10, 11, 13, 15, 18, 20, 30, 252, 254, 257, 258])
    assert (instance[things] > 0).all() and (instance[~things] == 0).all()
    poses = np.loadtxt(root / "sequences/00/poses.txt").reshape(-1, 3, 4)
    np.testing.assert_allclose(poses[0], np.eye(4)[:3], atol=1e-9)
    assert poses[1][2, 3] > 1.0                                              # camera 0 drives forward (z)
    # points seen by image_2 through P2 . Tr mostly land on pixels of their own class (side-car class map)
    sample = index.split("val")[0]
    cam = sample["cameras"]["image_2"]
    xyz = index.read_points(sample)[:, :3]
    idx, uv, _ = project_points(xyz, np.array(cam["lidar_to_camera"]), np.array(cam["intrinsic"]), (192, 112))
    side = np.load(root / "sim_sidecar" / (cam["image"][:-4] + ".npz"))["category"]
    pixel_fine = side[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)]
    fine_to_class = {FINE[n]: OFFICIAL_LEARNING_MAP[raw] for n, raw in RAW_ID.items()}
    pixel_class = np.array([fine_to_class.get(int(f), -1) for f in pixel_fine])
    point_class = index.read_labels(sample, len(xyz))[idx]
    keep = ~np.isin(point_class, [16, 18])                                   # trunk / pole are finer than the map
    assert len(idx) > 200 and (pixel_class[keep] == point_class[keep]).mean() > 0.9


def test_out_of_distribution_from_a_distilled_checkpoint(distilled_checkpoint, tmp_path):
    town = tmp_path / "kitti_town"
    assert runner.invoke(app, ["make-sim", str(town), "--format", "semantickitti", "--scenes", "2",
                               "--samples-per-scene", "2", "--image-size", "192x112", "-q"]).exit_code == 0
    r = runner.invoke(app, ["finetune", str(distilled_checkpoint), "--dataroot", str(town), "--fraction", "0.01",
                            "--epochs", "1", "--batch-size", "1", "--workers", "0", "--out", str(tmp_path / "ft"),
                            "-q"])
    assert r.exit_code == 0, r.output
    assert "counted as 0" in r.output and "semantickitti" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ft/checkpoint.pt"), "--dataroot", str(town), "-q",
                            "--save-predictions", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "pred/sequences/08/predictions").iterdir())) == 2


def test_bad_input_neither_layout(tmp_path):
    (tmp_path / "readme.txt").write_text("not a dataset")
    _one_line_error(runner.invoke(app, ["inspect", str(tmp_path), "-q"]), str(tmp_path), "neither")


def test_bad_input_missing_calib(kitti, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(kitti, copy)
    (copy / "sequences/08/calib.txt").unlink()
    _one_line_error(runner.invoke(app, ["inspect", str(copy), "-q"]), str(copy / "sequences/08/calib.txt"))


def test_bad_input_label_length(kitti, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(kitti, copy)
    victim = copy / "sequences/00/labels/000001.label"
    victim.write_bytes(victim.read_bytes()[:-4])
    _one_line_error(runner.invoke(app, ["inspect", str(copy), "-q"]), str(victim), "000001.bin")


def test_bad_input_training_without_labels(kitti, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(kitti, copy)
    shutil.rmtree(copy / "sequences/00/labels")
    r = runner.invoke(app, ["finetune", "--from-scratch", "--dataroot", str(copy), "--fraction", "1.0",
                            "--out", str(tmp_path / "ft"), "-q"])
    _one_line_error(r, str(copy / "sequences/00/labels"), "training")


def test_finetuned_checkpoint_records_its_dataset_and_fingerprint(kitti, tmp_path):
    """The one checkpoint format on SemanticKITTI: the meta names the dataset, the head's 19 classes and the
    dataset's fingerprint, which follows the .label files (docs/reliability.md) but not the folder's location."""
    from relational_distill.checkpoint import load_checkpoint
    from relational_distill.data.fingerprint import dataset_fingerprint

    cfg = FinetuneConfig(fraction=1.0, epochs=0, batch_size=1, workers=0, from_scratch=True)
    finetune(None, tmp_path / "ft", cfg, dataroot=kitti, quiet=True)
    meta = load_checkpoint(tmp_path / "ft" / "checkpoint.pt").meta
    index = open_index(kitti, "v1.0-sim")
    assert meta.dataset == "semantickitti" and meta.version == "semantickitti"
    assert meta.class_names == list(learning_map().class_names) and len(meta.class_names) == meta.out_dim == 19
    assert meta.dataset_fingerprint == dataset_fingerprint(index)
    moved = tmp_path / "moved"
    shutil.copytree(kitti, moved)
    assert dataset_fingerprint(open_index(moved, "v1.0-sim")) == meta.dataset_fingerprint
    label = moved / "sequences" / "00" / "labels" / "000001.label"
    label.write_bytes(label.read_bytes()[:-4])
    assert dataset_fingerprint(open_index(moved, "v1.0-sim")) != meta.dataset_fingerprint
    label.unlink()
    with pytest.raises(UserError, match="000001.label: missing"):
        dataset_fingerprint(open_index(moved, "v1.0-sim"))
