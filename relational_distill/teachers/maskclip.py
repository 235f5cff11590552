"""The real teacher: CLIP through open_clip, with MaskCLIP dense features (docs/teachers.md).

MaskCLIP (Zhou et al., ECCV 2022) reads dense, text-aligned features out of CLIP by keeping only the value path
of the image tower's last attention, so every spatial position keeps its own content:

- ViT: in the last block ``v = x + out_proj(W_v ln_1(x))``, ``v = v + mlp(ln_2(v))``, ``f = proj(ln_post(v))``;
- ResNet (RN50, ...): the attention pool's value and output projections at every position of the last stage,
  ``f = c_proj(v_proj(x))``, without the pool's position embedding.

The model is built with the activation its weights were trained with (OpenAI's weights need QuickGELU), and
images are normalised with the mean and std of the weights' own preprocessing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError

ACTIVATIONS = ("gelu", "quick_gelu")


def parse_teacher(spec: str) -> tuple[str, str | None]:
    """``openclip:MODEL/PRETRAINED`` -> (MODEL, PRETRAINED); PRETRAINED is a tag (``openai``) or a checkpoint path,
    or None for random weights (benchmarks and tests only)."""
    if not spec.startswith("openclip:"):
        raise UserError(f"teacher '{spec}': use 'sim-clip', 'sim-clip:clean' or 'openclip:MODEL/PRETRAINED' (e.g. openclip:ViT-B-16/openai)")
    body = spec[len("openclip:"):]
    name, _, pretrained = body.partition("/")
    return name, pretrained or None


def vision_family(spec: str, model_cfg: dict) -> str:
    """``vit`` or ``resnet`` for an open_clip model config whose image tower MaskCLIP supports; a one-line
    :class:`UserError` for every other family (timm towers, attentional pooling, custom attention blocks)."""
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        unsupported = f"a timm image tower ({vision['timm_model_name']})"
    elif isinstance(vision.get("layers"), (list, tuple)):
        return "resnet"
    elif vision.get("attentional_pool"):
        unsupported = "an attentional-pooling image tower (CoCa)"
    elif vision.get("block_type") or vision.get("scaled_cosine_attn") or vision.get("scale_heads") \
            or vision.get("qk_norm"):
        unsupported = "custom attention blocks"
    else:
        return "vit"
    raise UserError(f"teacher '{spec}': {unsupported} is not supported by MaskCLIP dense features; use an OpenAI-style "
                    f"ViT (e.g. ViT-B-16) or ResNet (e.g. RN50) CLIP")


def required_activation(spec: str, model_cfg: dict, pretrained: str | None, requested: str = "auto") -> str:
    """The MLP activation (``gelu`` or ``quick_gelu``) the teacher's weights need.

    A pretrained tag says it in open_clip's pretrained table (``quick_gelu``); a ``-quickgelu`` model name asks
    for QuickGELU; a local checkpoint file does not record it, so it needs the ``-quickgelu`` name or an explicit
    ``requested`` choice. Random weights use the model config's. ``requested`` (``auto``, ``gelu``,
    ``quick_gelu``) must agree with what the tag or the model name says.
    """
    import open_clip

    if requested not in ("auto", *ACTIVATIONS):
        raise UserError(f"--activation {requested}: choose auto, gelu or quick_gelu")
    name, _ = parse_teacher(spec)
    by_name = "quick_gelu" if model_cfg.get("quick_gelu", False) else None
    tag = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if tag:
        needed, source = ("quick_gelu" if tag.get("quick_gelu", False) else "gelu"), f"the weights '{pretrained}'"
    elif by_name:
        needed, source = by_name, f"the model name '{name}'"
    elif pretrained is None:
        needed, source = "gelu", f"the model config '{name}'"
    elif Path(pretrained).is_file():
        if requested == "auto":
            raise UserError(f"teacher '{spec}': a checkpoint file does not record its MLP activation; pass "
                            f"--activation quick_gelu for OpenAI-trained weights (or use the model name "
                            f"'{name}-quickgelu'), or --activation gelu")
        return requested
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(f"teacher '{spec}': '{pretrained}' is neither a pretrained tag of {name} "
                        f"({', '.join(tags) or 'none'}) nor a checkpoint file")
    if requested not in ("auto", needed):
        raise UserError(f"--activation {requested}: teacher '{spec}' needs {needed} (so says {source}); drop "
                        f"--activation or pass --activation {needed}")
    return needed


# ModifiedResNet (open_clip): a stride-2 stem conv, a 2x2 average pool and three stride-2 stages.
RESNET_STRIDE = 32


@dataclass(frozen=True)
class OpenClipPlan:
    """What an ``openclip:`` teacher will be, decided from open_clip's configs alone (no weights read)."""

    name: str
    pretrained: str | None
    family: str                     # vit or resnet
    stride: int                     # pixels per dense-feature cell: the ViT patch size, 32 for a ResNet
    activation: str                 # gelu or quick_gelu


def plan_openclip(spec: str, activation: str = "auto") -> OpenClipPlan:
    """Every refusal of an ``openclip:`` teacher (unknown model, unsupported family, undecidable or contradicted
    activation), before any weights are downloaded or read."""
    import open_clip

    name, pretrained = parse_teacher(spec)
    model_cfg = open_clip.get_model_config(name) if name in open_clip.list_models() else None
    if model_cfg is None:
        raise UserError(f"teacher '{spec}': open_clip has no model '{name}'; see open_clip.list_models()")
    family = vision_family(spec, model_cfg)
    vision = open_clip.model.CLIPVisionCfg(**model_cfg["vision_cfg"])  # fills open_clip's defaults
    stride = int(vision.patch_size) if family == "vit" else RESNET_STRIDE
    return OpenClipPlan(name, pretrained, family, stride,
                        required_activation(spec, model_cfg, pretrained, activation))


@dataclass
class OpenClip:
    """A loaded open_clip teacher and what precompute needs to know about it."""

    model: torch.nn.Module          # in eval mode
    tokenizer: object
    weights_hash: str
    activation: str                 # gelu or quick_gelu, as built
    family: str                     # vit or resnet
    stride: int                     # pixels per dense-feature cell, read from the built image tower
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str              # resize filter of the weights' preprocessing (bicubic, bilinear)

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)


def load_openclip(spec: str, device: str = "cpu", activation: str = "auto") -> OpenClip:
    """Build an ``openclip:`` teacher with the activation its weights need (see :func:`required_activation`),
    after :func:`plan_openclip` has refused whatever it cannot be."""
    import open_clip

    plan = plan_openclip(spec, activation)
    try:
        model = open_clip.create_model(plan.name, pretrained=plan.pretrained, device=device,
                                       force_quick_gelu=plan.activation == "quick_gelu")
    except RuntimeError as err:
        pretrained = plan.pretrained
        where = f"checkpoint file {pretrained}" if pretrained and Path(pretrained).exists() else f"weights '{pretrained}'"
        raise UserError(f"teacher '{spec}': could not load {where} ({str(err).splitlines()[0]}); download them first "
                        f"or pass a local checkpoint file") from None
    model.eval()
    visual = model.visual
    if plan.family == "vit":
        stride = visual.patch_size[0]
    else:  # the attention pool's position grid covers the native input: its side is image_size / stride
        side = round((visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5)
        stride = visual.image_size // side
    pre = open_clip.get_model_preprocess_cfg(model)
    return OpenClip(model=model, tokenizer=open_clip.get_tokenizer(plan.name), weights_hash=weights_hash(model),
                    activation=plan.activation, family=plan.family, stride=int(stride), mean=tuple(pre["mean"]),
                    std=tuple(pre["std"]), interpolation=pre.get("interpolation", "bicubic"))


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
    """MaskCLIP dense features of an open_clip CLIP with a ViT or a ResNet image tower.

    Args:
        images: (B, 3, H, W), normalised with the weights' mean and std, H and W multiples of the tower's stride
            (the patch size of a ViT, 32 for a ResNet).

    Returns:
        (B, D, H/stride, W/stride) features, L2-normalised along D.
    """
    if hasattr(model.visual, "attnpool"):
        return _resnet_dense_features(model.visual, images)
    return _vit_dense_features(model.visual, images)


def _vit_dense_features(visual, images: torch.Tensor) -> torch.Tensor:
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


def _resnet_dense_features(visual, images: torch.Tensor) -> torch.Tensor:
    x = visual.stem(images.to(visual.conv1.weight.dtype))
    for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = stage(x)
    pool = visual.attnpool
    v = pool.c_proj(pool.v_proj(x.permute(0, 2, 3, 1)))           # (B, h, w, D)
    return F.normalize(v.permute(0, 3, 1, 2).float(), dim=1)


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


def normalise_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 or [0, 1] float images (B, 3, H, W) -> float images normalised with the weights' ``mean`` and ``std``."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t

