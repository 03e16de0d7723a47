"""The colour functions of the photometric distortion, on images (..., 3, H, W).

Images are uint8 in [0, 255] or float in [0, 1]. The functions follow the definitions of
torchvision's `transforms.v2.functional` (blend, then clamp and truncate back to uint8); the
distortion's ranges are the official transforms' (detectron2 / MMSeg style). `TrainTransform`
(`eomt.data.transforms`) draws the factors and applies them in the official order.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Photometric distortion constants (detectron2 / MMSeg style, as in the official transforms).
MAX_BRIGHTNESS_DELTA = 32 / 255
MAX_CONTRAST_DELTA = 0.5
MAX_SATURATION_DELTA = 0.5
MAX_HUE_DELTA = 18 / 360


def _blend(image: Tensor, other: Tensor, ratio: float) -> Tensor:
    """ratio * image + (1 - ratio) * other, clamped; integer images are truncated back."""
    bound = 1.0 if image.is_floating_point() else 255.0
    out = (image * ratio + other * (1.0 - ratio)).clamp_(0, bound)
    return out if image.is_floating_point() else out.to(image.dtype)


def _grayscale(image: Tensor) -> Tensor:
    """Luma (..., 1, H, W) float, ITU-R 601-2 weights; floored for integer images."""
    r, g, b = image.float().unbind(-3)
    gray = (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)
    return gray if image.is_floating_point() else gray.floor_()


def adjust_brightness(image: Tensor, factor: float) -> Tensor:
    """Scale intensities by `factor` (a blend with black, whose term vanishes)."""
    bound = 1.0 if image.is_floating_point() else 255.0
    out = (image * factor).clamp_(0, bound)
    return out if image.is_floating_point() else out.to(image.dtype)


def adjust_contrast(image: Tensor, factor: float) -> Tensor:
    """Blend with the mean of the grayscale image: factor 0 = flat grey, 1 = unchanged."""
    mean = _grayscale(image).mean(dim=(-3, -2, -1), keepdim=True)  # (..., 1, 1, 1)
    return _blend(image, mean, factor)


def adjust_saturation(image: Tensor, factor: float) -> Tensor:
    """Blend with the grayscale image: factor 0 = grayscale, 1 = unchanged."""
    return _blend(image, _grayscale(image), factor)


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """RGB float in [0, 1], (..., 3, H, W) -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = rgb.unbind(-3)
    maxc, minc = rgb.amax(-3), rgb.amin(-3)
    delta = maxc - minc
    gray = delta == 0
    s = delta / torch.where(gray, torch.ones_like(maxc), maxc)
    d = torch.where(gray, torch.ones_like(delta), delta)
    # Which channel holds the maximum decides the sector (red first, then green, then blue).
    h = torch.where(
        maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d)
    )
    h = torch.where(gray, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0).remainder(1.0)
    return torch.stack((h, s, maxc), -3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV in [0, 1], (..., 3, H, W) -> RGB float in [0, 1]."""
    h, s, v = hsv.unbind(-3)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    sector = sector.long().remainder(6)
    # The (r, g, b) of each of the 6 sectors, picked per pixel.
    table = torch.stack(
        [
            torch.stack(c, -3)
            for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
        ],
        0,
    )  # (6, ..., 3, H, W)
    index = sector.unsqueeze(-3).expand_as(hsv).unsqueeze(0)  # (1, ..., 3, H, W)
    return table.gather(0, index).squeeze(0)


def adjust_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]) in HSV space."""
    if shift == 0.0:
        return image
    rgb = image if image.is_floating_point() else image.float().mul_(1.0 / 255)
    hsv = rgb_to_hsv(rgb)
    hsv = torch.stack((hsv[..., 0, :, :].add(shift).remainder(1.0), hsv[..., 1, :, :],
                       hsv[..., 2, :, :]), -3)
    out = hsv_to_rgb(hsv)
    # Integer output: scale by 256 - eps and truncate, so that 1.0 maps to 255 and k/255 to k.
    return out if image.is_floating_point() else out.mul_(256.0 - 1e-3).to(image.dtype)
