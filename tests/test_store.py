"""The feature store (teachers/store.py): changed bytes, an older format, a store of another dataset, and what a
finished store's rerun does (docs/reliability.md)."""
from __future__ import annotations

import json
import shutil
import time

from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.teachers.store import FeatureStore

from .helpers import one_line, snapshot

runner = CliRunner()


def test_changed_feature_bytes_are_refused_and_precompute_redoes_only_them(town, store_copy, index, tiny_config,
                                                                        tmp_path):
    store = FeatureStore.open(store_copy)
    token = index.split("train")[0]["token"]
    victim = store.path(token)
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0x01  # same size, one bit of one feature
    victim.write_bytes(data)
    (tmp_path / "w.yaml").write_text(tiny_config.read_text().replace("workers: 0", "workers: 1"))
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_copy), "--out", str(tmp_path / "x"),
                            "--config", str(tmp_path / "w.yaml"), "-q"])  # read in a DataLoader worker
    one_line(r, 2, victim.name, "sha256 mismatch", "precompute")
    others = {k: v for k, v in snapshot(store_copy).items() if token not in k}
    r = runner.invoke(app, ["precompute", str(town), "--out", str(store_copy), "--teacher", "sim-clip:clean", "--image-size", "192x112", "-q"])
    assert r.exit_code == 0, r.output
    assert "computed 1 samples" in r.output
    assert store.is_valid(token)
    after = snapshot(store_copy)
    assert all(after[k] == v for k, v in others.items() if k not in ("summary.json", "manifest.json"))


def test_store_of_the_town_that_used_to_live_there_is_refused(tmp_path, tiny_config):
    from relational_distill.sim.writer import SimConfig, make_town

    town = tmp_path / "town"
    make_town(town, SimConfig(scenes=2, samples_per_scene=1, seed=1, image_size=(64, 64)), workers=1)
    r = runner.invoke(app, ["precompute", str(town), "--out", str(tmp_path / "f"), "--image-size", "64x64", "-q"])
    assert r.exit_code == 0, r.output
    store_before = snapshot(tmp_path / "f")
    shutil.rmtree(town)  # regenerated in place with another seed
    make_town(town, SimConfig(scenes=2, samples_per_scene=1, seed=2, image_size=(64, 64)), workers=1)
    old = json.loads((tmp_path / "f" / "manifest.json").read_text())["dataset_fingerprint"][:12]
    r = runner.invoke(app, ["distill", str(town), "--features", str(tmp_path / "f"), "--out", str(tmp_path / "run"),
                            "--config", str(tiny_config), "-q"])
    line = one_line(r, 2, "manifest.json", old, str(town.resolve()))
    assert "now holds dataset" in line
    r = runner.invoke(app, ["precompute", str(town), "--out", str(tmp_path / "f"), "--image-size", "64x64", "-q"])
    one_line(r, 2, "made for dataset", old)
    assert snapshot(tmp_path / "f") == store_before and not (tmp_path / "run").exists()


def test_finished_precompute_rerun_only_checks(town, store_copy, monkeypatch):
    from relational_distill.engine import precompute as precompute_module

    before = snapshot(store_copy)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the teacher summary was measured again")

    monkeypatch.setattr(precompute_module, "teacher_summary", must_not_run)
    start = time.perf_counter()
    r = runner.invoke(app, ["precompute", str(town), "--out", str(store_copy), "--teacher", "sim-clip:clean", "--image-size", "192x112", "-q"])
    seconds = time.perf_counter() - start
    assert r.exit_code == 0, r.output
    assert "computed 0 samples" in r.output and "uniformity U" in r.output
    assert snapshot(store_copy) == before
    assert seconds < 10, seconds


def test_store_manifest_records_every_file_hash(store_copy, index):
    import hashlib

    manifest = json.loads((store_copy / "manifest.json").read_text())
    files = manifest["files"]
    assert len(files) == len(index.samples) + 1
    for rel, sha in files.items():
        assert hashlib.sha256((store_copy / rel).read_bytes()).hexdigest() == sha


def test_store_of_an_older_format_is_refused(town, store_copy, tiny_config, tmp_path):
    manifest = json.loads((store_copy / "manifest.json").read_text())
    manifest["format"] = 1
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    r = runner.invoke(app, ["distill", str(town), "--features", str(store_copy), "--out", str(tmp_path / "x"),
                            "--config", str(tiny_config), "-q"])
    one_line(r, 2, "store format 1", "new folder")


def test_changed_text_embeddings_are_refused(run, store_copy, tmp_path):
    path = store_copy / "text_embeddings.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    r = runner.invoke(app, ["evaluate", str(run / "checkpoint.pt"), "--zero-shot", "--features", str(store_copy),
                            "--out", str(tmp_path / "zs"), "-q"])
    one_line(r, 2, "text_embeddings.pt", "sha256 mismatch")
    assert not (tmp_path / "zs" / "zero_shot.json").exists()


