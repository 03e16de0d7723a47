"""The EoMT network: the model (`eomt.py`), its backbones, the upscale block, the CPU fast paths."""

from eomt.models.eomt import EoMT, EoMTOutput, register_pretrained_loader
from eomt.models.unwrap import unwrap_compiled

__all__ = ["EoMT", "EoMTOutput", "register_pretrained_loader", "unwrap_compiled"]
