"""Synthetic benchmark images whose content matters to the measurement (token merging).

Token merging saves work where an image is uniform, so its FLOPs depend on the picture: a noise
image merges nothing, a blank one everything. `street_scene` draws a street-like layout as
Cityscapes images have it: a large sky, a large road, and clutter between them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def street_scene(height: int, width: int, seed: int = 0) -> Tensor:
    """A street-like RGB image (3, H, W) float in [0, 1]: sky (top ~30 %, a soft gradient), road
    (bottom ~35 %, grey with lane markings), and between them buildings with windows, cars, poles
    and trees; sensor-like noise (std 0.01) everywhere. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    h, w = height, width
    img = torch.empty(3, h, w)
    rows = torch.linspace(0, 1, h)[:, None]  # (H, 1)
    sky_end, road_start = int(0.30 * h), int(0.65 * h)
    sky = torch.tensor([0.55, 0.70, 0.90])[:, None, None] + 0.05 * rows[None, :sky_end]
    img[:, :sky_end] = sky.expand(-1, -1, w)
    img[:, sky_end:road_start] = torch.tensor([0.45, 0.42, 0.40])[:, None, None]  # pavement / walls
    img[:, road_start:] = torch.tensor([0.33, 0.33, 0.35])[:, None, None]  # asphalt

    def box(y0: float, y1: float, x0: float, x1: float, colour: Tensor) -> None:
        img[:, int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = colour[:, None, None]

    x = 0.0
    while x < 1.0:  # buildings of random width and height, each with a grid of windows
        bw = 0.08 + 0.10 * float(torch.rand(1, generator=g))
        top = 0.12 + 0.15 * float(torch.rand(1, generator=g))
        wall = 0.25 + 0.5 * torch.rand(3, generator=g)
        box(top, 0.62, x, x + bw, wall)
        for wy in torch.arange(top + 0.03, 0.58, 0.06).tolist():
            for wx in torch.arange(x + 0.01, x + bw - 0.02, 0.03).tolist():
                box(wy, wy + 0.025, wx, wx + 0.015, wall * 0.4)
        x += bw
    for i in range(6):  # cars on the road
        cx = float(torch.rand(1, generator=g))
        box(0.58, 0.70, cx, cx + 0.08, torch.rand(3, generator=g) * 0.6)
        box(0.68, 0.72, cx + 0.01, cx + 0.025, torch.zeros(3))
        box(0.68, 0.72, cx + 0.055, cx + 0.07, torch.zeros(3))
    for i in range(4):  # poles and trees
        px = float(torch.rand(1, generator=g))
        box(0.25, 0.66, px, px + 0.006, torch.tensor([0.2, 0.2, 0.2]))
        tx = float(torch.rand(1, generator=g))
        leaves = torch.tensor([0.2, 0.45, 0.15])[:, None, None] + 0.15 * torch.rand(3, int(0.15 * h), int(0.07 * w), generator=g)
        img[:, int(0.2 * h) : int(0.2 * h) + leaves.shape[1], int(tx * w) : int(tx * w) + leaves.shape[2]] = leaves[
            :, :, : w - int(tx * w)]
    for lx in torch.arange(0.05, 1.0, 0.12).tolist():  # dashed lane markings
        box(0.82, 0.835, lx, lx + 0.05, torch.tensor([0.9, 0.9, 0.9]))
    img += 0.01 * torch.randn(3, h, w, generator=g)
    return img.clamp(0, 1)
