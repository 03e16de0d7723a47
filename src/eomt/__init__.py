"""eomt: the Encoder-only Mask Transformer for panoptic, instance and semantic segmentation."""

from __future__ import annotations

from typing import Any

from eomt.config import ModelConfig, preset
from eomt.models import EoMT, EoMTOutput, register_pretrained_loader

__version__ = "0.1.0"


def _load_pretrained(source: Any, **kwargs: Any) -> EoMT:
    """`EoMT.from_pretrained` until `eomt.checkpoints` is imported (which registers its own loader)."""
    from eomt.checkpoints import load_pretrained

    return load_pretrained(source, **kwargs)


# EoMT.from_pretrained calls the checkpoint loader; `eomt.models` imports nothing from checkpoints.
register_pretrained_loader(_load_pretrained)

_LAZY = {
    "Predictor": "eomt.inference.predictor",
    "load_model": "eomt.checkpoints",
    "save_model": "eomt.checkpoints",
    "save_transformers": "eomt.checkpoints",
    "VidEoMT": "eomt.models.video",
    "VideoPredictor": "eomt.inference.video",
    "load_video_model": "eomt.checkpoints",
    "save_video_model": "eomt.checkpoints",
    "TokenMerging": "eomt.models.merging",
}
# Subpackages reachable as attributes after `import eomt` (e.g. `eomt.checkpoints.save_official`).
_SUBMODULES = ("checkpoints", "data", "evaluation", "export", "inference", "training")


def __getattr__(name: str) -> Any:
    # Heavier modules load on first use so that `import eomt` stays fast.
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"eomt.{name}")
    raise AttributeError(f"module 'eomt' has no attribute {name!r}")


__all__ = ["EoMT", "EoMTOutput", "ModelConfig", "preset", "__version__", *_LAZY]
