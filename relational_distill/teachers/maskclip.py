"""The real teacher: CLIP through open_clip, with MaskCLIP dense features.

MaskCLIP (Zhou et al., ECCV 2022) reads dense, text-aligned features out of a CLIP ViT by replacing the
attention of the last block with its value path, so every patch token keeps its own content:
``v = x + out_proj(W_v ln_1(x))``, ``v = v + mlp(ln_2(v))``, ``f = proj(ln_post(v))``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_teacher(spec: str) -> tuple[str, str | None]:
    """``openclip:MODEL/PRETRAINED`` -> (MODEL, PRETRAINED); PRETRAINED is a tag (``openai``) or a checkpoint path,
    or None for random weights (benchmarks and tests only)."""
    if not spec.startswith("openclip:"):
        raise UserError(f"teacher '{spec}': use 'sim-clip' or 'openclip:MODEL/PRETRAINED' (e.g. openclip:ViT-B-16/openai)")
    body = spec[len("openclip:"):]
    name, _, pretrained = body.partition("/")
    return name, pretrained or None


def load_openclip(spec: str, device: str = "cpu"):
    """(model, tokenizer, weights_hash) for an ``openclip:`` teacher spec. The model is in eval mode."""
    import open_clip

    name, pretrained = parse_teacher(spec)
    if name not in open_clip.list_models():
        raise UserError(f"teacher '{spec}': open_clip has no model '{name}'; see open_clip.list_models()")
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except RuntimeError as err:
        where = f"checkpoint file {pretrained}" if pretrained and Path(pretrained).exists() else f"weights '{pretrained}'"
        raise UserError(f"teacher '{spec}': could not load {where} ({str(err).splitlines()[0]}); download them first "
                        f"or pass a local checkpoint file") from None
    model.eval()
    return model, open_clip.get_tokenizer(name), weights_hash(model)


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter and buffer, so a feature cache can tell which weights made it."""
    h = hashlib.sha1()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _interpolated_positions(pos: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Position embeddings (1 + g*g, C) resized bicubically to a (grid_h x grid_w) patch grid."""
    cls, patches = pos[:1], pos[1:]
    side = int(round(patches.shape[0] ** 0.5))
    if (side, side) == (grid_h, grid_w):
        return pos
    grid = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])


@torch.no_grad()
def dense_features(model, images: torch.Tensor) -> torch.Tensor:
    """MaskCLIP dense features.

    Args:
        model: an open_clip CLIP model with a ViT image tower.
        images: (B, 3, H, W), CLIP-normalised, H and W multiples of the patch size (16 for ViT-B/16).

    Returns:
        (B, D, H/16, W/16) features, L2-normalised along D.
    """
    visual = model.visual
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    batch, width, grid_h, grid_w = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
    x = torch.cat([cls, x], 1) + _interpolated_positions(visual.positional_embedding, grid_h, grid_w).to(x.dtype)
    x = visual.ln_pre(x)
    transformer = visual.transformer
    batch_first = getattr(transformer, "batch_first", True)
    x = x if batch_first else x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    x = x if batch_first else x.transpose(0, 1)
    last = transformer.resblocks[-1]
    attn = last.attn
    w_v = attn.in_proj_weight[2 * width:]
    b_v = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    v = x + last.ls_1(attn.out_proj(F.linear(last.ln_1(x), w_v, b_v)))
    v = v + last.ls_2(last.mlp(last.ln_2(v)))
    v = visual.ln_post(v[:, 1:])
    if visual.proj is not None:
        v = v @ visual.proj
    v = v.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2)
    return F.normalize(v.float(), dim=1)


@torch.no_grad()
def text_embeddings(model, tokenizer, class_prompts: list[list[str]]) -> torch.Tensor:
    """CLIP text embeddings of classes: each prompt embedded and normalised, averaged per class, re-normalised.

    Args:
        class_prompts: for each class, its prompts (every template x every synonym).

    Returns:
        (C, D), L2-normalised.
    """
    device = next(model.parameters()).device
    out = []
    for prompts in class_prompts:
        emb = F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
        out.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(out)


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images (B, 3, H, W) -> CLIP-normalised float."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
