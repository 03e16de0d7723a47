"""The official (tue-mps/eomt) Lightning layout: `network.*` keys, backbone under `network.encoder.backbone.`.

Our parameter names are the official ones without the prefix, except that the backbone sits at
`backbone.*` instead of `encoder.backbone.*`. A checkpoint of our own training module uses
`network.backbone.*`; both are read here.

The official file holds tensors only: `save_official` writes the model's config (class names,
stuff classes, category ids, input size) to a sidecar `<stem>.eomt.json` beside it, which
`load_model` reads back, so a round trip through the official layout loses nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from eomt.checkpoints.io import CheckpointError, StateDict
from eomt.config import ModelConfig
from eomt.files import json_text, write_atomic
from eomt.models.eomt import EoMT, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

PREFIX = "network."
BACKBONE = "encoder.backbone."
_NORMALISATION = {"encoder.pixel_mean": IMAGENET_MEAN, "encoder.pixel_std": IMAGENET_STD}


def is_official_layout(sd: StateDict) -> bool:
    """True for `network.*` state dicts (official release files and our own Lightning checkpoints)."""
    return any(_clean(k).startswith(PREFIX) for k in sd)


def from_official(sd: StateDict, name: str) -> StateDict:
    """Official/Lightning keys -> our keys. Drops `criterion.*` and the normalisation buffers."""
    if any(_clean(k).startswith(PREFIX + BACKBONE + "patch_embed.patch_embeddings") for k in sd):
        raise CheckpointError(
            f"{name}: a DINOv3 (RoPE backbone) EoMT checkpoint; only DINOv2-style checkpoints are supported"
        )
    out: StateDict = {}
    dropped = []
    for key, value in sd.items():
        k = _clean(key)
        if not k.startswith(PREFIX):
            dropped.append(k)  # criterion.empty_weight and other training-module state
            continue
        k = k[len(PREFIX):]
        if k in _NORMALISATION:
            _check_normalisation(k, value, name)
            continue
        if k.startswith(BACKBONE):
            k = "backbone." + k[len(BACKBONE):]
        out[k] = value
    if dropped:
        log.debug("%s: ignored %d non-network keys (%s)", name, len(dropped), ", ".join(dropped[:3]))
    return out


def _clean(key: str) -> str:
    # `torch.compile` wraps modules in `_orig_mod`; DDP in `module.`.
    return key.replace("_orig_mod.", "").removeprefix("module.")


def _check_normalisation(key: str, value: Tensor, name: str) -> None:
    expected = torch.tensor(_NORMALISATION[key], dtype=value.dtype).view_as(value)
    if not torch.allclose(value, expected, atol=1e-4):
        log.warning(
            "%s: network.%s = %s differs from ImageNet's %s, which this model uses",
            name, key, value.flatten().tolist(), list(_NORMALISATION[key]),
        )


def to_official_state_dict(model: EoMT) -> StateDict:
    """The model's weights in the official layout, with `network.encoder.pixel_mean/std` buffers.

    Tensors are detached views of the model's (same device, shared storage); `save_official`
    writes CPU copies to a file that the official code (and `load_model`) reads.
    """
    out: StateDict = {
        PREFIX + "encoder.pixel_mean": model.pixel_mean.detach(),
        PREFIX + "encoder.pixel_std": model.pixel_std.detach(),
    }
    for k, v in model.state_dict().items():
        key = PREFIX + BACKBONE + k[len("backbone."):] if k.startswith("backbone.") else PREFIX + k
        out[key] = v.detach()
    return out


def sidecar_path(weights: Path) -> Path:
    """`pytorch_model.bin` -> `pytorch_model.eomt.json`: where the config of an official file lives."""
    return weights.with_name(weights.name.rsplit(".", 1)[0] + ".eomt.json")


def write_sidecar(config: ModelConfig, weights: Path) -> Path:
    """Write `config` (label space included) beside the official weight file `weights`."""
    return write_atomic(sidecar_path(weights), json_text({"model_config": config.to_dict()}, indent=2, sort_keys=True))


def read_sidecar(weights: Path) -> ModelConfig | None:
    """The config saved beside an official weight file by `save_official`, None without one."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        return ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["model_config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable eomt sidecar config ({type(e).__name__}: {e})") from None
