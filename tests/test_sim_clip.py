"""The simulated teachers (teachers/sim_clip.py) and the statistics they are calibrated to
(metrics/teacher_errors.py), against loops and against the teacher as it was before the CLIP-like terms."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relational_distill.classes import CLASS_NAMES, SEMANTIC_GROUPS
from relational_distill.metrics.teacher_errors import error_statistics, mean_cosine_between_classes
from relational_distill.teachers.sim_clip import SimClipConfig, SimClipTeacher, sim_teacher_id, smooth_noise

FINE_TO_COARSE = [0] + [(i % 16) + 1 for i in range(31)]


def side_car(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 32, size=(48, 80)).astype(np.uint8)
    category[:8] = 255  # sky
    return category, rng.integers(-1, 5, size=(48, 80)).astype(np.int32)


def test_clean_teacher_is_the_teacher_of_commit_dbfa217():
    """sim-clip:clean gives bit-identical features and text embeddings, and the same teacher id, as the simulated
    teacher before the CLIP-like terms existed (its configs/sim_clip.yaml and code at commit dbfa217; the hashes
    were computed there on these side-car maps)."""
    teacher = SimClipTeacher(SimClipConfig.named("sim-clip:clean"), FINE_TO_COARSE)
    f = teacher.image_features(*side_car(), "scene-0001|samples/CAM_FRONT/x.jpg")
    assert hashlib.sha256(f.tobytes()).hexdigest() == \
        "1ef40db0fe7259bfae814cde76424e0c561d77f21c521bc90972dc5dcbff6335"
    assert hashlib.sha256(teacher.text_embeddings().numpy().tobytes()).hexdigest() == \
        "03b316c9ed405338ee337ac386dbcb9b07cf97d38beeaea061045d7086b46942"
    assert teacher.teacher_id == "sim-clip:ddeffe0db6f7"


def test_the_two_teachers_differ_and_are_told_apart_by_their_stores():
    clean, clip_like = SimClipConfig.named("sim-clip:clean"), SimClipConfig.named("sim-clip")
    assert clip_like.clip_like and not clean.clip_like
    assert sim_teacher_id(clean) != sim_teacher_id(clip_like)
    from relational_distill.teachers.store import _same_teacher

    assert _same_teacher(sim_teacher_id(clip_like), "sim-clip") and not _same_teacher(sim_teacher_id(clean), "sim-clip")
    assert _same_teacher(sim_teacher_id(clean), "sim-clip:clean")


def pure_confusion(cfg: SimClipConfig, **changes) -> SimClipConfig:
    """Only the class signal and the confusion: no instance term, noise, gap, context, blobs or bias."""
    return dataclasses.replace(cfg, instance_weight=0.0, noise_weight=0.0, image_gap=0.0, context_share=0.0,
                               blob_weight=0.0, image_bias_weight=0.0, **changes)


def one_class_image(fine: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((32, 48), fine, np.uint8), np.full((32, 48), -1, np.int32)


def test_systematic_confusion_repeats_in_every_view_and_the_rest_does_not():
    base = SimClipConfig.named("sim-clip")
    fine = FINE_TO_COARSE.index(11)  # a fine category of driveable_surface
    views = ["scene-0001|a.jpg", "scene-0002|b.jpg"]
    systematic = SimClipTeacher(pure_confusion(base, systematic_share=1.0), FINE_TO_COARSE)
    a, b = (systematic.image_features(*one_class_image(fine), v) for v in views)
    np.testing.assert_array_equal(a, b)
    direction = F.normalize(torch.from_numpy(systematic.class_dirs[10] + systematic.class_pulls[10]), dim=0).numpy()
    np.testing.assert_allclose(a[:, 0, 0], direction, atol=1e-6)  # the class direction plus its own pull
    # its pull points at a class of the same semantic group
    pulled = systematic.class_dirs @ systematic.class_pulls[10]
    target = CLASS_NAMES[int(np.argmax(pulled))]
    assert target in SEMANTIC_GROUPS["flat"] and target != "driveable_surface"
    view = SimClipTeacher(pure_confusion(base, systematic_share=0.0), FINE_TO_COARSE)
    a, b = (view.image_features(*one_class_image(fine), v) for v in views)
    assert not np.allclose(a, b)


def test_smooth_noise_is_correlated_over_its_scale():
    z = smooth_noise(np.random.default_rng(0), 40, 60, 256, 4.0)
    def corr(dy, dx):
        a, b = z[: 40 - dy, : 60 - dx].reshape(-1, 256), z[dy:, dx:].reshape(-1, 256)
        return float((a * b).sum(1).mean() / np.sqrt((a * a).sum(1).mean() * (b * b).sum(1).mean()))
    assert corr(0, 1) > 0.8 and corr(0, 2) > 0.5 and abs(corr(0, 12)) < 0.1


def test_error_statistics_against_loops():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 17, (3000,), generator=g)
    pred = torch.where(torch.rand(3000, generator=g) < 0.6, labels, torch.randint(1, 17, (3000,), generator=g))
    pred[labels == 0] = 3
    stats = error_statistics(pred, labels, small_classes=4)
    group = {name: g for g, members in SEMANTIC_GROUPS.items() for name in members}
    pairs = [(int(p), int(y)) for p, y in zip(pred, labels) if y > 0]
    wrong = [(p, y) for p, y in pairs if p != y]
    near = sum(group[CLASS_NAMES[p - 1]] == group[CLASS_NAMES[y - 1]] for p, y in wrong) / len(wrong)
    counts = {c: sum(1 for _, y in pairs if y == c) for c in range(1, 17)}
    order = sorted((c for c in counts if counts[c]), key=lambda c: counts[c])
    recall = {c: sum(1 for p, y in pairs if y == c and p == c) / counts[c] for c in order}
    assert stats["near_class_error_share"] == pytest.approx(near, abs=1e-12)
    assert stats["accuracy_small_classes"] == pytest.approx(sum(recall[c] for c in order[:4]) / 4, abs=1e-12)
    assert stats["accuracy_large_classes"] == pytest.approx(sum(recall[c] for c in order[-4:]) / 4, abs=1e-12)
    assert error_statistics(labels, labels)["near_class_error_share"] is None


def test_mean_cosine_between_classes_against_a_loop():
    g = torch.Generator().manual_seed(2)
    z, y = F.normalize(torch.randn(60, 5, generator=g, dtype=torch.float64), dim=1), torch.randint(1, 4, (60,), generator=g)
    pairs = [float(z[a] @ z[b]) for a in range(60) for b in range(60) if y[a] != y[b]]
    assert mean_cosine_between_classes(z, y) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_summary_statistics_on_a_tiny_town_against_brute_force(store_dir, index):
    """precompute's summary reports the error statistics of the same pairs it measures accuracy on: recomputed
    here from the store with the same draw, by the loops above."""
    from relational_distill.data.dataset import load_sample
    from relational_distill.teachers.store import FeatureStore

    summary = json.loads((store_dir / "summary.json").read_text())
    store = FeatureStore.open(store_dir)
    _, text = store.text_embeddings()
    rng = np.random.default_rng(0)
    preds, labels = [], []
    for sample in index.samples:
        item = load_sample(index, sample, store, summary["min_depth"], pairs_per_sample=4000, rng=rng)
        y = item["labels"][item["pair_point"]]
        keep = y > 0
        preds += [1 + int(np.argmax([float(q @ t) for t in text])) for q in item["pair_teacher"][keep]]
        labels += y[keep].tolist()
    accuracy = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    assert summary["zero_shot_pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    stats = error_statistics(torch.tensor(preds), torch.tensor(labels))
    for key, value in stats.items():
        assert summary[key] == pytest.approx(value, abs=1e-12)
