"""The transformers (`EomtForUniversalSegmentation`) layout: one key table, config.json both ways.

Differences from our layout: separate q/k/v projections (ours: one packed qkv), position
embeddings stored as (N, D) (ours: (1, N, D)), SwiGLU as gate/up/down projections (ours: timm's
packed fc1 = [gate; up] and fc2), and HF module names. transformers itself is not needed here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from eomt.checkpoints import hf_dinov3
from eomt.checkpoints.infer import with_label_space
from eomt.checkpoints.io import CheckpointError, StateDict, save_safetensors
from eomt.config import ConfigError, ModelConfig
from eomt.files import json_text, write_atomic
from eomt.models.eomt import EoMT

log = logging.getLogger(__name__)

# Our key pattern -> transformers key pattern(s). "{i}" is an index; a trailing "." matches the
# parameter suffix (weight, bias). Several HF patterns: our tensor is their concatenation on dim 0.
_COMMON: list[tuple[str, tuple[str, ...]]] = [
    ("backbone.cls_token", ("embeddings.cls_token",)),
    ("backbone.reg_token", ("embeddings.register_tokens",)),
    ("backbone.pos_embed", ("embeddings.position_embeddings.weight",)),  # (1, N, D) <-> (N, D)
    ("backbone.patch_embed.proj.", ("embeddings.patch_embeddings.projection.",)),
    ("backbone.blocks.{i}.norm1.", ("layers.{i}.norm1.",)),
    ("backbone.blocks.{i}.attn.qkv.", tuple(f"layers.{{i}}.attention.{p}_proj." for p in "qkv")),
    ("backbone.blocks.{i}.attn.proj.", ("layers.{i}.attention.out_proj.",)),
    ("backbone.blocks.{i}.ls1.gamma", ("layers.{i}.layer_scale1.lambda1",)),
    ("backbone.blocks.{i}.norm2.", ("layers.{i}.norm2.",)),
    ("backbone.blocks.{i}.ls2.gamma", ("layers.{i}.layer_scale2.lambda1",)),
    ("backbone.norm.", ("layernorm.",)),
    ("q.weight", ("query.weight",)),
    ("class_head.", ("class_predictor.",)),
    ("mask_head.0.", ("mask_head.fc1.",)),
    ("mask_head.2.", ("mask_head.fc2.",)),
    ("mask_head.4.", ("mask_head.fc3.",)),
    ("upscale.{i}.conv1.", ("upscale_block.block.{i}.conv1.",)),
    ("upscale.{i}.conv2.", ("upscale_block.block.{i}.conv2.",)),
    ("upscale.{i}.norm.", ("upscale_block.block.{i}.layernorm2d.",)),
    ("attn_mask_probs", ("attn_mask_probs",)),
]
_MLP = [
    ("backbone.blocks.{i}.mlp.fc1.", ("layers.{i}.mlp.fc1.",)),
    ("backbone.blocks.{i}.mlp.fc2.", ("layers.{i}.mlp.fc2.",)),
]
_SWIGLU = [
    ("backbone.blocks.{i}.mlp.fc1.", ("layers.{i}.mlp.gate_proj.", "layers.{i}.mlp.up_proj.")),
    ("backbone.blocks.{i}.mlp.fc2.", ("layers.{i}.mlp.down_proj.",)),
]
# Names of an older conversion script (packed like timm); read, never written.
_SWIGLU_LEGACY = [
    ("backbone.blocks.{i}.mlp.fc1.", ("layers.{i}.mlp.weights_in.",)),
    ("backbone.blocks.{i}.mlp.fc2.", ("layers.{i}.mlp.weights_out.",)),
]
_IGNORED = ("criterion.",)  # loss buffers (empty_weight) are rebuilt from the config


def _regex(pattern: str) -> re.Pattern[str]:
    rx = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(rx + (r"(?P<rest>\w+)$" if pattern.endswith(".") else "$"))


def _fill(pattern: str, m: re.Match[str]) -> str:
    g = m.groupdict()
    return pattern.replace("{i}", g.get("i") or "") + (g.get("rest") or "")


def _table(swiglu: bool, *, reading: bool) -> list[tuple[str, tuple[str, ...]]]:
    mlp = (_SWIGLU + (_SWIGLU_LEGACY if reading else [])) if swiglu else _MLP
    return _COMMON + mlp


def to_hf(sd: StateDict, swiglu: bool) -> StateDict:
    """Our state dict -> transformers keys (q/k/v and gate/up split, pos-embed squeezed)."""
    rules = [(_regex(ours), hf) for ours, hf in _table(swiglu, reading=False)]
    out: StateDict = {}
    for key, value in sd.items():
        rule = next(((m, hf) for rx, hf in rules if (m := rx.match(key))), None)
        if rule is None:
            raise KeyError(f"no transformers name for parameter {key!r}")
        m, hf = rule
        if key == "backbone.pos_embed":
            value = value[0]  # (N, D)
        for pattern, part in zip(hf, value.chunk(len(hf), dim=0)):
            out[_fill(pattern, m)] = part.contiguous()
    return out


def from_hf(sd: StateDict, swiglu: bool, name: str) -> StateDict:
    """Transformers keys -> our keys. Unknown keys are passed through (reported as unexpected)."""
    rules = [(ours, [_regex(p) for p in hf]) for ours, hf in _table(swiglu, reading=True)]
    parts: dict[str, dict[int, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    out: StateDict = {}
    for key, value in sd.items():
        k = key.removeprefix("eomt.").removeprefix("model.")
        if k.startswith(_IGNORED):
            continue
        hit = next(
            ((ours, j, m, len(rxs)) for ours, rxs in rules for j, rx in enumerate(rxs) if (m := rx.match(k))),
            None,
        )
        if hit is None:
            out[k] = value
            continue
        ours, j, m, n = hit
        target = _fill(ours, m)
        parts.setdefault(target, {})[j] = value
        counts[target] = n
    for target, got in parts.items():
        if len(got) != counts[target]:
            raise CheckpointError(
                f"{name}: {target} needs {counts[target]} transformers tensors, found {len(got)}"
            )
        value = torch.cat([got[j] for j in range(counts[target])], dim=0)
        out[target] = value[None] if target == "backbone.pos_embed" and value.ndim == 2 else value
    return out


# ------------------------------------------------------------------------------------- config
def config_from_hf(d: dict[str, Any], name: str) -> ModelConfig:
    """`ModelConfig` from an `EomtConfig` config.json dict (labels from id2label)."""
    if hf_dinov3.is_dinov3_config(d):  # EomtDinov3Config: its own fields translated, the rest shared
        d = hf_dinov3.as_eomt_config(d, name)
    model_type = d.get("model_type", "eomt")
    if model_type == "videomt":
        raise CheckpointError(f"{name}: a transformers VidEoMT (video) model; load it with "
                              "eomt.checkpoints.load_video_model")
    if model_type != "eomt":
        raise CheckpointError(f"{name}: model_type {model_type!r} is not supported (expected 'eomt')")
    if d.get("hidden_act", "gelu") != "gelu" or d.get("num_channels", 3) != 3:
        raise CheckpointError(
            f"{name}: hidden_act={d.get('hidden_act')!r}, num_channels={d.get('num_channels')} unsupported "
            "(expected 'gelu', 3)"
        )
    img, patch = d.get("image_size", 640), d.get("patch_size", 16)
    img = (img, img) if isinstance(img, int) else tuple(img)
    patch = patch if isinstance(patch, int) else patch[0]
    id2label = {int(k): v for k, v in (d.get("id2label") or {}).items()}
    num_labels = len(id2label) if id2label else int(d.get("num_labels", 2))
    names = tuple(id2label.get(i, f"LABEL_{i}") for i in range(num_labels))
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = ()  # transformers' placeholder labels
    extra = d.get("eomt_extra") or {}
    try:
        cfg = ModelConfig.from_dict(dict(
            embed_dim=d.get("hidden_size", 1024), depth=d.get("num_hidden_layers", 24),
            num_heads=d.get("num_attention_heads", 16), mlp_ratio=d.get("mlp_ratio", 4),
            swiglu=d.get("use_swiglu_ffn", False), patch_size=patch, img_size=img,
            num_register_tokens=d.get("num_register_tokens", 4), num_queries=d.get("num_queries", 200),
            num_blocks=d.get("num_blocks", 4), num_classes=num_labels, class_names=names,
            layerscale_init=d.get("layerscale_value", 1.0), layer_norm_eps=d.get("layer_norm_eps", 1e-6),
            **extra,
        ))
    except ConfigError as e:
        raise CheckpointError(f"{name}: config.json does not give a valid model ({e})") from None
    if d.get("num_upscale_blocks", cfg.num_upscale) != cfg.num_upscale:
        raise CheckpointError(
            f"{name}: num_upscale_blocks={d['num_upscale_blocks']} unsupported for patch {patch} "
            f"(expected {cfg.num_upscale})"
        )
    return cfg if extra.get("task") else with_label_space(cfg)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json content for `EomtForUniversalSegmentation.from_pretrained`."""
    h, w = cfg.img_size
    if h != w:
        raise CheckpointError(
            f"model.img_size: transformers EoMT needs a square size (one image_size for both sides), found "
            f"{(h, w)}; save a non-square model with save_model or save_official"
        )
    if float(cfg.mlp_ratio) != int(cfg.mlp_ratio) and cfg.backbone != "dinov3":
        raise CheckpointError(f"model.mlp_ratio: transformers EoMT needs an integer, found {cfg.mlp_ratio}")
    names = cfg.class_names or tuple(f"LABEL_{i}" for i in range(cfg.num_classes))
    config = {
        "architectures": ["EomtForUniversalSegmentation"], "model_type": "eomt",
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "mlp_ratio": int(cfg.mlp_ratio), "use_swiglu_ffn": cfg.swiglu, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_dropout": 0.0, "drop_path_rate": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "image_size": h,
        "patch_size": cfg.patch_size, "num_channels": 3, "layerscale_value": cfg.layerscale_init,
        "num_upscale_blocks": cfg.num_upscale, "num_blocks": cfg.num_blocks, "num_queries": cfg.num_queries,
        "num_register_tokens": cfg.num_register_tokens,
        "no_object_weight": 0.1, "class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0,
        "train_num_points": 12544, "oversample_ratio": 3.0, "importance_sample_ratio": 0.75,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "dtype": "float32",
        # Not part of EomtConfig; transformers keeps unknown keys, so the label space survives.
        "eomt_extra": {"task": cfg.task, "stuff_classes": list(cfg.stuff_classes), "name": cfg.name},
    }
    return hf_dinov3.to_dinov3_config(config, cfg) if cfg.backbone == "dinov3" else config


def is_hf_layout(sd: StateDict) -> bool:
    """True for transformers-named state dicts."""
    keys = (k.removeprefix("eomt.").removeprefix("model.") for k in sd)
    return any(k.startswith("embeddings.patch_embeddings.") for k in keys)


def read_hf_config(folder: Path) -> ModelConfig:
    """`ModelConfig` from `folder/config.json`."""
    path = folder / "config.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: transformers weights without a config.json") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return config_from_hf(d, str(path))


def save_transformers(model: EoMT, folder: str | Path) -> Path:
    """Write `folder/config.json` + `folder/model.safetensors` for `EomtForUniversalSegmentation`
    (`EomtDinov3ForUniversalSegmentation` for a DINOv3 model).

    HF expects pixel values normalised with ImageNet mean/std (our model normalises inside).
    """
    folder = Path(folder)
    cfg = model.config
    config = config_to_hf(cfg)
    sd = model.state_dict()
    weights = hf_dinov3.to_hf(sd) if cfg.backbone == "dinov3" else to_hf(sd, cfg.swiglu)
    empty = torch.ones(cfg.num_classes + 1)
    empty[-1] = config["no_object_weight"]
    weights["criterion.empty_weight"] = empty  # HF's loss buffer, so that from_pretrained reports nothing missing
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(weights, folder / "model.safetensors", {"format": "pt"})
    write_atomic(folder / "config.json", json_text(config, indent=2, sort_keys=True))
    log.info("wrote transformers folder %s (%d tensors)", folder, len(weights))
    return folder
