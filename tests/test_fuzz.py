"""Bounded fuzzing of every file reader (docs/reliability.md): damaged copies of each file the commands read —
truncated, bytes flipped, bytes appended, random bytes, NaN / inf / huge numbers, out-of-range labels, JSON and
YAML values of the wrong type, deleted keys, dangling tokens, non-UTF-8 bytes, deep nesting, alias bombs — each
fed to its reader. A case passes when the reader returns (what it returns is then checked) or refuses in one
:class:`UserError` line, within a time bound; any other exception is a failure, a timeout a hang.

``make test`` runs a few cases per reader (``RDISTILL_FUZZ`` scales them, default 0.01); ``make fuzz`` runs
``RDISTILL_FUZZ=1``: 11,000 cases, and reports them per reader. Cases are derandomized (the same on every run).
Each failure the fuzzer found is also a plain regression test at the end of this file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from relational_distill.checkpoint import digest, load_checkpoint
from relational_distill.config import load_config
from relational_distill.data.images import read_rgb
from relational_distill.data.nuscenes import load_index, read_labels, read_lidar, scene_splits
from relational_distill.data.semantickitti import build_index as build_kitti_index
from relational_distill.data.superpixels import SuperpixelManifest, SuperpixelStore
from relational_distill.engine.distill import DistillConfig
from relational_distill.errors import UserError
from relational_distill.report import plot_runs, read_log
from relational_distill.student import build_student, load_weights
from relational_distill.teachers.prompts import load_prompts
from relational_distill.teachers.queries import read_queries
from relational_distill.teachers.sim_clip import SimClipConfig, SimClipTeacher
from relational_distill.teachers.store import FeatureStore

from .test_semantickitti import write_tiny_kitti

SCALE = float(os.environ.get("RDISTILL_FUZZ", "0.01"))
CASE_SECONDS = 30  # a case that takes longer is a hang


def examples(full: int) -> int:
    """Cases of a reader: ``full`` under ``make fuzz``, a few in ``make test``."""
    return max(3, math.ceil(full * SCALE))


def fuzz(full: int):
    return settings(max_examples=examples(full), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def time_bound(seconds: int = CASE_SECONDS):
    def hang(*_):
        raise TimeoutError(f"no answer in {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def survives(read, check=None):
    """Run ``read()``: a one-line UserError is a refusal (fine); a result goes to ``check``; anything else fails."""
    try:
        with time_bound():
            result = read()
    except UserError as err:
        message = str(err)
        assert message and "\n" not in message.strip(), f"a refusal in more than one line: {message!r}"
        return None
    if check is not None:
        check(result)
    return result


# -- mutations ------------------------------------------------------------------------------------------------------
SPECIAL_BYTES = [b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\x80\x81", b"nan", b"1e999", b"-1", b"1,5", b"\n" * 3]


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "append", "random", "special", "empty"]))
    n = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, max(0, n - 1)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            if out:
                i = draw(st.integers(0, n - 1))
                out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=4096))
    if kind == "special":
        i = draw(st.integers(0, n))
        return data[:i] + draw(st.sampled_from(SPECIAL_BYTES)) + data[i:]
    return b""


def deep(levels: int):
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


ODD_VALUES = [None, "", "x" * 200, -1, 0, 10 ** 30, 1e308, float("nan"), float("inf"), True, [], {}, [[[]]], "0" * 32,
              {"a": 1}, "é\u0000", -10 ** 7]


@st.composite
def json_mutation(draw, data):
    """A JSON-like value with one element deleted, replaced by an odd value, or nested deeply."""
    data = json.loads(json.dumps(data))
    parent, key, node = None, None, data
    for _ in range(draw(st.integers(0, 6))):  # walk down
        if isinstance(node, dict) and node:
            k = draw(st.sampled_from(sorted(node, key=str)))
        elif isinstance(node, list) and node:
            k = draw(st.integers(0, len(node) - 1))
        else:
            break
        parent, key, node = node, k, node[k]
    kind = draw(st.sampled_from(["delete", "replace", "deep", "empty"]))
    if parent is None:
        return draw(st.sampled_from(ODD_VALUES + [deep(2000)])) if kind != "empty" else {}
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = draw(st.sampled_from(ODD_VALUES))
    elif kind == "deep":
        parent[key] = deep(draw(st.sampled_from([50, 5000])))
    else:
        parent[key] = type(node)() if isinstance(node, (dict, list, str)) else None
    return data


def dumps(value) -> bytes:
    try:
        return json.dumps(value).encode()
    except RecursionError:  # too deep for the encoder: write the nesting by hand
        return b"[" * 5000 + b"0" + b"]" * 5000


def yaml_text(draw, base: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "bomb", "deep", "line"]))
    if kind == "bytes":
        return draw(byte_mutation(base.encode()))
    if kind == "bomb":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, draw(st.integers(2, 9)))]
        return ("\n".join(lines) + "\n" + base).encode()
    if kind == "deep":
        n = draw(st.sampled_from([40, 3000]))
        return (base + "\nnested: " + "[" * n + "]" * n + "\n").encode()
    lines = base.splitlines()
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    key = lines[i].split(":")[0] if lines else "x"
    odd = draw(st.sampled_from(["", "null", "[1, 2]", "{a: 1}", "-1", "1e999", ".nan", "'str'", "!!python/object:os.system", "*undefined"]))
    lines[i:i + 1] = [f"{key}: {odd}"]
    return "\n".join(lines).encode()


# -- the files and their readers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def case_dir(scratch: Path):
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def town_copy(town: Path, into: Path) -> Path:
    """A copy of the town whose tables and splits are real files and whose data folders are links."""
    root = into / "town"
    root.mkdir()
    for entry in town.iterdir():
        if entry.name.startswith("v1.0") or entry.name == "splits.json":
            (shutil.copytree if entry.is_dir() else shutil.copy)(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry)
    return root


def _finite_points(points):
    assert np.isfinite(points).all() and np.abs(points[:, :3]).max() <= 1000


@fuzz(1500)
@given(data=st.data())
def test_lidar_files(index, scratch, data):
    rec = index.samples[0]
    original = (Path(index.dataroot) / rec["lidar"]).read_bytes()
    kind = data.draw(st.sampled_from(["bytes", "values"]))
    if kind == "bytes":
        damaged = data.draw(byte_mutation(original))
    else:
        rows = np.frombuffer(original, np.float32).reshape(-1, 5).copy()
        rows[data.draw(st.integers(0, len(rows) - 1)), data.draw(st.integers(0, 4))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -3e38, 1e4]))
        damaged = rows.tobytes()
    with case_dir(scratch) as d:
        (d / "p.pcd.bin").write_bytes(damaged)
        survives(lambda: read_lidar(d, "p.pcd.bin"), _finite_points)


@fuzz(1000)
@given(data=st.data())
def test_lidarseg_files(index, scratch, data):
    rec = index.samples[0]
    original = (Path(index.dataroot) / rec["lidarseg"]).read_bytes()
    damaged = data.draw(byte_mutation(original) | st.just(bytes([data.draw(st.integers(32, 255))]) * len(original)))
    with case_dir(scratch) as d:
        (d / "l.bin").write_bytes(damaged)

        def check(labels):
            assert len(labels) == len(original) and labels.min() >= 0 and labels.max() <= 16

        survives(lambda: read_labels(d, "l.bin", len(original), index.fine_to_coarse), check)


TABLES = ("sample", "sample_data", "scene", "category", "lidarseg", "calibrated_sensor", "ego_pose", "sensor", "log")


@fuzz(1200)
@given(data=st.data())
def test_devkit_tables_and_splits(town, scratch, data):
    name = data.draw(st.sampled_from(TABLES + ("splits",)))
    with case_dir(scratch) as d:
        root = town_copy(town, d)
        path = root / "splits.json" if name == "splits" else root / "v1.0-sim" / f"{name}.json"
        original = path.read_bytes()
        if data.draw(st.booleans()):
            path.write_bytes(dumps(data.draw(json_mutation(json.loads(original)))))
        else:
            path.write_bytes(data.draw(byte_mutation(original)))

        def check(idx):
            assert idx.samples and all(s["lidar"] for s in idx.samples)

        survives(lambda: load_index(root, "v1.0-sim", cache_dir=d / "cache"), check)
        survives(lambda: scene_splits(root, "v1.0-sim"))


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-kitti") / "dataset"
    write_tiny_kitti(root, {"00": 2, "08": 1})
    return root


@fuzz(1200)
@given(data=st.data())
def test_semantickitti_files(kitti_root, scratch, data):
    which = data.draw(st.sampled_from(["calib.txt", "poses.txt", "image_2/000000.png", "velodyne/000000.bin",
                                       "labels/000000.label"]))
    with case_dir(scratch) as d:
        root = d / "dataset"
        shutil.copytree(kitti_root, root)
        path = root / "sequences" / "00" / which
        original = path.read_bytes()
        if which == "calib.txt" and data.draw(st.booleans()):  # a singular P2
            damaged = original.replace(original.split(b"P2:")[1].split(b"\n")[0], b" 0 0 0 0 0 0 0 0 0 0 1 0")
        else:
            damaged = data.draw(byte_mutation(original))
        path.write_bytes(damaged)

        def read():
            idx = build_kitti_index(root)
            for s in idx.samples:
                _finite_points(idx.read_points(s))
                labels = idx.read_labels(s, len(idx.read_points(s)))
                assert labels is None or (labels.min() >= 0 and labels.max() <= 19)
            return idx

        survives(read)


def _rehash(path: Path) -> None:
    """Rewrite the store's sha256 beside ``path`` so the reader sees a file it wrote (the hard case)."""
    Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


@fuzz(1200)
@given(data=st.data())
def test_feature_store_files(store_dir, index, scratch, data):
    token = index.samples[0]["token"]
    which = data.draw(st.sampled_from(["features", "text", "manifest"]))
    with case_dir(scratch) as d:
        store = d / "features"
        shutil.copytree(store_dir, store)
        if which == "manifest":
            path = store / "manifest.json"
            original = json.loads(path.read_text())
            path.write_bytes(dumps(data.draw(json_mutation(original))) if data.draw(st.booleans())
                             else data.draw(byte_mutation(path.read_bytes())))
        else:
            path = store / ("features" if which == "features" else "") / (
                f"{token}.npy" if which == "features" else "text_embeddings.pt")
            if which == "text" and data.draw(st.booleans()):
                buf = io.BytesIO()
                torch.save(data.draw(st.sampled_from([{"classes": ["a"], "embeddings": torch.zeros(1, 3),
                                                       "teacher_id": "x", "templates_hash": "y"}, [1, 2], {"a": 1}])),
                           buf)
                path.write_bytes(buf.getvalue())
            else:
                path.write_bytes(data.draw(byte_mutation(path.read_bytes())))
            if data.draw(st.booleans()):
                _rehash(path)

        def read():
            s = FeatureStore.open(store)
            feats = s.read(token)
            assert feats.dtype == np.float16 and feats.shape == s.expected_shape()
            names, text = s.text_embeddings()
            assert text.shape[0] == len(names)

        survives(read)


@fuzz(600)
@given(data=st.data())
def test_superpixel_and_sidecar_archives(town, index, scratch, data):
    rec = index.samples[0]
    cams = [c for c in rec["cameras"].values()]
    sizes = [tuple(c["image_size"]) for c in cams]
    with case_dir(scratch) as d:
        sp = SuperpixelStore.create(d / "superpixels-8", SuperpixelManifest(8, 10.0, "v1.0-sim", str(town),
                                                                            tuple(rec["cameras"])))
        sp.write(rec["token"], [np.zeros(s[::-1], np.uint16) for s in sizes])
        path = sp.path(rec["token"])
        kind = data.draw(st.sampled_from(["bytes", "members"]))
        if kind == "bytes":
            path.write_bytes(data.draw(byte_mutation(path.read_bytes())))
        else:
            members = data.draw(st.sampled_from([{}, {"cam0": np.zeros((3, 3), np.uint16)},
                                                 {f"cam{c}": np.zeros((2, 2, 2), np.uint16) for c in range(len(cams))},
                                                 {f"cam{c}": np.zeros(s[::-1], np.float32) for c, s in enumerate(sizes)}]))
            np.savez(path, **members)
        if data.draw(st.booleans()):  # its sha256 rewritten to match: the content checks behind the hash
            (path.parent / f"{path.name}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())

        def check(maps):
            assert [m.shape[::-1] for m in maps] == sizes

        survives(lambda: sp.read(rec["token"], sizes), check)

        # the town's side-car map of the first camera
        side = town / "sim_sidecar" / (cams[0]["image"][:-4] + ".npz")
        root = town_copy(town, d)
        (root / "sim_sidecar").unlink()
        target = root / "sim_sidecar" / (cams[0]["image"][:-4] + ".npz")
        shutil.copytree(town / "sim_sidecar", root / "sim_sidecar", symlinks=False)
        kind = data.draw(st.sampled_from(["bytes", "values"]))
        if kind == "bytes":
            target.write_bytes(data.draw(byte_mutation(side.read_bytes())))
        else:
            with np.load(side) as z:
                category, instance = z["category"].copy(), z["instance"].copy()
            choice = data.draw(st.sampled_from(["label", "shape", "dtype"]))
            if choice == "label":
                category[0, 0] = 200
            elif choice == "shape":
                category = category[:5]
            else:
                category = category.astype(np.float32)
            np.savez(target, category=category, instance=instance)
        teacher = SimClipTeacher(SimClipConfig.named("sim-clip"), index.fine_to_coarse)
        survives(lambda: teacher.sample_features(str(root), rec), lambda f: np.isfinite(f).all())


def _resave(path: Path, body: dict) -> None:
    """Save ``body`` as a checkpoint with a matching digest (the reader must check more than the digest)."""
    body = dict(body)
    body.pop("digest", None)
    try:
        torch.save({**body, "digest": digest(body)}, path)
    except RecursionError:  # nested too deeply for torch.save itself: no file can hold it
        reject()


@fuzz(1200)
@given(data=st.data())
def test_checkpoints(distilled_checkpoint, scratch, data):
    original = torch.load(distilled_checkpoint, weights_only=True)
    with case_dir(scratch) as d:
        path = d / "checkpoint.pt"
        kind = data.draw(st.sampled_from(["bytes", "fields", "meta", "weights"]))
        if kind == "bytes":
            path.write_bytes(data.draw(byte_mutation(distilled_checkpoint.read_bytes())))
        elif kind == "fields":
            key = data.draw(st.sampled_from(["epoch", "step", "training", "model", "format"]))
            body = dict(original)
            body[key] = data.draw(st.sampled_from(ODD_VALUES[:13] + [-10_000_000, [1, 2], {"optimizer": 1}]))
            _resave(path, body)
        elif kind == "meta":
            body = dict(original)
            body["meta"] = data.draw(json_mutation(original["meta"]))
            _resave(path, body)
        else:
            body = dict(original)
            model = dict(original["model"])
            name = data.draw(st.sampled_from(sorted(model)))
            model[name] = data.draw(st.sampled_from([torch.zeros(1), torch.zeros(3, 3, 3), torch.tensor([1])]))
            body["model"] = model
            _resave(path, body)

        def read():
            state = load_checkpoint(path)
            model = build_student(state.meta, path)
            load_weights(model, state.model, path)
            assert 0 <= state.epoch <= 10 ** 9

        survives(read)


@fuzz(800)
@given(data=st.data())
def test_run_logs(scratch, data):
    rows = [{"step": s, "epoch": 0, "loss": 1.0 / s, "lr": 0.01} for s in range(1, 6)]
    rows += [{"step": 5, "val_zero_shot_miou": 0.2, "uniformity": 1.0, "tolerance": 0.5, "modality_gap": 0.1},
             {"event": "resume", "step": 3}, {"event": "start"}]
    rows = data.draw(st.permutations(rows))
    with case_dir(scratch) as d:
        run = d / "run"
        run.mkdir()
        text = b"\n".join(dumps(data.draw(json_mutation(r))) if data.draw(st.booleans()) else dumps(r) for r in rows)
        if data.draw(st.booleans()):
            text = data.draw(byte_mutation(text))
        (run / "log.jsonl").write_bytes(text)
        survives(lambda: read_log(run / "log.jsonl"))
        if data.draw(st.integers(0, 9)) == 0:  # drawing is slow: one case in ten
            survives(lambda: plot_runs([run], d / "curves.png"))


@fuzz(1500)
@given(data=st.data())
def test_yaml_files(scratch, data):
    from relational_distill.config import CONFIG_DIR

    which = data.draw(st.sampled_from(["config", "prompts", "sim", "query"]))
    base = {"config": (CONFIG_DIR / "distill_cpu.yaml").read_text(), "prompts": (CONFIG_DIR / "prompts.yaml").read_text(),
            "sim": (CONFIG_DIR / "sim_clip.yaml").read_text(), "query": "cone: [a traffic cone, a pylon]\ntree: a tree\n"}
    with case_dir(scratch) as d:
        path = d / "file.yaml"
        path.write_bytes(yaml_text(data.draw, base[which]))
        read = {"config": lambda: load_config(DistillConfig, path, {}), "prompts": lambda: load_prompts(path),
                "sim": lambda: SimClipConfig.from_yaml(path).digest(), "query": lambda: read_queries([], path)}[which]
        survives(read)


@fuzz(800)
@given(data=st.data())
def test_camera_images(index, scratch, data):
    cam = next(iter(index.samples[0]["cameras"].values()))
    original = (Path(index.dataroot) / cam["image"]).read_bytes()
    with case_dir(scratch) as d:
        path = d / "image.jpg"
        if data.draw(st.integers(0, 9)) == 0:  # a header that claims 65535 x 65535 pixels
            from PIL import Image

            Image.new("RGB", (8, 8)).save(path, "PNG")
            raw = bytearray(path.read_bytes())
            raw[16:24] = (65535).to_bytes(4, "big") * 2  # IHDR width and height (the CRC no longer matches)
            path.write_bytes(bytes(raw))
        else:
            path.write_bytes(data.draw(byte_mutation(original)))
        survives(lambda: read_rgb(path, tuple(cam["image_size"])), lambda im: im.size == tuple(cam["image_size"]))


# -- regressions: what the fuzzer found, as plain cases -------------------------------------------------------------
def test_regression_remission_that_overflows_when_scaled(kitti_root, tmp_path):
    """A remission of 3e38 is finite as float32 but inf once scaled to 0-255: refused when read."""
    root = tmp_path / "dataset"
    shutil.copytree(kitti_root, root)
    scan = root / "sequences" / "00" / "velodyne" / "000000.bin"
    rows = np.fromfile(scan, np.float32).reshape(-1, 4)
    rows[0, 3] = 3e38
    rows.tofile(scan)
    idx = build_kitti_index(root)
    with pytest.raises(UserError, match="out of range"):
        idx.read_points(idx.samples[0])


def test_regression_npz_member_with_a_cut_header(index, tmp_path):
    """numpy parses a member's header with Python's tokenizer: a header cut inside a string raises TokenError."""
    import zipfile

    rec = index.samples[0]
    sizes = [tuple(c["image_size"]) for c in rec["cameras"].values()]
    sp = SuperpixelStore.create(tmp_path / "superpixels-8", SuperpixelManifest(8, 10.0, "v1.0-sim", index.dataroot,
                                                                               tuple(rec["cameras"])))
    header = b"\x93NUMPY\x01\x00" + (70).to_bytes(2, "little") + b"{'descr': '<u2', 'fortran_order': False, 'shap"
    with zipfile.ZipFile(sp.path(rec["token"]), "w") as z:
        for c in range(len(sizes)):
            z.writestr(f"cam{c}.npy", header.ljust(80, b"s"))
    path = sp.path(rec["token"])  # its sha256 rewritten to match: the archive's own check is what refuses it
    (path.parent / f"{path.name}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(UserError, match="not a readable .npz archive"):
        sp.read(rec["token"], sizes)


def test_regression_alias_bomb_under_the_alias_count(tmp_path):
    """63 aliases, nine per level: 9^7 values once expanded (it hung in the error message's json.dumps)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]"
                                                        for i in range(1, 8)]
    (tmp_path / "prompts.yaml").write_text("\n".join(lines) + "\n")
    with time_bound(10), pytest.raises(UserError, match="alias"):
        load_prompts(tmp_path / "prompts.yaml")
