"""Vectorised ray casting against boxes, vertical cylinders, cones, spheres and the ground plane.

Rays come in tiles (``(T, n, 3)`` directions from one origin). Each primitive's bounding sphere is tested
against each tile's bounding cone, and only the surviving (tile, primitive) pairs are intersected, so the
cost grows with what a tile can actually see rather than with rays x primitives.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-6
KINDS = ("box", "cylinder", "cone", "sphere")
# Parameter layout per kind (one row per primitive):
#   box:      cx, cy, cz, half_x, half_y, half_z, yaw
#   cylinder: cx, cy, z0, z1, radius          (vertical axis, closed top)
#   cone:     cx, cy, z0, height, radius      (vertical axis, apex up)
#   sphere:   cx, cy, cz, radius
PARAM_SIZE = {"box": 7, "cylinder": 5, "cone": 5, "sphere": 4}


@dataclass
class Primitives:
    """All primitives of one scene, grouped by kind; ``category`` is the nuScenes fine index."""

    params: dict[str, np.ndarray] = field(default_factory=lambda: {k: np.zeros((0, PARAM_SIZE[k])) for k in KINDS})
    category: dict[str, np.ndarray] = field(default_factory=lambda: {k: np.zeros(0, np.int64) for k in KINDS})
    instance: dict[str, np.ndarray] = field(default_factory=lambda: {k: np.zeros(0, np.int64) for k in KINDS})

    @classmethod
    def from_lists(cls, rows: dict[str, list[tuple[np.ndarray, int, int]]]) -> "Primitives":
        prims = cls()
        for kind in KINDS:
            if rows.get(kind):
                prims.params[kind] = np.array([r[0] for r in rows[kind]], dtype=np.float64)
                prims.category[kind] = np.array([r[1] for r in rows[kind]], dtype=np.int64)
                prims.instance[kind] = np.array([r[2] for r in rows[kind]], dtype=np.int64)
        return prims

    def bounding_spheres(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Centres (P, 3) and radii (P,) of spheres enclosing each primitive of ``kind``."""
        p = self.params[kind]
        if kind == "box":
            return p[:, 0:3], np.linalg.norm(p[:, 3:6], axis=1)
        if kind == "cylinder":
            half_h = 0.5 * (p[:, 3] - p[:, 2])
            centre = np.stack([p[:, 0], p[:, 1], p[:, 2] + half_h], 1)
            return centre, np.hypot(half_h, p[:, 4])
        if kind == "cone":
            half_h = 0.5 * p[:, 3]
            centre = np.stack([p[:, 0], p[:, 1], p[:, 2] + half_h], 1)
            return centre, np.hypot(half_h, p[:, 4])
        return p[:, 0:3], p[:, 3]


def _intersect_box(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(p[:, 6]), np.sin(p[:, 6])
    rel = o - p[:, 0:3]
    # rotate into the box frame (by -yaw)
    lo = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    ld = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    ld = np.where(np.abs(ld) < EPS, EPS, ld)
    t1 = (-p[:, 3:6] - lo) / ld
    t2 = (p[:, 3:6] - lo) / ld
    tnear = np.minimum(t1, t2)
    t_enter = tnear.max(1)
    t_exit = np.maximum(t1, t2).min(1)
    hit = (t_exit >= t_enter) & (t_enter > EPS)
    axis = tnear.argmax(1)
    n_local = np.zeros_like(lo)
    n_local[np.arange(len(lo)), axis] = -np.sign(ld[np.arange(len(lo)), axis])
    normal = np.stack([c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1], n_local[:, 2]], 1)
    return np.where(hit, t_enter, np.inf), normal


def _intersect_cylinder(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ox, oy = o[:, 0] - p[:, 0], o[:, 1] - p[:, 1]
    a = np.maximum(d[:, 0] ** 2 + d[:, 1] ** 2, EPS)
    b = 2 * (ox * d[:, 0] + oy * d[:, 1])
    cc = ox ** 2 + oy ** 2 - p[:, 4] ** 2
    disc = b * b - 4 * a * cc
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    z_side = o[:, 2] + t_side * d[:, 2]
    side_ok = (disc >= 0) & (t_side > EPS) & (z_side >= p[:, 2]) & (z_side <= p[:, 3])
    dz = np.where(np.abs(d[:, 2]) < EPS, -EPS, d[:, 2])
    t_cap = (p[:, 3] - o[:, 2]) / dz
    cap_ok = (t_cap > EPS) & ((ox + t_cap * d[:, 0]) ** 2 + (oy + t_cap * d[:, 1]) ** 2 <= p[:, 4] ** 2)
    t_side = np.where(side_ok, t_side, np.inf)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    hx, hy = ox + t_side * d[:, 0], oy + t_side * d[:, 1]
    side_n = np.stack([hx, hy, np.zeros_like(hx)], 1) / np.maximum(p[:, 4:5], EPS)
    normal = np.where(use_cap[:, None], np.array([0.0, 0.0, 1.0]), side_n)
    return t, normal


def _intersect_cone(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    apex_z = p[:, 2] + p[:, 3]
    k2 = (p[:, 4] / p[:, 3]) ** 2
    wx, wy, wz = o[:, 0] - p[:, 0], o[:, 1] - p[:, 1], o[:, 2] - apex_z
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2
    b = 2 * (wx * d[:, 0] + wy * d[:, 1] - k2 * wz * d[:, 2])
    c = wx ** 2 + wy ** 2 - k2 * wz ** 2
    a = np.where(np.abs(a) < EPS, EPS, a)
    disc = b * b - 4 * a * c
    sq = np.sqrt(np.maximum(disc, 0))
    best = np.full(len(o), np.inf)
    for root in ((-b - sq) / (2 * a), (-b + sq) / (2 * a)):
        z = o[:, 2] + root * d[:, 2]
        ok = (disc >= 0) & (root > EPS) & (z >= p[:, 2]) & (z <= apex_z)
        best = np.where(ok & (root < best), root, best)
    t = np.where(np.isfinite(best), best, 0.0)
    hx, hy, hz = wx + t * d[:, 0], wy + t * d[:, 1], wz + t * d[:, 2]
    normal = np.stack([hx, hy, -k2 * hz], 1)
    return best, normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), EPS)


def _intersect_sphere(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    oc = o - p[:, 0:3]
    b = (oc * d).sum(1)
    c = (oc * oc).sum(1) - p[:, 3] ** 2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0))
    t = np.where((disc >= 0) & (t > EPS), t, np.inf)
    hit_rel = oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, hit_rel / np.maximum(p[:, 3:4], EPS)


_INTERSECT = {"box": _intersect_box, "cylinder": _intersect_cylinder, "cone": _intersect_cone,
              "sphere": _intersect_sphere}


@dataclass
class Hits:
    """Nearest hit per ray; ``category``/``instance`` are -1 where the ray hit nothing within range."""

    t: np.ndarray         # (R,) metres along the unit direction; inf for no hit
    normal: np.ndarray    # (R, 3) unit surface normal (world frame)
    category: np.ndarray  # (R,) nuScenes fine index of the hit primitive / ground
    instance: np.ndarray  # (R,) instance id (ground gets its own negative ids below -1)
    is_ground: np.ndarray  # (R,) bool


def cast(prims: Primitives, origin: np.ndarray, dirs: np.ndarray, max_range: float) -> Hits:
    """Intersect tiles of rays ``dirs`` (T, n, 3), unit length, from ``origin`` (3,) with the scene objects.

    The ground plane z = 0 is not included here (see :func:`cast_with_ground`).
    """
    num_tiles, per_tile, _ = dirs.shape
    flat_dirs = dirs.reshape(-1, 3)
    best_t = np.full(num_tiles * per_tile, np.inf)
    best_normal = np.zeros((num_tiles * per_tile, 3))
    best_cat = np.full(num_tiles * per_tile, -1, np.int64)
    best_inst = np.full(num_tiles * per_tile, -1, np.int64)

    axis = dirs.mean(1)
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    half_angle = np.arccos(np.clip(np.einsum("tnk,tk->tn", dirs, axis).min(1), -1, 1))  # (T,)

    for kind in KINDS:
        params = prims.params[kind]
        if len(params) == 0:
            continue
        centre, radius = prims.bounding_spheres(kind)
        rel = centre - origin
        dist = np.linalg.norm(rel, axis=1)
        inside = dist <= radius
        ang_radius = np.arcsin(np.clip(radius / np.maximum(dist, EPS), 0, 1))
        cos_to_axis = (axis @ rel.T) / np.maximum(dist, EPS)  # (T, P)
        angle = np.arccos(np.clip(cos_to_axis, -1, 1))
        visible = (angle <= half_angle[:, None] + ang_radius[None] + 1e-3) | inside[None]
        visible &= (dist - radius <= max_range)[None]
        tile_idx, prim_idx = np.nonzero(visible)
        if len(tile_idx) == 0:
            continue
        ray_idx = (tile_idx[:, None] * per_tile + np.arange(per_tile)[None]).reshape(-1)
        prim_rep = np.repeat(prim_idx, per_tile)
        o = np.broadcast_to(origin, (len(ray_idx), 3))
        t, normal = _INTERSECT[kind](o, flat_dirs[ray_idx], params[prim_rep])
        keep = t < max_range
        ray_idx, prim_rep, t, normal = ray_idx[keep], prim_rep[keep], t[keep], normal[keep]
        # nearest hit per ray among this kind's candidates, then merge with the best so far
        order = np.lexsort((t, ray_idx))
        ray_sorted = ray_idx[order]
        first = np.ones(len(order), bool)
        first[1:] = ray_sorted[1:] != ray_sorted[:-1]
        sel = order[first]
        rays = ray_idx[sel]
        closer = t[sel] < best_t[rays]
        rays, sel = rays[closer], sel[closer]
        best_t[rays] = t[sel]
        best_normal[rays] = normal[sel]
        best_cat[rays] = prims.category[kind][prim_rep[sel]]
        best_inst[rays] = prims.instance[kind][prim_rep[sel]]
    return Hits(best_t, best_normal, best_cat, best_inst, np.zeros(len(best_t), bool))


def cast_with_ground(prims: Primitives, ground_fn, origin: np.ndarray, dirs: np.ndarray,
                     max_range: float) -> Hits:
    """Like :func:`cast`, plus the ground plane z = 0 whose category is ``ground_fn(x, y)``."""
    hits = cast(prims, origin, dirs, max_range)
    d = dirs.reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[:, 2] < -EPS, -origin[2] / d[:, 2], np.inf)
    t_ground = np.where(t_ground < max_range, t_ground, np.inf)
    ground = t_ground < hits.t
    if ground.any():
        xy = origin[:2] + t_ground[ground, None] * d[ground, :2]
        cat = ground_fn(xy[:, 0], xy[:, 1])
        hits.t[ground] = t_ground[ground]
        hits.normal[ground] = (0.0, 0.0, 1.0)
        hits.category[ground] = cat
        hits.instance[ground] = -2 - cat  # one "stuff" instance per ground class
        hits.is_ground[ground] = True
    return hits
