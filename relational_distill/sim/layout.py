"""Procedural street scenes: a straight road with sidewalks, buildings, trees, parked and standing vehicles,
pedestrians, a construction zone and small movable objects.

Everything is laid out in a scene-local frame: ``x`` along the road, ``y`` to the left, ground at ``z = 0``.
The ego drives along ``x`` in the right-hand lane (``y < 0``). Objects are tuples of primitives sharing an
instance id; annotatable objects also carry a 3D box for the ``sample_annotation`` table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raycast import Primitives

# nuScenes fine category indices (devkit colormap order); the tests check these against the devkit.
FINE = {
    "pedestrian": 2, "child": 3, "barrier": 9, "pushable": 11, "traffic_cone": 12, "bicycle": 14,
    "bus": 16, "car": 17, "construction_vehicle": 18, "motorcycle": 21, "trailer": 22, "truck": 23,
    "driveable_surface": 24, "other_flat": 25, "sidewalk": 26, "terrain": 27, "manmade": 28,
    "static_other": 29, "vegetation": 30,
}
# Category of each annotated object in the devkit's category table, and its attribute.
ANNOTATED = {
    "pedestrian": ("human.pedestrian.adult", "pedestrian.standing"),
    "child": ("human.pedestrian.child", "pedestrian.standing"),
    "barrier": ("movable_object.barrier", None),
    "pushable": ("movable_object.pushable_pullable", None),
    "traffic_cone": ("movable_object.trafficcone", None),
    "bicycle": ("vehicle.bicycle", "cycle.without_rider"),
    "motorcycle": ("vehicle.motorcycle", "cycle.without_rider"),
    "bus": ("vehicle.bus.rigid", "vehicle.stopped"),
    "car": ("vehicle.car", "vehicle.parked"),
    "construction_vehicle": ("vehicle.construction", "vehicle.parked"),
    "trailer": ("vehicle.trailer", "vehicle.parked"),
    "truck": ("vehicle.truck", "vehicle.parked"),
}


@dataclass(frozen=True)
class TownProfile:
    """Class mix and road geometry of a town; ``urban`` is nuScenes-like, ``suburban`` the out-of-distribution one."""

    road_half_width: tuple[float, float]
    sidewalk_width: tuple[float, float]
    building_prob: float       # probability that a frontage slot holds a building (else trees/terrain)
    building_height: tuple[float, float]
    tree_spacing: float        # metres between tree slots along each side
    parked_car_prob: float
    pedestrians: tuple[int, int]
    other_flat_prob: float     # probability that a verge segment is other_flat rather than terrain


PROFILES = {
    "urban": TownProfile((4.0, 6.0), (2.0, 3.5), 0.8, (5.0, 16.0), 9.0, 0.3, (4, 9), 0.3),
    "suburban": TownProfile((3.5, 4.5), (1.5, 2.5), 0.35, (3.5, 8.0), 6.0, 0.35, (1, 4), 0.15),
}


@dataclass
class SceneObject:
    name: str                      # key of FINE
    instance: int
    box: tuple[np.ndarray, np.ndarray, float] | None  # centre (3,), size (w, l, h), yaw — for annotations


@dataclass
class SceneLayout:
    primitives: Primitives
    objects: list[SceneObject]
    road_half_width: float
    sidewalk_width: float
    verge_segments: np.ndarray     # (S, 3): x0, x1, side(+1/-1) of other_flat verge segments
    ego_lane_y: float
    x_range: tuple[float, float]

    def ground_category(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """nuScenes fine category of the ground at scene-local (x, y) metres."""
        ay = np.abs(y)
        cat = np.full(x.shape, FINE["terrain"], np.int64)
        for x0, x1, side in self.verge_segments:
            cat[(x >= x0) & (x < x1) & (np.sign(y) == side)] = FINE["other_flat"]
        cat[ay < self.road_half_width + self.sidewalk_width] = FINE["sidewalk"]
        cat[ay < self.road_half_width] = FINE["driveable_surface"]
        # a painted traffic island (other_flat) in the middle of the road every 60 m
        island = (ay < 0.6) & (np.mod(x, 60.0) < 8.0)
        cat[island] = FINE["other_flat"]
        return cat


class _Builder:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {"box": [], "cylinder": [], "cone": [], "sphere": []}
        self.objects: list[SceneObject] = []
        self.next_instance = 0

    def new(self, name: str, box=None) -> int:
        inst = self.next_instance
        self.next_instance += 1
        self.objects.append(SceneObject(name, inst, box))
        return inst

    def box(self, name, cx, cy, z0, length, width, height, yaw, annotate=True) -> int:
        centre = np.array([cx, cy, z0 + height / 2])
        inst = self.new(name, (centre, np.array([width, length, height]), yaw) if annotate else None)
        self.rows["box"].append((np.r_[centre, length / 2, width / 2, height / 2, yaw], FINE[name], inst))
        return inst

    def add_box(self, name, inst, cx, cy, z0, length, width, height, yaw) -> None:
        self.rows["box"].append((np.array([cx, cy, z0 + height / 2, length / 2, width / 2, height / 2, yaw]),
                                 FINE[name], inst))


def generate_scene(rng: np.random.Generator, profile: TownProfile, x_range: tuple[float, float],
                   focus: tuple[float, float]) -> SceneLayout:
    """Lay out one street scene covering ``x_range`` metres of road; the rare classes are placed within
    ``focus`` (the stretch the ego's sensors see best)."""
    b = _Builder()
    road = rng.uniform(*profile.road_half_width)
    walk = rng.uniform(*profile.sidewalk_width)
    edge = road + walk
    x0, x1 = x_range
    ego_lane_y = -road / 2

    # Verge segments of other_flat (driveways, plazas); the rest of the verge is terrain.
    segments = []
    for side in (-1.0, 1.0):
        x = x0
        while x < x1:
            length = rng.uniform(10, 30)
            if rng.random() < profile.other_flat_prob:
                segments.append((x, x + length, side))
            x += length
    verge = np.array(segments, dtype=np.float64).reshape(-1, 3)

    # Frontage: buildings (manmade) or clumps of trees set back behind the sidewalk.
    for side in (-1.0, 1.0):
        x = x0
        while x < x1:
            length = rng.uniform(8, 25)
            setback = rng.uniform(1.0, 6.0)
            if rng.random() < profile.building_prob:
                depth = rng.uniform(6, 12)
                b.box("manmade", x + length / 2, side * (edge + setback + depth / 2), 0.0, length, depth,
                      rng.uniform(*profile.building_height), 0.0, annotate=False)
            else:
                for tx in np.arange(x + 2, x + length - 1, rng.uniform(3, 6)):
                    _tree(b, rng, tx, side * (edge + setback + rng.uniform(0, 4)))
            x += length + rng.uniform(1.5, 8)

    # Street trees and poles along the sidewalk edge.
    for side in (-1.0, 1.0):
        for x in np.arange(x0 + rng.uniform(0, profile.tree_spacing), x1, profile.tree_spacing):
            if rng.random() < 0.6:
                _tree(b, rng, x, side * (edge - 0.6))
            elif rng.random() < 0.5:
                inst = b.new("manmade")
                b.rows["cylinder"].append((np.array([x, side * (road + 0.4), 0.0, 6.0, 0.15]), FINE["manmade"], inst))

    # Parked cars along both kerbs; other vehicles standing in the opposite lane or at the kerb.
    for side in (-1.0, 1.0):
        for x in np.arange(x0 + 3, x1 - 3, 6.5):
            if rng.random() < profile.parked_car_prob:
                b.box("car", x + rng.uniform(-0.5, 0.5), side * (road - 1.2), 0.0, rng.uniform(4.0, 4.9),
                      rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.8), rng.uniform(-0.05, 0.05))

    # Rare and mid-frequency classes: at least one of each per scene, near the ego's path.
    def spot(lo=0.25, hi=0.75):
        return focus[0] + (focus[1] - focus[0]) * rng.uniform(lo, hi)

    for _ in range(rng.integers(1, 3)):
        b.box("truck", spot(), road / 2, 0.0, rng.uniform(6, 8), 2.5, rng.uniform(2.8, 3.4), np.pi)
    b.box("bus", spot(), road / 2, 0.0, rng.uniform(10, 12.5), 2.6, 3.2, np.pi)
    tx = spot()
    b.box("trailer", tx, road / 2, 0.4, 9.0, 2.5, 3.2, np.pi)
    inst = b.box("construction_vehicle", spot(), -(edge + 4.0), 0.0, 6.0, 2.8, 2.6, rng.uniform(0, np.pi))
    cx = b.objects[-1].box[0]
    b.add_box("construction_vehicle", inst, cx[0] + 2.5, cx[1], 2.6, 4.0, 0.5, 0.5, 0.3)  # the arm
    for name, size in (("bicycle", (1.7, 0.35, 1.05)), ("motorcycle", (2.0, 0.75, 1.2))):
        for _ in range(rng.integers(1, 3)):
            b.box(name, spot(0.1, 0.9), rng.choice([-1, 1]) * (road + 0.8), 0.0, *size, rng.uniform(-0.3, 0.3))
    for _ in range(rng.integers(*profile.pedestrians)):
        _pedestrian(b, rng, spot(0.05, 0.95), rng.choice([-1, 1]) * (road + rng.uniform(0.5, walk - 0.3)))
    # Construction zone on the ego's kerb, ahead: barriers on the sidewalk edge, cones along the kerb.
    zx = spot(0.4, 0.8)
    for k in range(rng.integers(2, 5)):
        b.box("barrier", zx + 2.2 * k, -(road + 0.4), 0.0, 2.0, 0.4, 1.0, 0.0)
    for k in range(rng.integers(3, 7)):
        cy = -(road - 0.5)
        inst = b.new("traffic_cone", (np.array([zx - 3 + 1.5 * k, cy, 0.35]), np.array([0.4, 0.4, 0.7]), 0.0))
        b.rows["cone"].append((np.array([zx - 3 + 1.5 * k, cy, 0.0, 0.7, 0.2]), FINE["traffic_cone"], inst))
    # A few objects of classes the 16-class benchmark ignores (benches, bins, a stroller-like pushable).
    for _ in range(rng.integers(1, 4)):
        b.box("static_other", spot(0.05, 0.95), rng.choice([-1, 1]) * (edge - 1.2), 0.0, 1.8, 0.6, 0.5, 0.0,
              annotate=False)
    b.box("pushable", spot(), -(road + 1.0), 0.0, 0.6, 0.6, 1.0, 0.0)

    return SceneLayout(Primitives.from_lists(b.rows), b.objects, road, walk, verge, ego_lane_y, x_range)


def _tree(b: _Builder, rng: np.random.Generator, x: float, y: float) -> None:
    inst = b.new("vegetation")
    trunk_h = rng.uniform(1.8, 3.0)
    crown = rng.uniform(1.2, 2.8)
    b.rows["cylinder"].append((np.array([x, y, 0.0, trunk_h, 0.18]), FINE["vegetation"], inst))
    b.rows["sphere"].append((np.array([x, y, trunk_h + crown * 0.8, crown]), FINE["vegetation"], inst))


def _pedestrian(b: _Builder, rng: np.random.Generator, x: float, y: float) -> None:
    name = "child" if rng.random() < 0.15 else "pedestrian"
    height = rng.uniform(1.0, 1.3) if name == "child" else rng.uniform(1.55, 1.9)
    inst = b.new(name, (np.array([x, y, height / 2]), np.array([0.6, 0.6, height]), 0.0))
    b.rows["cylinder"].append((np.array([x, y, 0.0, height * 0.87, 0.22]), FINE[name], inst))
    b.rows["sphere"].append((np.array([x, y, height * 0.93, 0.11]), FINE[name], inst))
