"""Split rules (docs/splits.md): SLidR's few-shot scenes, the scene-table order of the index, unlabelled versions."""
from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.data.nuscenes import NuScenesIndex, scene_splits
from relational_distill.data.splits import distill_samples, few_shot_scenes, few_shot_selection, require_labels
from relational_distill.errors import UserError

runner = CliRunner()


def slidr_reference(table, train, k):
    """SLidR's loop restated: the training scenes in table order, then every k-th of them (1-based)."""
    in_order = [name for name in table if name in set(train)]
    return in_order[k - 1::k]


def test_slidr_rule_on_a_reversed_table_of_700_scenes():
    names = [f"scene-{i:04d}" for i in range(1, 701)]
    table = names[::-1]
    assert few_shot_scenes(table, names, 100) == [f"scene-{i:04d}" for i in (601, 501, 401, 301, 201, 101, 1)]
    for k in (100, 20, 10, 4, 1):
        got = few_shot_scenes(table, names, k)
        assert got == slidr_reference(table, names, k) and len(got) == 700 // k
    # in name order the count starts at 1, so the 1 % split is the 100th, 200th, ... scene, not the 1st, 101st, ...
    assert few_shot_scenes(names, names, 100) == [f"scene-{i:04d}" for i in range(100, 701, 100)]


def test_only_training_scenes_are_counted():
    """Validation scenes interleaved in the table do not advance the count."""
    table = [f"s{i:03d}" for i in range(850)]
    rng = random.Random(0)
    rng.shuffle(table)
    train = set(rng.sample(table, 700))
    for k in (100, 20, 4):
        assert few_shot_scenes(table, train, k) == slidr_reference(table, train, k)


def test_fewer_training_scenes_than_k_keep_the_first_and_say_so():
    table = ["c", "b", "a", "v"]
    scenes, rule = few_shot_selection(table, {"a", "b", "c"}, 0.01)
    assert scenes == ["c"] and "keeps none" in rule
    scenes, rule = few_shot_selection(table, {"a", "b", "c"}, 0.5)
    assert scenes == ["b"] and "multiple of 2" in rule


def test_index_keeps_the_devkit_scene_table_order(index, nusc):
    assert index.scenes == [s["name"] for s in nusc.scene]
    position = {name: i for i, name in enumerate(index.scenes)}
    keys = [(position[s["scene"]], s["timestamp"]) for s in index.samples]
    assert keys == sorted(keys)


def test_index_carries_lidar_tokens_and_scene_order_and_rebuilds_older_caches(town, nusc, tmp_path):
    """Format 3 holds both what issue-13's format 2 added (the lidar sample_data token, which names prediction
    files) and what issue-11's format 2 added (the scene table's order); a cache of either format 2 is rebuilt."""
    import json

    from relational_distill.data.nuscenes import INDEX_FORMAT, load_index

    assert INDEX_FORMAT == 3
    index = load_index(town, "v1.0-sim", cache_dir=tmp_path)
    assert [s["lidar_token"] for s in index.samples] == [nusc.get("sample", s["token"])["data"]["LIDAR_TOP"]
                                                         for s in index.samples]
    assert index.scenes == [s["name"] for s in nusc.scene]
    (cache,) = tmp_path.glob("index-*.json")
    data = json.loads(cache.read_text())
    assert data["format"] == 3 and data["scenes"] == index.scenes
    for key in ("scenes", "lidar_token"):  # what each branch's format 2 lacked
        old = {**data, "format": 2}
        if key == "scenes":
            del old["scenes"]
        else:
            old["samples"] = [{k: v for k, v in s.items() if k != key} for s in data["samples"]]
        cache.write_text(json.dumps(old))
        again = load_index(town, "v1.0-sim", cache_dir=tmp_path)
        assert again.scenes == index.scenes and again.samples == index.samples
        assert json.loads(cache.read_text())["format"] == 3


def test_official_splits_per_version():
    from nuscenes.utils.splits import create_splits_scenes

    official = create_splits_scenes()
    mini = scene_splits(None, "v1.0-mini")
    assert mini == {"train": official["mini_train"], "val": official["mini_val"]}
    assert scene_splits(None, "v1.0-test") == {"test": official["test"]}
    trainval = scene_splits(None, "v1.0-trainval")
    assert len(trainval["train"]) == 700 and len(trainval["val"]) == 150


def test_test_scenes_need_an_explicit_flag_to_distill():
    samples = [{"token": "a", "scene": "s1", "split": "test"}]
    test_index = NuScenesIndex("/x", "v1.0-test", [0] * 32, samples, ["s1"])
    with pytest.raises(UserError, match="--use-test-scenes"):
        distill_samples(test_index)
    assert distill_samples(test_index, use_test_scenes=True) == samples
    with pytest.raises(UserError, match="only for --version v1.0-test"):
        distill_samples(NuScenesIndex("/x", "v1.0-trainval", [0] * 32, [], []), use_test_scenes=True)
    with pytest.raises(UserError, match="no labels"):
        require_labels("v1.0-test", "evaluate")
    with pytest.raises(UserError, match="or --save-predictions DIR"):
        require_labels("v1.0-test", "evaluate", "--save-predictions DIR")
    require_labels("v1.0-trainval", "evaluate")
    require_labels("semantickitti", "finetune")


def test_finetune_refuses_the_test_version(tmp_path):
    out = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "--from-scratch", "--dataroot", str(tmp_path), "--version", "v1.0-test",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and "v1.0-test" in lines[0] and "no labels" in lines[0], result.output
    assert not out.exists()
