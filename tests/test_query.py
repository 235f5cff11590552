"""``rdistill query``: per-point scores against a brute-force cosine of the features and the text tower's
embeddings (a tiny open_clip model, offline; the simulated teacher's class embeddings), the simulated teacher's
refusal of free text, the array format, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from relational_distill.cli import app
from relational_distill.classes import SEMANTIC_GROUPS
from relational_distill.config import CONFIG_DIR
from relational_distill.data.dataset import load_sample
from relational_distill.engine.precompute import PrecomputeConfig, precompute
from relational_distill.engine.query import query
from relational_distill.errors import UserError
from relational_distill.student import load_student
from relational_distill.teachers.store import FeatureStore

from .conftest import TOWN_IMAGE
from .test_cli_errors import _one_line_error

runner = CliRunner()


def _first_pairs(item: dict) -> dict[int, torch.Tensor]:
    """{point: teacher feature of its first pair} by a loop over the pairs of load_sample."""
    first: dict[int, torch.Tensor] = {}
    for j, p in enumerate(item["pair_point"].tolist()):
        first.setdefault(p, item["pair_teacher"][j])
    return first


@pytest.fixture(scope="module")
def clip_store(town, tmp_path_factory):
    """Features of the tiny open_clip ViT (random weights, offline) for the test town."""
    import open_clip

    from .test_maskclip import TINY

    open_clip.add_model_config(TINY)
    out = tmp_path_factory.mktemp("query-clip") / "features"
    torch.manual_seed(0)  # random weights: the same seed gives the same weights again (the store records their hash)
    precompute(PrecomputeConfig(dataroot=town, out=out, teacher="openclip:rdistill-tiny-vit", image_size=TOWN_IMAGE,
                                summary_per_class=200, quiet=True))
    return out


def test_openclip_scores_are_features_at_the_text_towers_embeddings(clip_store, index, tmp_path):
    from relational_distill.teachers.maskclip import load_openclip

    queries = {"cone": ["a traffic cone", "a pylon"], "tree": ["a tree"]}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(queries))
    with pytest.raises(UserError, match="restore those weights"):  # other random weights than the store's
        query(texts=["road"], features=clip_store, out=tmp_path / "other")
    torch.manual_seed(0)
    result = query(texts=["road"], classes=tmp_path / "q.yaml", features=clip_store, out=tmp_path / "out",
                   sample="1", quiet=True)
    saved = np.load(tmp_path / "out" / "query.npz")
    assert list(saved["queries"]) == ["cone", "tree", "road"] and saved["scores"].dtype == np.float32
    # the text by hand: each template x synonym through the text tower, normalised, averaged, normalised
    torch.manual_seed(0)
    clip = load_openclip("openclip:rdistill-tiny-vit")
    templates = yaml.safe_load((CONFIG_DIR / "prompts.yaml").read_text())["templates"]
    text = []
    for synonyms in [*queries.values(), ["road"]]:
        with torch.no_grad():
            emb = [F.normalize(clip.model.encode_text(clip.tokenizer([t.format(s)])).float()[0], dim=0)
                   for s in synonyms for t in templates]
        text.append(F.normalize(torch.stack(emb).mean(0), dim=0))
    rec = index.split("val")[1]
    assert result.sample == rec["token"]
    first = _first_pairs(load_sample(index, rec, FeatureStore.open(clip_store)))
    scores = saved["scores"]
    assert len(scores) == result.points and len(first) == result.points_scored > 50
    for p in range(len(scores)):
        if p in first:
            expected = [float(first[p] @ t) for t in text]
            np.testing.assert_allclose(scores[p], expected, atol=2e-5)
            assert saved["best"][p] == int(np.argmax(expected))
        else:
            assert np.isnan(scores[p]).all() and saved["best"][p] == -1


def test_student_scores_and_the_simulated_teachers_words(distilled_checkpoint, index, store_dir, tmp_path):
    result = query(distilled_checkpoint, texts=["car", "Driveable surface", "vehicle"], out=tmp_path, quiet=True)
    saved = np.load(tmp_path / "query.npz")
    names, text = FeatureStore.open(store_dir).text_embeddings()
    by_name = dict(zip(names, text.float()))
    vehicle = F.normalize(torch.stack([by_name[c] for c in SEMANTIC_GROUPS["vehicle"]]).mean(0), dim=0)
    expected_text = torch.stack([by_name["car"], by_name["driveable_surface"], vehicle])
    model, _ = load_student(distilled_checkpoint, "cpu")
    points = load_sample(index, index.split("val")[0])["points"]
    with torch.no_grad():
        out = model(points, torch.zeros(len(points), dtype=torch.long))
    for p in range(0, len(points), 97):
        expected = [float(F.normalize(out[p], dim=0) @ t) for t in expected_text]
        np.testing.assert_allclose(saved["scores"][p], expected, atol=2e-5)
    assert result.points_scored == len(points) and (saved["best"] >= 0).all()
    written = json.loads((tmp_path / "query.json").read_text())
    assert written["mode"] == "student" and set(written["queries"]) == {"car", "Driveable surface", "vehicle"}
    assert (tmp_path / "bev.png").exists() and len(written["files"]["cameras"]) == 6


def test_simulated_teacher_refuses_free_text_in_one_line(store_dir, tmp_path):
    res = runner.invoke(app, ["query", "--features", str(store_dir), "--text", "a person on a bike",
                              "--out", str(tmp_path)])
    _one_line_error(res, "no language", "pedestrian", "vehicle")
    assert not (tmp_path / "query.npz").exists()


@pytest.mark.parametrize("args, match", [
    ([], "no text"),
    (["--text", " "], "empty query"),
    (["--text", "car", "--sample", "nowhere"], "--sample nowhere"),
])
def test_bad_queries_are_one_line(store_dir, tmp_path, args, match):
    res = runner.invoke(app, ["query", "--features", str(store_dir), "--out", str(tmp_path), *args])
    _one_line_error(res, match)


def test_bad_query_file_and_checkpoints(store_dir, distilled_checkpoint, tmp_path):
    (tmp_path / "q.yaml").write_text("cone: []\n")
    with pytest.raises(UserError, match="non-empty"):
        query(classes=tmp_path / "q.yaml", texts=[], features=store_dir, out=tmp_path / "o")
    (tmp_path / "bomb.yaml").write_text("a: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, "
                                                                     f"*{'a' if i == 0 else f'b{i - 1}'}]\n"
                                                                     for i in range(40)))
    with pytest.raises(UserError, match="alias"):
        query(classes=tmp_path / "bomb.yaml", texts=[], features=store_dir, out=tmp_path / "o")
    with pytest.raises(UserError, match="give a distilled checkpoint"):
        query(texts=["car"], out=tmp_path / "o")


def test_finetuned_checkpoint_is_refused(distilled_checkpoint, tmp_path):
    from relational_distill.engine.finetune import FinetuneConfig, finetune

    finetune(distilled_checkpoint, tmp_path / "ft", FinetuneConfig(epochs=1, workers=0, fraction=1.0), quiet=True)
    with pytest.raises(UserError, match="not CLIP-space features"):
        query(tmp_path / "ft" / "checkpoint.pt", texts=["car"], out=tmp_path / "o")
