"""MaskCLIP dense features and CLIP text embeddings on a tiny open_clip model with random weights (offline)."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from relational_distill.teachers.maskclip import dense_features, load_openclip, text_embeddings

TINY = Path(__file__).parent / "data" / "rdistill-tiny-vit.json"


@pytest.fixture(scope="module")
def tiny():
    open_clip.add_model_config(TINY)
    torch.manual_seed(0)
    model, tokenizer, digest = load_openclip("openclip:rdistill-tiny-vit")
    return model, tokenizer


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
