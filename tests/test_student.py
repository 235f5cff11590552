"""The student network (models/sparse_unet.py) and its whole-model helpers (student.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from spconv.core import ConvAlgo
from spconv.pytorch.conv import SparseConvolution

from relational_distill.models.sparse_unet import Student
from relational_distill.models.voxels import VoxelConfig, voxel_coordinates, voxelize_batch
from relational_distill.student import VoxelisingCollate, point_outputs, zero_shot_labels


def cloud(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g) * torch.tensor([20.0, 20.0, 3.0]) - torch.tensor([10.0, 10.0, 1.0])
    return torch.cat([xyz, torch.rand(n, 1, generator=g) * 255, torch.zeros(n, 1)], 1)


def student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(8, "small", VoxelConfig(0.5)).eval()


def algorithms(model: torch.nn.Module) -> dict[str, ConvAlgo]:
    return {name: m.algo for name, m in model.named_modules() if isinstance(m, SparseConvolution)}


def test_points_of_one_voxel_share_one_output():
    model, points = student(), cloud(600, 1)
    out = point_outputs(model, points)
    voxel = voxel_coordinates(points[:, :3], 0.5, "cartesian", 0.5)
    _, group = torch.unique(voxel, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), -1, dtype=torch.long)
    for i, g in enumerate(group.tolist()):
        if first[g] < 0:
            first[g] = i
    assert len(torch.unique(group)) < len(points)  # some voxels hold several points
    torch.testing.assert_close(out, out[first[group]], rtol=0, atol=0)


def test_a_batch_is_its_clouds_run_alone():
    """In eval mode, each cloud of a batch gets what it gets alone (the sparse convolutions keep batches apart)."""
    model, a, b = student(), cloud(500, 2), cloud(300, 3)
    both = model(torch.cat([a, b]), torch.cat([torch.zeros(500, dtype=torch.long), torch.ones(300, dtype=torch.long)]))
    torch.testing.assert_close(both[:500], point_outputs(model, a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[500:], point_outputs(model, b), rtol=1e-5, atol=1e-5)


def test_voxels_made_by_the_loader_are_the_ones_forward_makes():
    """Training voxelises in the DataLoader's workers (VoxelisingCollate); the student then gives exactly what it
    gives when it voxelises itself, and a batch's voxels are those of the concatenated clouds (brute force)."""
    model = student()
    items = [{"token": str(i), "points": cloud(n, 10 + i), "labels": torch.zeros(n, dtype=torch.long)}
             for i, n in enumerate((350, 280))]
    loader = torch.utils.data.DataLoader(items, batch_size=2, num_workers=1, collate_fn=VoxelisingCollate(model.voxel))
    batch = next(iter(loader))
    voxels = batch["voxels"]
    with torch.no_grad():
        torch.testing.assert_close(model(batch["points"], batch["batch"], voxels=voxels),
                                   model(batch["points"], batch["batch"]), rtol=0, atol=0)
    for i, it in enumerate(items):  # each point's voxel row: its sample, its coordinate shifted to the sample's min
        coords = voxel_coordinates(it["points"][:, :3], 0.5)
        rows = voxels.indices[voxels.inverse[batch["batch"] == i]]
        assert (rows[:, 0] == i).all() and torch.equal(rows[:, 1:].long(), coords - coords.min(0).values)
    again = voxelize_batch(batch["points"], batch["batch"], model.voxel)
    assert torch.equal(again.indices, voxels.indices) and torch.equal(again.inverse, voxels.inverse)


def test_rows_are_the_full_output_at_those_rows():
    model, points = student(), cloud(400, 4)
    rows = torch.tensor([5, 0, 399, 5, 17])
    batch = torch.zeros(400, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model(points, batch, rows=rows), model(points, batch)[rows], rtol=0, atol=0)


def test_the_algorithm_follows_the_device():
    """Built on CPU: Native everywhere. Moved to another device (here the 'meta' device, as no GPU is lent):
    spconv's default, implicit GEMM, except the 5x5x5 stem (125 cells) that spconv runs Native. Back on CPU:
    Native again."""
    model = Student(8, "small", VoxelConfig(0.5))
    assert set(algorithms(model).values()) == {ConvAlgo.Native}
    model.to("meta")
    moved = algorithms(model)
    assert moved.pop("backbone.stem") == ConvAlgo.Native
    assert set(moved.values()) == {ConvAlgo.MaskImplicitGemm}
    model.to_empty(device="cpu")
    assert set(algorithms(model).values()) == {ConvAlgo.Native}


def test_zero_shot_labels_against_a_loop():
    g = torch.Generator().manual_seed(5)
    feats, text = F.normalize(torch.randn(50, 6, generator=g), dim=1), F.normalize(torch.randn(4, 6, generator=g), dim=1)
    expected = [1 + max(range(4), key=lambda c: float(feats[i] @ text[c])) for i in range(50)]
    assert zero_shot_labels(feats, text).tolist() == expected
