"""Our point -> pixel pairs against nuscenes-devkit's NuScenesExplorer.map_pointcloud_to_image."""
from __future__ import annotations

import numpy as np
import pytest
from pyquaternion import Quaternion

from relational_distill.data.geometry import matrix_to_quaternion, quaternion_to_matrix
from relational_distill.data.index import CAMERAS, camera_list
from relational_distill.data.nuscenes import lidar_to_camera, read_lidar
from relational_distill.data.projection import IMAGE_MARGIN_PX, project_points


def test_quaternions_agree_with_pyquaternion():
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(20, 4)):
        r = Quaternion(q / np.linalg.norm(q)).rotation_matrix
        np.testing.assert_allclose(quaternion_to_matrix(q), r, atol=1e-12)
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r, atol=1e-12)


@pytest.mark.parametrize("sample_no", [0, 3])
def test_pairs_match_devkit(nusc, index, sample_no):
    sample = nusc.sample[sample_no]
    rec = next(s for s in index.samples if s["token"] == sample["token"])
    points = read_lidar(index.dataroot, rec["lidar"])
    for cam in camera_list(rec):
        dev_uv, dev_depth, im = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"],
                                                                       sample["data"][cam["name"]])
        np.testing.assert_allclose(cam["lidar_to_camera"],
                                   lidar_to_camera(nusc, sample["data"]["LIDAR_TOP"], sample["data"][cam["name"]]))
        idx, uv, depth = project_points(points[:, :3], cam["lidar_to_camera"], cam["intrinsic"], im.size)
        dev_uv = dev_uv[:2].T
        assert len(idx) > 50
        # match each devkit pixel to ours (both keep the original point order)
        d2 = ((uv[:, None, :] - dev_uv[None, :, :]) ** 2).sum(-1) + (depth[:, None] - dev_depth[None]) ** 2
        ours_to_dev = d2.argmin(1)
        matched = np.sqrt(d2[np.arange(len(uv)), ours_to_dev]) < 0.5
        w, h = im.size

        def near_border(p):
            return ((np.abs(p[:, 0] - IMAGE_MARGIN_PX) < 0.5) | (np.abs(p[:, 0] - (w - IMAGE_MARGIN_PX)) < 0.5)
                    | (np.abs(p[:, 1] - IMAGE_MARGIN_PX) < 0.5) | (np.abs(p[:, 1] - (h - IMAGE_MARGIN_PX)) < 0.5))

        assert (matched | near_border(uv)).all()
        unmatched_dev = np.setdiff1d(np.arange(len(dev_uv)), ours_to_dev[matched])
        assert near_border(dev_uv[unmatched_dev]).all()
        assert np.abs(uv[matched] - dev_uv[ours_to_dev[matched]]).max() < 0.5


def test_wrong_chain_moves_pixels(nusc, index):
    """Sanity of the reference: skipping the camera-time ego pose moves points by whole pixels."""
    rec = index.samples[1]
    sample = nusc.get("sample", rec["token"])
    points = read_lidar(index.dataroot, rec["lidar"])[:, :3]
    cam = camera_list(rec)[0]
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cam_sd = nusc.get("sample_data", sample["data"][CAMERAS[0]])
    good = lidar_to_camera(nusc, lidar_sd["token"], cam_sd["token"])
    cam_sd_wrong = dict(cam_sd, ego_pose_token=lidar_sd["ego_pose_token"])
    nusc.sample_data[nusc.getind("sample_data", cam_sd["token"])] = cam_sd_wrong
    try:
        wrong = lidar_to_camera(nusc, lidar_sd["token"], cam_sd["token"])
    finally:
        nusc.sample_data[nusc.getind("sample_data", cam_sd["token"])] = cam_sd
    i1, uv1, _ = project_points(points, good, cam["intrinsic"], cam["image_size"])
    i2, uv2, _ = project_points(points, wrong, cam["intrinsic"], cam["image_size"])
    common, a, b = np.intersect1d(i1, i2, return_indices=True)
    assert np.median(np.linalg.norm(uv1[a] - uv2[b], axis=1)) > 1.0


# nuScenes-like camera: 1600x900 images, CAM_FRONT's intrinsics; the teacher sees them at 416x224 (SLidR's size).
CAMERA_SIZE, TEACHER_SIZE, PATCH = (1600, 900), (416, 224), 16
INTRINSIC = [[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]


def one_camera_dataset(root, pixels: np.ndarray, depth: np.ndarray):
    """A one-sample, one-camera index under ``root`` whose lidar points project exactly onto ``pixels`` (M, 2)
    (u, v, centres on integers) at ``depth`` metres: the lidar frame is the camera frame."""
    from PIL import Image

    from relational_distill.data.nuscenes import NuScenesIndex

    fx, cx, fy, cy = INTRINSIC[0][0], INTRINSIC[0][2], INTRINSIC[1][1], INTRINSIC[1][2]
    xyz = np.stack([(pixels[:, 0] - cx) * depth / fx, (pixels[:, 1] - cy) * depth / fy, depth], 1)
    points = np.concatenate([xyz, np.zeros((len(xyz), 2))], 1).astype(np.float32)
    points.tofile(root / "points.bin")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(CAMERA_SIZE[1], CAMERA_SIZE[0], 3), dtype=np.uint8)  # the resize filter matters
    Image.fromarray(noise).save(root / "front.png")
    sample = {"token": "t0", "scene": "scene-0001", "split": "train", "timestamp": 0, "lidar": "points.bin",
              "lidarseg": None,
              "cameras": {"CAM_FRONT": {"image": "front.png", "image_size": list(CAMERA_SIZE), "intrinsic": INTRINSIC,
                                        "lidar_to_camera": np.eye(4).tolist()}}}
    return NuScenesIndex(str(root), "v1.0-sim", [0] * 32, [sample], ["scene-0001"])


def test_a_point_reads_the_teacher_cell_that_covers_its_pixel(tmp_path):
    """1600x900 camera, 416x224 teacher input (a 14 x 26 grid): a point's feature comes from the cell that covers
    its pixel after the resize, cell = floor(pixel edge coordinate x grid / image size) on each axis."""
    from relational_distill.data.dataset import load_sample

    gw, gh = TEACHER_SIZE[0] // PATCH, TEACHER_SIZE[1] // PATCH
    rng = np.random.default_rng(1)
    pixels = np.stack([rng.uniform(2, CAMERA_SIZE[0] - 3, 3000), rng.uniform(2, CAMERA_SIZE[1] - 3, 3000)], 1)
    # edge coordinates (pixel centres at +0.5) in teacher cells; stay clear of cell borders, where both are right
    cell_x, cell_y = (pixels[:, 0] + 0.5) * gw / CAMERA_SIZE[0], (pixels[:, 1] + 0.5) * gh / CAMERA_SIZE[1]
    clear = (np.abs(cell_x - np.round(cell_x)) > 1e-3) & (np.abs(cell_y - np.round(cell_y)) > 1e-3)
    pixels = pixels[clear]
    index = one_camera_dataset(tmp_path, pixels, rng.uniform(3, 60, len(pixels)))

    class OneHotCells:
        """Feature of cell (r, c) = unit vector e_{r * gw + c}."""

        def read(self, token):
            return np.eye(gh * gw, dtype=np.float16).reshape(gh * gw, gh, gw)[None]

    item = load_sample(index, index.samples[0], OneHotCells())
    assert len(item["pair_point"]) == len(pixels)
    got = item["pair_teacher"].argmax(1).numpy()
    want = (np.floor(cell_y[clear]) * gw + np.floor(cell_x[clear])).astype(np.int64)[item["pair_point"].numpy()]
    assert (got == want).all()


def test_teacher_features_at_pixels_are_grid_samples_bilinear_reads():
    """sample_at_pixels against torch's own bilinear sampler (grid_sample, align_corners=False, border padding,
    one camera at a time) on three cameras of different image sizes, pixels near the borders included."""
    import torch
    import torch.nn.functional as F

    from relational_distill.data.projection import sample_at_pixels

    rng = np.random.default_rng(3)
    sizes = [(1600, 900), (640, 480), (1241, 376)]
    features = torch.from_numpy(rng.normal(size=(3, 24, 7, 13)).astype(np.float16))
    camera = torch.from_numpy(rng.integers(0, 3, 4000))
    scale = torch.tensor(sizes, dtype=torch.float64)[camera]
    uv = torch.from_numpy(rng.uniform(-0.5, 1.0, (4000, 2))) * scale  # some past the last cell centre
    uv[:10] = 0.0
    uv[10:20] = scale[10:20] - 1
    got = sample_at_pixels(features, camera, uv, sizes)
    want = torch.empty(4000, 24)
    for c, (width, height) in enumerate(sizes):
        sel = camera == c
        grid = torch.stack([(2 * uv[sel, 0] + 1) / width - 1, (2 * uv[sel, 1] + 1) / height - 1], 1)
        want[sel] = F.grid_sample(features[c:c + 1].float(), grid.view(1, 1, -1, 2).float(), mode="bilinear",
                                  padding_mode="border", align_corners=False)[0, :, 0].T
    torch.testing.assert_close(got, F.normalize(want, dim=1), rtol=0, atol=1e-5)
