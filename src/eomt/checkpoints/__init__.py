"""Checkpoints: load any EoMT checkpoint, save our own format, convert to transformers / official.

- `load_pretrained(source, ...)`: `load_model`, or a preset name -> random weights (what
  `EoMT.from_pretrained`, registered here, calls).
- `load_model(source, ...)`: our safetensors file, our Lightning `.ckpt`, an official release
  (`pytorch_model.bin` / `.ckpt`), a transformers folder, or a hub id -> `EoMT`.
- `save_model(model, path, extra)`: one safetensors file carrying the full `ModelConfig`.
- `save_transformers(model, folder)`: a folder `EomtForUniversalSegmentation.from_pretrained` reads.
- `to_official_state_dict(model)` / `save_official(model, path)`: the official `network.*` layout.
- `init_from(network, source)`: start training from an EoMT checkpoint (another label space: all
  but the class head) or DINOv2 backbone weights, recognised from the file; `InitReport` says what.
- `load_dinov2_backbone(model, source)`: DINOv2 weights (timm or torch-hub) into the backbone alone.
- `load_video_model(source)` / `save_video_model(model, path)` / `save_video_transformers(model, folder)`:
  VidEoMT (ours, transformers `VideomtForUniversalSegmentation`, the official release, or any image
  EoMT checkpoint with a new propagation layer); see `checkpoints.videomt`.
"""

from __future__ import annotations

from pathlib import Path

from eomt.checkpoints.dinov2 import load_dinov2_backbone, resample_patch_embed
from eomt.checkpoints.fit import BackboneReport
from eomt.checkpoints.fit import FitReport
from eomt.checkpoints.initialise import InitReport, init_from
from eomt.checkpoints.hf import save_transformers
from eomt.checkpoints.io import CheckpointError, save_torch
from eomt.checkpoints.loader import load_model
from eomt.checkpoints.native import read_metadata, save_model
from eomt.checkpoints.official import to_official_state_dict
from eomt.checkpoints.pretrained import load_pretrained
from eomt.checkpoints.videomt import load_video_model, save_video_model, save_video_transformers
from eomt.models.eomt import EoMT, register_pretrained_loader

register_pretrained_loader(load_pretrained)  # EoMT.from_pretrained: the dependency points here


def save_official(model: EoMT, path: str | Path) -> Path:
    """Write `to_official_state_dict(model)` with `torch.save`, atomically (e.g. pytorch_model.bin),
    and the model's config (class names, stuff classes, ids) beside it (`official.sidecar_path`)."""
    from eomt.checkpoints.official import write_sidecar

    state = {k: v.to("cpu", copy=True) for k, v in to_official_state_dict(model).items()}
    written = save_torch(state, Path(path))
    write_sidecar(model.config, written)
    return written


__all__ = [
    "BackboneReport",
    "CheckpointError",
    "FitReport",
    "InitReport",
    "init_from",
    "load_dinov2_backbone",
    "load_model",
    "load_pretrained",
    "load_video_model",
    "read_metadata",
    "resample_patch_embed",
    "save_model",
    "save_official",
    "save_transformers",
    "save_video_model",
    "save_video_transformers",
    "to_official_state_dict",
]
