"""The transformers `EomtDinov3ForUniversalSegmentation` layout: one key table, config.json both ways.

The DINOv3 backbone keeps transformers' module names inside a block, so the table only renames the
containers (`embeddings` <-> `backbone.patch_embed`, `layers` <-> `backbone.blocks`, `layernorm`
<-> `backbone.norm`) and the EoMT heads (as for DINOv2: `query`, `class_predictor`,
`mask_head.fc1..3`, `upscale_block.block.N.*`). Every tensor maps one to one, unchanged.

config.json: `checkpoints.hf` reads and writes the fields shared with `EomtConfig`; this module
translates the DINOv3 ones (model_type "eomt_dinov3", intermediate_size, use_gated_mlp +
hidden_act, rope_parameters, the projection biases, pos_embed_*). transformers is not needed here.
"""

from __future__ import annotations

import re
from typing import Any

from eomt.checkpoints.io import CheckpointError, StateDict
from eomt.config import ModelConfig

MODEL_TYPE = "eomt_dinov3"
ARCHITECTURE = "EomtDinov3ForUniversalSegmentation"

# (our key regex, transformers key regex) with one group for the rest of the key; both directions.
_KEYS: list[tuple[str, str]] = [
    (r"backbone\.patch_embed\.(.+)", r"embeddings\.(.+)"),
    (r"backbone\.blocks\.(.+)", r"layers\.(.+)"),
    (r"backbone\.norm\.(.+)", r"layernorm\.(.+)"),
    (r"q\.(weight)", r"query\.(weight)"),
    (r"class_head\.(.+)", r"class_predictor\.(.+)"),
    (r"mask_head\.0\.(.+)", r"mask_head\.fc1\.(.+)"),
    (r"mask_head\.2\.(.+)", r"mask_head\.fc2\.(.+)"),
    (r"mask_head\.4\.(.+)", r"mask_head\.fc3\.(.+)"),
    (r"upscale\.(\d+\.)norm\.(.+)", r"upscale_block\.block\.(\d+\.)layernorm2d\.(.+)"),
    (r"upscale\.(\d+\.conv[12]\..+)", r"upscale_block\.block\.(\d+\.conv[12]\..+)"),
    (r"(attn_mask_probs)", r"(attn_mask_probs)"),
]
_IGNORED = ("criterion.",)  # transformers' loss buffer (empty_weight), rebuilt from the config
# The transformers fields our DINOv3 backbone fixes (the official DINOv3 S/B/L/H+ values).
_FIXED = {"query_bias": True, "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True,
          "pos_embed_shift": None, "pos_embed_jitter": None, "num_channels": 3}


def _template(rx: str) -> str:
    """A key regex -> its format template: each group becomes {0}, {1}, ..."""
    count = iter(range(10))
    return re.sub(r"\([^()]*\)", lambda _: "{%d}" % next(count), rx).replace("\\", "")


_TO_HF = [(re.compile(ours + "$"), _template(hf)) for ours, hf in _KEYS]
_FROM_HF = [(re.compile(hf + "$"), _template(ours)) for ours, hf in _KEYS]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for rx, template in rules:
        m = rx.match(key)
        if m:
            return template.format(*m.groups())
    return None


def to_hf(sd: StateDict) -> StateDict:
    """Our DINOv3 EoMT state dict -> transformers keys (tensors unchanged).

    Raises KeyError naming a parameter with no transformers name.
    """
    out: StateDict = {}
    for key, value in sd.items():
        hf_key = _rename(key, _TO_HF)
        if hf_key is None:
            raise KeyError(f"no transformers name for parameter {key!r}")
        out[hf_key] = value.contiguous()
    return out


def from_hf(sd: StateDict) -> StateDict:
    """Transformers DINOv3 EoMT keys -> ours. Unknown keys are passed through (reported as unexpected)."""
    out: StateDict = {}
    for key, value in sd.items():
        k = key.removeprefix("eomt_dinov3.").removeprefix("model.")
        if k.startswith(_IGNORED):
            continue
        out[_rename(k, _FROM_HF) or k] = value
    return out


def is_dinov3_config(d: dict[str, Any]) -> bool:
    """True for a config.json dict of `EomtDinov3ForUniversalSegmentation`."""
    return d.get("model_type") == MODEL_TYPE


def as_eomt_config(d: dict[str, Any], name: str) -> dict[str, Any]:
    """An `EomtDinov3Config` dict -> the `EomtConfig`-shaped dict `checkpoints.hf` reads, with the
    DINOv3 fields in its `eomt_extra` (backbone "dinov3", rope_theta, rope_rescale).

    Raises `CheckpointError` (naming `name`) for settings our backbone does not implement: other
    projection biases, position shift / jitter, a RoPE type other than "default", an activation
    other than GELU.
    """
    bad = {k: d[k] for k, v in _FIXED.items() if k in d and d[k] != v}
    if d.get("hidden_act", "gelu") != "gelu":  # also the activation of transformers' EoMT heads
        bad["hidden_act"] = d["hidden_act"]
    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        bad["rope_parameters.rope_type"] = rope["rope_type"]
    if bad:
        raise CheckpointError(
            f"{name}: unsupported EoMT-DINOv3 settings {bad} (expected {_FIXED}, hidden_act 'gelu', "
            "rope_type 'default')"
        )
    hidden = int(d.get("hidden_size", 1024))
    intermediate = int(d.get("intermediate_size", 4096))
    rescale = d.get("pos_embed_rescale", 2.0)
    extra = {
        **(d.get("eomt_extra") or {}), "backbone": "dinov3",
        "rope_theta": float(rope.get("rope_theta", 100.0)), "rope_rescale": float(rescale or 1.0),
        "gated_mlp": bool(d.get("use_gated_mlp", False)),
    }
    return {
        **d, "model_type": "eomt", "hidden_act": "gelu", "mlp_ratio": intermediate / hidden,
        "use_swiglu_ffn": False, "eomt_extra": extra,
    }


def to_dinov3_config(eomt: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """The `EomtConfig` dict `checkpoints.hf` writes -> an `EomtDinov3Config` dict for `cfg`."""
    out = {k: v for k, v in eomt.items() if k not in ("mlp_ratio", "use_swiglu_ffn")}
    out["eomt_extra"] = {k: v for k, v in out.get("eomt_extra", {}).items() if k != "backbone"}
    out.update(_FIXED)
    out.update(
        architectures=[ARCHITECTURE], model_type=MODEL_TYPE, intermediate_size=cfg.mlp_hidden,
        use_gated_mlp=cfg.gated_mlp, hidden_act="gelu",
        rope_parameters={"rope_theta": float(cfg.rope_theta), "rope_type": "default"},
        pos_embed_rescale=float(cfg.rope_rescale) if cfg.rope_rescale > 1 else None,
    )
    return out
