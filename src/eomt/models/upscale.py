"""The 2x upscale block of EoMT's mask module, as the paper draws it.

`ScaleBlock`: ConvTranspose 2x2/2 -> GELU -> depthwise 3x3 (no bias) -> LayerNorm2d, on
channels-last maps (B, H, W, C) -> (B, 2H, 2W, C). Two of them take the patch features of a
patch-16 ViT from H/16 to H/4. Parameter names follow the official layout (`upscale.i.conv1`,
`upscale.i.conv2`, `upscale.i.norm`). This is the reference; `eomt.models.fast.upscale` computes
the same in matmul form, and in bands for CPU inference.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-last map (B, H, W, C) (the layout `upscale.i.norm`)."""


class ScaleBlock(nn.Module):
    """2x upscale: ConvTranspose 2x2/2 -> GELU -> depthwise 3x3 (no bias) -> LayerNorm2d.

    Channels-last in and out: (B, H, W, C) -> (B, 2H, 2W, C).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W), a channels-last view
        x = F.gelu(self.conv1(x))  # (B, C, 2H, 2W)
        x = self.conv2(x)  # depthwise, zero padding
        return self.norm(x.permute(0, 2, 3, 1))  # (B, 2H, 2W, C)
