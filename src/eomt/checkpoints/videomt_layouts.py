"""Key layouts of VidEoMT checkpoints other than ours, converted to ours (`eomt.checkpoints.videomt`):
our video training's Lightning `.ckpt` and the official (tue-mps/videomt, detectron2) release files.

Ours is the image EoMT's keys plus `query_updater.weight` / `.bias`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eomt.checkpoints.io import StateDict

UPDATER = "query_updater."
LIGHTNING = "network."  # our Lightning modules keep the network as `network`
OFFICIAL = "backbone."  # the detectron2 model's prefix for the whole network
OFFICIAL_VIT = "encoder.backbone."  # then the ViT's, inside it
OFFICIAL_DROPPED = ("backbone.rope_embeddings.", "backbone.patch_embed.mask_token")  # recomputed / unused


def from_lightning_video(sd: StateDict) -> StateDict:
    """Our video training's keys -> ours: `network.eomt.X` -> `X`, `network.query_updater.*` -> `query_updater.*`."""
    out: StateDict = {}
    for k, value in ((clean_key(key), v) for key, v in sd.items()):  # the loss's keys are left out
        if k.startswith((LIGHTNING + "eomt.", LIGHTNING + UPDATER)):
            out[k[len(LIGHTNING):].removeprefix("eomt.")] = value
    return out


def is_lightning_video(path: Path) -> bool:
    """True for a Lightning `.ckpt` of our video training (`network.query_updater.*` keys), read
    memory-mapped and weights-only; False for anything else."""
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # not a weights-only torch file: the loaders name the problem
        return False
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    return isinstance(sd, dict) and any(clean_key(str(k)).startswith(LIGHTNING + UPDATER) for k in sd)


def from_official_video(sd: StateDict) -> StateDict:
    """Official VidEoMT keys -> ours: `backbone.encoder.backbone.X` -> `backbone.X`, `backbone.Y` -> `Y`;
    `criterion.*` and other keys outside the network, RoPE buffers and the mask token are dropped."""
    out: StateDict = {}
    for key, value in sd.items():
        k = clean_key(key)
        if not k.startswith(OFFICIAL):
            continue  # criterion.empty_weight: the loss weight, rebuilt from the config
        k = k[len(OFFICIAL):]
        k = "backbone." + k[len(OFFICIAL_VIT):] if k.startswith(OFFICIAL_VIT) else k
        if not k.startswith(OFFICIAL_DROPPED):
            out[k] = value
    return out


def clean_key(key: str) -> str:
    """A key without the wrappers' prefixes."""
    # `torch.compile` wraps modules in `_orig_mod` (the official benchmark compiles the backbone); DDP in `module.`.
    return key.replace("_orig_mod.", "").removeprefix("module.")
