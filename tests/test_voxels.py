import torch

from relational_distill.models.voxels import scatter_mean, voxel_coordinates, voxelize


def test_inverse_map_against_brute_force():
    g = torch.Generator().manual_seed(0)
    clouds = [torch.rand(300, 3, generator=g) * 2 - 1, torch.rand(200, 3, generator=g) * 3]
    coords = [voxel_coordinates(c, 0.25) for c in clouds]
    indices, inverse, shape = voxelize(coords)
    assert all(s % 16 == 0 for s in shape)
    # every point maps to a voxel holding its own (batch, shifted coordinate); voxels are unique
    start = 0
    for b, c in enumerate(coords):
        shifted = c - c.min(0).values
        for i in range(len(c)):
            v = indices[inverse[start + i]]
            assert v[0] == b and torch.equal(v[1:].long(), shifted[i])
        start += len(c)
    assert len(torch.unique(indices, dim=0)) == len(indices)
    # brute-force count of distinct voxels
    keys = {(b, *map(int, row)) for b, c in enumerate(coords) for row in c}
    assert len(keys) == len(indices)


def test_scatter_mean():
    v = torch.tensor([[1.0], [3.0], [5.0]])
    out = scatter_mean(v, torch.tensor([0, 0, 1]), 2)
    assert out.squeeze(1).tolist() == [2.0, 5.0]


def test_cylindrical_mode_bins_by_angle():
    xyz = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    c = voxel_coordinates(xyz, 0.1, "cylindrical", 1.0)
    assert c[0, 0] == c[1, 0] and c[1, 1] - c[0, 1] == 90


def test_voxelize_equals_row_unique():
    """The mixed-radix key gives exactly torch.unique(rows, dim=0): same voxels, same order, same inverse."""
    g = torch.Generator().manual_seed(1)
    coords = [torch.randint(-40, 40, (500, 3), generator=g), torch.randint(0, 7, (300, 3), generator=g)]
    rows = torch.cat([torch.cat([torch.full((len(c), 1), b), c - c.min(0).values], 1) for b, c in enumerate(coords)])
    want, want_inverse = torch.unique(rows, dim=0, return_inverse=True)
    indices, inverse, _ = voxelize(coords)
    assert torch.equal(indices.long(), want) and torch.equal(inverse, want_inverse)
