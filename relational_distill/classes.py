"""The 16 nuScenes-lidarseg evaluation classes and the fine nuScenes categories the synthetic town uses.

Index 0 of the 16-class scheme is ``ignore``. The fine (32-category) names and indices are the devkit's
own (``nuscenes.utils.color_map.get_colormap`` order); the 32 -> 16 mapping is always taken from the
devkit's ``LidarsegClassMapper`` at index-build time, never re-typed here.
"""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
    "manmade", "vegetation",
)
"""Class ``i + 1`` of the 17-way label space (0 = ignore)."""

# Semantically near classes: the confusions of a CLIP-like teacher fall mostly within a group
# (docs/teachers.md, "The simulated teachers"); the teacher summary's near_class_error_share counts them.
SEMANTIC_GROUPS: dict[str, tuple[str, ...]] = {
    "vehicle": ("bicycle", "bus", "car", "construction_vehicle", "motorcycle", "trailer", "truck"),
    "flat": ("driveable_surface", "other_flat", "sidewalk", "terrain"),
    "structure": ("manmade", "vegetation", "barrier", "traffic_cone"),
    "human": ("pedestrian",),
}


def fine_category_names() -> list[str]:
    """The 32 nuScenes-lidarseg category names in index order, from the devkit."""
    from nuscenes.utils.color_map import get_colormap

    return list(get_colormap().keys())
