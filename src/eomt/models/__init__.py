"""The EoMT network: the model (`eomt.py`), its backbones, the upscale block, the CPU fast paths, and
the video model (`video.py`: VidEoMT, query propagation)."""

from eomt.models.eomt import EoMT, EoMTOutput, register_pretrained_loader
from eomt.models.unwrap import unwrap_compiled
from eomt.models.video import FrameOutput, VideoOutput, VideoState, VidEoMT

__all__ = [
    "EoMT", "EoMTOutput", "FrameOutput", "VidEoMT", "VideoOutput", "VideoState", "register_pretrained_loader",
    "unwrap_compiled",
]
