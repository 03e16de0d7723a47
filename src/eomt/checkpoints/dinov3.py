"""DINOv3 backbone weights (Meta, transformers or timm layout) -> our DINOv3 backbone names.

Our names (`eomt.models.backbones.dinov3`, under `backbone.` in the model): `patch_embed.cls_token`,
`patch_embed.register_tokens`, `patch_embed.patch_embeddings.{weight,bias}`, per block
`norm1`, `attention.{q,k,v,o}_proj` (no key bias), `layer_scale1.lambda1`, `norm2`,
`mlp.{up,down}_proj` (gated: `mlp.gate_proj` too), `layer_scale2.lambda1`, and the final `norm`.

Layouts read (the facts are those of transformers' DINOv3 converter and modeling code, and of
timm's `eva.py` checkpoint filter):
- transformers `DINOv3ViTModel` (the `facebook/dinov3-vit*16-pretrain-lvd1689m` hub repos):
  `embeddings.{cls_token,register_tokens,patch_embeddings,mask_token}`, `layer.N.*` (or
  `model.layer.N.*` in memory since transformers 5) with our block names, `norm`;
- Meta's original `dinov3` repo (`dinov3_vit*16_pretrain_lvd1689m-*.pth`): `cls_token`,
  `storage_tokens` (the registers), `mask_token`, `patch_embed.proj`, `rope_embed.periods`,
  `blocks.N.{norm1,norm2}`, `blocks.N.attn.qkv` (fused q|k|v; its key bias is masked to zero
  by `qkv.bias_mask`), `blocks.N.attn.proj`, `blocks.N.ls{1,2}.gamma`, `blocks.N.mlp.fc1/fc2`
  or, gated, `mlp.w1/w2/w3` (gate / up / down), `norm`;
- timm `vit_*_patch16_dinov3[_qkvb]` (Eva class): `cls_token`, `reg_token`, `patch_embed.proj`,
  `blocks.N.attn.qkv` (fused) with `attn.q_bias`/`attn.v_bias` (the `_qkvb` variants; without
  them the biases are zero, as the distilled weights' are), `attn.proj`, `gamma_1`/`gamma_2`,
  `mlp.fc1/fc2` or, gated, `mlp.fc1_g/fc1_x/fc2` (gate / up / down), `norm`.
- ours (`patch_embed.patch_embeddings`, `blocks.N.attention.*`): a backbone already in our names.
Dropped everywhere: the masked-image-modelling `mask_token`, RoPE period buffers (recomputed from
`rope_theta`), `bias_mask` and the 7B-only `local_cls_norm`.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

from eomt.checkpoints.fit import BackboneReport, fill_backbone
from eomt.checkpoints.io import CheckpointError, StateDict
from eomt.models.eomt import EoMT

LAYOUTS = ("transformers", "meta", "timm", "eomt")
# Prefixes of training or wrapper checkpoints, stripped when every key has them.
_PREFIXES = ("module.", "teacher.backbone.", "student.backbone.", "backbone.", "dinov3.", "model.")
_HEADS = ("class_head", "class_predictor", "q.weight", "query.weight", "mask_head")
_DROPPED = re.compile(
    r"(^|\.)(mask_token|local_cls_norm\..*|rope_embed\..*|rope_embeddings\..*|.*\.bias_mask|.*\.periods)$"
)
# Block-level renames per layout (applied to the part after `blocks.N.`).
_META_BLOCK = {
    "attn.proj.": "attention.o_proj.", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.": "mlp.up_proj.", "mlp.fc2.": "mlp.down_proj.",
    "mlp.w1.": "mlp.gate_proj.", "mlp.w2.": "mlp.up_proj.", "mlp.w3.": "mlp.down_proj.",
}
_TIMM_BLOCK = {
    "attn.proj.": "attention.o_proj.", "gamma_1": "layer_scale1.lambda1", "gamma_2": "layer_scale2.lambda1",
    "mlp.fc1_g.": "mlp.gate_proj.", "mlp.fc1_x.": "mlp.up_proj.",
    "mlp.fc1.": "mlp.up_proj.", "mlp.fc2.": "mlp.down_proj.",
    "attn.q_bias": "attention.q_proj.bias", "attn.v_bias": "attention.v_proj.bias",
    "attn.q_proj.": "attention.q_proj.", "attn.k_proj.": "attention.k_proj.", "attn.v_proj.": "attention.v_proj.",
}
_TOKENS = {
    "cls_token": "patch_embed.cls_token", "storage_tokens": "patch_embed.register_tokens",
    "reg_token": "patch_embed.register_tokens", "embeddings.cls_token": "patch_embed.cls_token",
    "embeddings.register_tokens": "patch_embed.register_tokens",
    "patch_embed.cls_token": "patch_embed.cls_token", "patch_embed.register_tokens": "patch_embed.register_tokens",
}


def strip_prefix(sd: Mapping[str, Tensor]) -> StateDict:
    """`sd` without the wrapper prefixes (`module.`, `teacher.backbone.`, ...) that all its keys share."""
    out = dict(sd)
    for prefix in _PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def dinov3_layout(sd: Mapping[str, Tensor]) -> str | None:
    """"transformers", "meta", "timm" or "eomt" (ours) for DINOv3 backbone weights without heads, else None.

    Told apart by names only: transformers has `embeddings.register_tokens`; Meta has
    `storage_tokens`; timm has `reg_token` and `gamma_1` (its DINOv2 models have `pos_embed` and
    `ls1.gamma`; DINOv3 has no absolute position embedding at all).
    """
    keys = set(strip_prefix(sd))
    if any(k.startswith(_HEADS) or ".class_head" in k for k in keys):
        return None
    blocks = any(k.startswith(("blocks.", "layer.", "model.layer.")) for k in keys)
    if not blocks or "pos_embed" in keys:
        return None
    if "embeddings.patch_embeddings.weight" in keys and "embeddings.register_tokens" in keys:
        return "transformers"
    if "patch_embed.patch_embeddings.weight" in keys and "patch_embed.register_tokens" in keys:
        return "eomt"  # a backbone already in our names
    if "patch_embed.proj.weight" in keys and "storage_tokens" in keys:
        return "meta"
    if "patch_embed.proj.weight" in keys and any(k.endswith(".gamma_1") for k in keys):
        return "timm"
    return None


def to_ours(sd: Mapping[str, Tensor], layout: str | None = None, name: str = "DINOv3 weights") -> StateDict:
    """DINOv3 backbone weights -> our backbone names (without the `backbone.` prefix).

    `layout` is detected when None. Fused qkv tensors (D*3 rows) are split into q/k/v; the key
    bias is dropped (zero in every release: Meta masks it, timm fixes it at 0, transformers has
    none); a missing q/v bias (timm without `_qkvb`) becomes zeros. Raises `CheckpointError`
    naming `name` when the layout is unknown.
    """
    sd = strip_prefix(sd)
    layout = layout or dinov3_layout(sd)
    if layout not in LAYOUTS:
        sample = ", ".join(list(sd)[:3])
        raise CheckpointError(
            f"{name}: not DINOv3 backbone weights (expected transformers embeddings.register_tokens, Meta "
            f"storage_tokens or timm reg_token + blocks.N.gamma_1, and no pos_embed); keys such as {sample}"
        )
    out: StateDict = {}
    for key, value in sd.items():
        if _DROPPED.search(key):
            continue
        if key in _TOKENS:
            out[_TOKENS[key]] = value
        elif key.startswith(("patch_embed.proj.", "embeddings.patch_embeddings.", "patch_embed.patch_embeddings.")):
            out["patch_embed.patch_embeddings." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out[key] = value
        elif (m := re.match(r"^(?:model\.)?(?:layer|blocks)\.(\d+)\.(.+)$", key)) is not None:
            _block(out, f"blocks.{m.group(1)}.", m.group(2), value, layout)
        else:
            out[key] = value  # unexpected: reported by the caller's fit
    if layout == "timm":
        _zero_missing_biases(out)
    return out


def _block(out: StateDict, prefix: str, rest: str, value: Tensor, layout: str) -> None:
    """One block tensor `rest` (after `blocks.N.`) into `out` under our names."""
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        q, k, v = value.chunk(3, dim=0)  # (3D, ...) rows ordered q | k | v
        kind = rest.rsplit(".", 1)[1]
        out[f"{prefix}attention.q_proj.{kind}"] = q
        if kind == "weight":
            out[f"{prefix}attention.k_proj.weight"] = k
        out[f"{prefix}attention.v_proj.{kind}"] = v
        return
    if rest in ("attention.k_proj.bias", "attn.k_bias"):
        return  # zero by construction (no key bias)
    table = {"meta": _META_BLOCK, "timm": _TIMM_BLOCK}.get(layout, {})
    for old, new in table.items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    out[prefix + rest] = value


def _zero_missing_biases(out: StateDict) -> None:
    """timm's DINOv3 models without `_qkvb` have no q/v bias: the released biases are all zero."""
    for key in [k for k in out if k.endswith("attention.q_proj.weight")]:
        for proj in ("q_proj", "v_proj"):
            bias = key.replace("q_proj.weight", f"{proj}.bias")
            if bias not in out:
                w = out[key]
                out[bias] = torch.zeros(w.shape[0], dtype=w.dtype)


def base_model_id(embed_dim: int) -> str:
    """Meta's hub id of the DINOv3 ViT of width `embed_dim` (S 384, B 768, L 1024), the base of the
    official DINOv3 EoMT releases (tue-mps/eomt `models/vit.py`)."""
    size = {384: "s", 768: "b", 1024: "l"}.get(embed_dim)
    if size is None:
        return f"the DINOv3 ViT of width {embed_dim} it was fine-tuned from"
    return f"facebook/dinov3-vit{size}16-pretrain-lvd1689m"




def fit_dinov3(model: EoMT, source_sd: Mapping[str, Tensor], name: str) -> BackboneReport:
    """Copy DINOv3 weights (any of `LAYOUTS`) into `model.backbone`; log nothing.

    No resampling: DINOv3 is patch 16 with RoPE, so the weights fit any input size. Raises
    `CheckpointError` naming `name` for a non-DINOv3 model, another width, depth or patch size
    (the shapes), or when under `fit.MIN_MATCHED` of the backbone's tensors are found.
    """
    if model.config.backbone != "dinov3":
        raise CheckpointError(
            f"{name}: DINOv3 weights for a {model.config.backbone!r} backbone; set model.backbone=dinov3 "
            "(or a *_dinov3 preset)"
        )
    layout = dinov3_layout(source_sd) or "unknown"
    sd = to_ours(source_sd, None if layout == "unknown" else layout, name)
    missing = [k.removeprefix("backbone.") for k in model.state_dict() if k.startswith("backbone.") and
               k.removeprefix("backbone.") not in sd]
    return fill_backbone(model, sd, BackboneReport(layout=layout), "DINOv3", name, lambda found, expected: (
        f"{name}: DINOv3 weights ({layout} layout) fill only {found} of the backbone's "
        f"{expected} tensors (missing e.g. {', '.join(missing[:3])})"))
