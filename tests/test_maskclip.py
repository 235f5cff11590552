"""MaskCLIP dense features and CLIP text embeddings on a tiny open_clip model with random weights (offline)."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from relational_distill.errors import UserError
from relational_distill.teachers.maskclip import dense_features, load_openclip, text_embeddings

TINY = Path(__file__).parent / "data" / "rdistill-tiny-vit.json"


@pytest.fixture(scope="module")
def tiny():
    open_clip.add_model_config(TINY)
    torch.manual_seed(0)
    clip = load_openclip("openclip:rdistill-tiny-vit")
    return clip.model, clip.tokenizer


def reference_value_path(model, images):
    """MaskCLIP written out by hand from the raw weights, one token at a time for the last block."""
    v = model.visual
    blocks = v.transformer.resblocks
    x = v.conv1(images).flatten(2).transpose(1, 2)
    b, n, width = x.shape
    gh, gw = images.shape[2] // 16, images.shape[3] // 16
    pos = v.positional_embedding
    side = int((pos.shape[0] - 1) ** 0.5)
    grid = F.interpolate(pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1).reshape(gh * gw, -1)
    x = torch.cat([v.class_embedding.expand(b, 1, width), x], 1) + torch.cat([pos[:1], grid])
    x = v.ln_pre(x)
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    w_v = last.attn.in_proj_weight[2 * width:]
    b_v = last.attn.in_proj_bias[2 * width:]
    out = torch.zeros(b, gh * gw, v.proj.shape[1])
    for i in range(b):
        for t in range(1, n + 1):
            tok = x[i, t]
            val = w_v @ F.layer_norm(tok, (width,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps) + b_v
            y = tok + last.attn.out_proj.weight @ val + last.attn.out_proj.bias
            h = F.layer_norm(y, (width,), last.ln_2.weight, last.ln_2.bias, last.ln_2.eps)
            h = last.mlp.c_proj(last.mlp.gelu(last.mlp.c_fc(h)))
            y = y + h
            y = F.layer_norm(y, (width,), v.ln_post.weight, v.ln_post.bias, v.ln_post.eps) @ v.proj
            out[i, t - 1] = F.normalize(y, dim=0)
    return out.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("size", [(64, 64), (48, 96)])
def test_dense_features_equal_reference(tiny, size):
    model, _ = tiny
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        got = dense_features(model, images)
        want = reference_value_path(model, images)
    assert got.shape == (2, 32, size[0] // 16, size[1] // 16)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2, size[0] // 16, size[1] // 16))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_text_embeddings_are_the_clip_recipe(tiny):
    model, tokenizer = tiny
    prompts = [["a photo of a car.", "a photo of a sedan."], ["a photo of a tree."]]
    got = text_embeddings(model, tokenizer, prompts)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))
    with torch.no_grad():
        e = F.normalize(model.encode_text(tokenizer(prompts[0])), dim=-1)
    torch.testing.assert_close(got[0], F.normalize(e.mean(0), dim=0))


TINY_RN = Path(__file__).parent / "data" / "rdistill-tiny-rn.json"
TAG_MEAN, TAG_STD = (0.25, 0.5, 0.75), (0.2, 0.3, 0.4)


@pytest.fixture()
def tiny_tags(tmp_path):
    """Two pretrained tags of the tiny ViT registered in open_clip's pretrained table (offline: a local 'file'):
    'rdqg' trained with QuickGELU (and its own mean/std), 'rdgelu' with GELU. Returns the checkpoint file."""
    from open_clip import pretrained as table

    open_clip.add_model_config(TINY)
    torch.manual_seed(1)
    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("rdistill-tiny-vit").state_dict(), ckpt)
    table._PRETRAINED["rdistill-tiny-vit"] = {
        "rdqg": table._pcfg(file=str(ckpt), quick_gelu=True, mean=TAG_MEAN, std=TAG_STD),
        "rdgelu": table._pcfg(file=str(ckpt))}
    yield ckpt
    del table._PRETRAINED["rdistill-tiny-vit"]


def activations(model) -> set[str]:
    """Class names of the MLP activations of every transformer block of both towers."""
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("QuickGELU", "GELU")}


def test_pretrained_tag_that_asks_for_quick_gelu_gets_it(tiny_tags):
    clip = load_openclip("openclip:rdistill-tiny-vit/rdqg")
    assert clip.activation == "quick_gelu" and activations(clip.model) == {"QuickGELU"}
    assert clip.mean == TAG_MEAN and clip.std == TAG_STD
    saved = torch.load(tiny_tags, weights_only=True)
    torch.testing.assert_close(clip.model.state_dict()["visual.proj"], saved["visual.proj"])
    plain = load_openclip("openclip:rdistill-tiny-vit/rdgelu")
    assert plain.activation == "gelu" and activations(plain.model) == {"GELU"}
    assert plain.weights_hash == clip.weights_hash  # same weights: only the activation tells the stores apart


def test_activation_of_a_checkpoint_file_must_be_said(tiny_tags):
    spec = f"openclip:rdistill-tiny-vit/{tiny_tags}"
    with pytest.raises(UserError, match="--activation quick_gelu"):
        load_openclip(spec)
    assert activations(load_openclip(spec, activation="quick_gelu").model) == {"QuickGELU"}
    assert activations(load_openclip(spec, activation="gelu").model) == {"GELU"}
    with pytest.raises(UserError, match="needs quick_gelu"):
        load_openclip("openclip:rdistill-tiny-vit/rdqg", activation="gelu")


def test_quickgelu_model_names_build_quick_gelu(tmp_path):
    """A '-quickgelu' model config (as open_clip ships for every OpenAI model) gives QuickGELU, and refuses GELU."""
    cfg = tmp_path / "rdistill-tiny-vit-quickgelu.json"
    cfg.write_text(TINY.read_text().replace('"embed_dim": 32,', '"embed_dim": 32, "quick_gelu": true,'))
    open_clip.add_model_config(cfg)
    assert activations(load_openclip("openclip:rdistill-tiny-vit-quickgelu").model) == {"QuickGELU"}
    with pytest.raises(UserError, match="needs quick_gelu"):
        load_openclip("openclip:rdistill-tiny-vit-quickgelu", activation="gelu")


@pytest.fixture(scope="module")
def tiny_rn():
    open_clip.add_model_config(TINY_RN)
    torch.manual_seed(0)
    return load_openclip("openclip:rdistill-tiny-rn")


def test_resnet_dense_features_are_the_attention_pool_value_path(tiny_rn):
    """MaskCLIP's ResNet variant against open_clip's own attention pool: with the pool's position embedding zeroed
    and every position holding the same vector f, attention can only return c_proj(v_proj(f))."""
    import copy

    assert tiny_rn.family == "resnet" and tiny_rn.stride == 32 and tiny_rn.dim == 32
    visual = tiny_rn.model.visual
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = dense_features(tiny_rn.model, images)
        stage4 = visual.forward_intermediates(images, indices=[4], intermediates_only=True)["image_intermediates"][0]
        pool = copy.deepcopy(visual.attnpool)
        pool.positional_embedding.zero_()
        side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
        want = torch.zeros_like(got)
        for b in range(2):
            for r in range(stage4.shape[2]):
                for c in range(stage4.shape[3]):
                    flat = stage4[b, :, r, c].view(1, -1, 1, 1).expand(1, -1, side, side)
                    want[b, :, r, c] = F.normalize(pool(flat)[0], dim=0)
    assert got.shape == (2, 32, 2, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_unsupported_families_are_refused_before_any_weights(tmp_path):
    timm_cfg = tmp_path / "rdistill-tiny-timm.json"
    timm_cfg.write_text(TINY.read_text().replace('"vision_cfg": {', '"vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", '))
    coca_cfg = tmp_path / "rdistill-tiny-coca.json"
    coca_cfg.write_text(TINY.read_text().replace('"vision_cfg": {', '"vision_cfg": {"attentional_pool": true, '))
    open_clip.add_model_config(timm_cfg)
    open_clip.add_model_config(coca_cfg)
    with pytest.raises(UserError, match="timm image tower"):
        load_openclip("openclip:rdistill-tiny-timm/does-not-exist.pt")
    with pytest.raises(UserError, match="attentional-pooling"):
        load_openclip("openclip:rdistill-tiny-coca")
