"""Official DINOv3 EoMT releases (tue-mps/eomt): backbone stored as deltas from Meta's DINOv3 weights.

The released files (Lightning `.ckpt` or safetensors, `network.*` keys, the backbone under
`network.encoder.backbone.`) hold every backbone parameter as the difference from Meta's gated
DINOv3 ViT (`facebook/dinov3-vit{s,b,l}16-pretrain-lvd1689m`); queries, heads and the upscale
blocks are absolute (tue-mps/eomt `training/lightning_module.py`, `delta_weights: True` in every
DINOv3 config). The official code adds the file to a model whose non-encoder parameters are zeroed,
so a user's own fine-tuned (absolute) checkpoint loaded with deltas on gets the base twice
(tue-mps/eomt issue #55). Here whether a file holds deltas is detected, never configured:

- the statistic: the median, over the backbone's LayerNorm weights (`norm1`, `norm2` of every
  block and the final `norm`), of their RMS. A LayerNorm weight starts at ones (RMS 1) and a
  pretrained ViT keeps it of order 1, while a fine-tuning difference is of order the learning rate
  times the steps (about 1e-3 .. 1e-2). Below `DELTA_RMS` (0.2) the file holds deltas. LayerNorm
  weights are used because their scale is known without the base (a linear layer's is not);
  the cls / register tokens' RMS is reported beside it as a second sign (near zero in a delta).
- buffers: the official code sums the whole state dict, buffers included. Here `attn_mask_probs` is
  read as stored (the annealing state the file was saved with, 0 after training: an inference
  model), and `pixel_mean` / `pixel_std` are accepted as ~0 (a delta of ImageNet's) or as
  ImageNet's values; anything else is warned about (the model always normalises with ImageNet's).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from eomt.checkpoints import dinov3
from eomt.checkpoints.dinov2 import unwrap
from eomt.checkpoints.io import CheckpointError, StateDict, as_state_dict
from eomt.checkpoints.source import read_weights
from eomt.config import DINOV3_PRESET_NAMES, ModelConfig
from eomt.config.presets import PRESET_ALIASES
from eomt.config import preset as get_preset
from eomt.models.eomt import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

PREFIX = "network."
BACKBONE = "encoder.backbone."
DELTA_RMS = 0.2  # median LayerNorm-weight RMS below which the backbone holds deltas (see above)
_NORMALISATION = {"encoder.pixel_mean": IMAGENET_MEAN, "encoder.pixel_std": IMAGENET_STD}
_LN = re.compile(r"^backbone\.(blocks\.\d+\.norm[12]|norm)\.weight$")
_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.")


def _clean(key: str) -> str:
    # `torch.compile` wraps modules in `_orig_mod`; DDP in `module.`.
    return key.replace("_orig_mod.", "").removeprefix("module.")


def is_official_dinov3(sd: Mapping[str, Tensor]) -> bool:
    """True for an official-layout (`network.encoder.backbone.*`) state dict of a DINOv3 EoMT."""
    return any(_clean(k).startswith(PREFIX + BACKBONE + "patch_embed.patch_embeddings") for k in sd)


def is_dinov3_eomt(sd: Mapping[str, Tensor]) -> bool:
    """True for a DINOv3 EoMT state dict in our layout (`backbone.patch_embed.patch_embeddings.*`)."""
    return "backbone.patch_embed.patch_embeddings.weight" in sd


def from_official_dinov3(sd: Mapping[str, Tensor], name: str) -> StateDict:
    """Official DINOv3 EoMT keys -> ours (`network.encoder.backbone.` -> `backbone.`, `network.` dropped).

    `criterion.*` and other non-network keys are dropped; `pixel_mean` / `pixel_std` are checked
    (module docstring) and dropped. Values are unchanged: deltas stay deltas (`delta_evidence`).
    """
    out: StateDict = {}
    for key, value in sd.items():
        k = _clean(key)
        if not k.startswith(PREFIX):
            continue  # criterion.empty_weight and other training-module state
        k = k[len(PREFIX):]
        if k in _NORMALISATION:
            _check_normalisation(k, value, name)
            continue
        k = "backbone." + k[len(BACKBONE):] if k.startswith(BACKBONE) else k
        if k.startswith(("backbone.rope_embeddings.", "backbone.patch_embed.mask_token")):
            continue  # RoPE frequencies are recomputed; the masked-modelling token is unused
        out[k] = value
    return out


def _check_normalisation(key: str, value: Tensor, name: str) -> None:
    expected = torch.tensor(_NORMALISATION[key], dtype=value.dtype).view_as(value)
    if not (torch.allclose(value, expected, atol=1e-4) or torch.allclose(value, torch.zeros_like(value), atol=1e-4)):
        log.warning("%s: network.%s = %s is neither ImageNet's %s nor a zero delta; the model uses ImageNet's",
                    name, key, value.flatten().tolist(), list(_NORMALISATION[key]))


def delta_evidence(sd: Mapping[str, Tensor]) -> tuple[bool, str]:
    """(holds deltas, the evidence as text) for a DINOv3 EoMT state dict in our layout.

    Deltas when the median RMS of the backbone's LayerNorm weights is under `DELTA_RMS` (a fresh
    LayerNorm's is 1). Raises `CheckpointError` when the state dict has no backbone LayerNorm.
    """
    rms = [float(v.float().pow(2).mean().sqrt()) for k, v in sd.items() if _LN.match(k)]
    if not rms:
        raise CheckpointError("no backbone LayerNorm weights (backbone.blocks.N.norm1.weight) to tell deltas apart")
    median = float(torch.tensor(rms).median())
    names = ("backbone.patch_embed.cls_token", "backbone.patch_embed.register_tokens")
    tokens = [sd[k].float() for k in names if k in sd]
    token_rms = float(torch.cat([t.flatten() for t in tokens]).pow(2).mean().sqrt()) if tokens else float("nan")
    deltas = median < DELTA_RMS
    evidence = (f"median backbone LayerNorm weight RMS {median:.3g} ({'<' if deltas else '>='} {DELTA_RMS}; "
                f"1 for a fresh LayerNorm), cls/register token RMS {token_rms:.3g}")
    return deltas, evidence


def read_base(source: str | Path | Mapping[str, Tensor], trust_pickle: bool = False) -> tuple[str, StateDict]:
    """(name, backbone weights in our names with the `backbone.` prefix) of DINOv3 base weights.

    `source` is a file, folder, hub id (e.g. `facebook/dinov3-vits16-pretrain-lvd1689m`) or a state
    dict, in any `dinov3.LAYOUTS`. Raises `CheckpointError` naming it when it is not DINOv3 weights.
    """
    if isinstance(source, Mapping):
        name, sd = "DINOv3 base state dict", dict(source)
    else:
        obj, _, file = read_weights(source, trust_pickle)
        name, sd = str(file), as_state_dict(unwrap(obj), file)
    return name, {"backbone." + k: v for k, v in dinov3.to_ours(sd, name=name).items()}


def add_base(sd: StateDict, base: StateDict, name: str, base_name: str) -> StateDict:
    """`sd` with `base` added to every backbone tensor (deltas -> absolute weights).

    Raises `CheckpointError` listing backbone tensors the base lacks or whose shapes differ (the
    wrong DINOv3 size, naming the one the file needs).
    """
    wanted = [k for k in sd if k.startswith("backbone.")]
    missing = [k for k in wanted if k not in base]
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(base[k].shape)}" for k in wanted
           if k in base and base[k].shape != sd[k].shape]
    if missing or bad:
        need = dinov3.base_model_id(_width(sd))
        detail = f"shapes differ: {', '.join(bad[:3])}" if bad else f"missing {', '.join(missing[:3])}"
        raise CheckpointError(f"{name}: the base {base_name} does not fit the deltas ({detail}); it needs {need}")
    out = dict(sd)
    for k in wanted:
        out[k] = (sd[k].float() + base[k].float()).to(sd[k].dtype)
    return out


def missing_base_error(sd: Mapping[str, Tensor], name: str, evidence: str) -> CheckpointError:
    """The error for a delta file given without its base: names Meta's hub id for its width."""
    need = dinov3.base_model_id(_width(sd))
    return CheckpointError(
        f"{name}: an official DINOv3 EoMT release whose backbone is stored as deltas ({evidence}); pass its base "
        f"weights: EoMT.from_pretrained(file, backbone='{need}') / load_model(..., backbone=...) or "
        f"`eomt convert FILE --backbone {need} --to eomt` (a gated hub repo: accept its licence and log in first)"
    )


def _width(sd: Mapping[str, Tensor]) -> int:
    cls = sd.get("backbone.patch_embed.cls_token")
    return int(cls.shape[-1]) if cls is not None else 0


def infer_dinov3_config(
    sd: Mapping[str, Tensor], name: str, img_size: tuple[int, int] | None = None, hint: str | None = None
) -> ModelConfig:
    """A `ModelConfig` (backbone "dinov3") that fits the shapes of a DINOv3 EoMT state dict (our names).

    Heads are D/64 (every DINOv3 ViT has head dim 64); LayerNorm eps 1e-5 (the released weights').
    The input size is `img_size`, else that of the preset `hint` names, else 640 (RoPE weights
    carry no grid). When `hint` names a DINOv3 preset of the same structure, that preset is
    returned (its label space and name; `img_size` applied). Raises `CheckpointError` naming the
    missing tensors.
    """
    needed = ("backbone.patch_embed.cls_token", "backbone.patch_embed.patch_embeddings.weight", "q.weight",
              "class_head.weight", "backbone.blocks.0.mlp.up_proj.weight")
    absent = [k for k in needed if k not in sd]
    if absent:
        raise CheckpointError(f"{name}: cannot infer the DINOv3 model from the weights, missing {', '.join(absent)}")
    d = _width(sd)
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    probs, reg = sd.get("attn_mask_probs"), sd.get("backbone.patch_embed.register_tokens")
    size = img_size or _preset_size(hint) or (640, 640)
    cfg = ModelConfig(
        backbone="dinov3", layer_norm_eps=1e-5, embed_dim=d, depth=depth, num_heads=max(1, d // 64),
        gated_mlp="backbone.blocks.0.mlp.gate_proj.weight" in sd,
        mlp_ratio=sd["backbone.blocks.0.mlp.up_proj.weight"].shape[0] / d,
        patch_size=int(sd["backbone.patch_embed.patch_embeddings.weight"].shape[-1]), img_size=size,
        num_register_tokens=int(reg.shape[1]) if reg is not None else 0,
        num_queries=int(sd["q.weight"].shape[0]), num_classes=int(sd["class_head.weight"].shape[0]) - 1,
        num_blocks=int(probs.numel()) if probs is not None else (4 if depth >= 24 else 3),
    )
    known = get_preset(hint) if hint in DINOV3_PRESET_NAMES else None
    if known is not None and _structure(known) == _structure(cfg):
        return known.replace(img_size=size)
    return cfg


def _structure(c: ModelConfig) -> tuple:
    return (c.embed_dim, c.depth, c.gated_mlp, c.patch_size, c.num_register_tokens, c.num_queries, c.num_blocks,
            c.num_classes, c.mlp_ratio)


def _preset_size(hint: str | None) -> tuple[int, int] | None:
    if hint not in DINOV3_PRESET_NAMES:
        return None
    try:
        return tuple(get_preset(hint).img_size)  # type: ignore[return-value]
    except ValueError:
        return None


def preset_hint(source: str) -> str | None:
    """The DINOv3 preset a hub id or folder is named after (`tue-mps/ade_semantic_eomt_large_512_dinov3`
    -> `ade20k_semantic_eomt_large_512_dinov3`, the hub spellings of `PRESET_ALIASES`), else None."""
    last = source.rstrip("/").split("/")[-1]
    last = PRESET_ALIASES.get(last, last)
    return last if last in DINOV3_PRESET_NAMES else None
