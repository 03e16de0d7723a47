"""Turn images of any size into network inputs: resize + pad, or square sliding windows.

Both follow the official evaluation code:
- panoptic / instance: the longer side goes to the input size (factor `min(S_h/H, S_w/W)`), zero
  padding at the bottom / right;
- semantic: the shorter side goes to the crop size S (factor `max(S/H, S/W)`), then square crops
  along the long side only, `n = ceil(long/S)` of them, evenly overlapping.

Output sizes are `round(side * factor)` with Python's `round` (as the official code sizes its PIL
resize). The resize itself is torch bilinear with antialiasing, which follows PIL's BILINEAR filter
(to within one grey level on uint8 input) and runs on the images' device.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from eomt.structures import ImageMeta, Windows


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def scaled_size_longest(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) after scaling the longer side to fit `size`: factor `min(S_h/H, S_w/W)`, rounded."""
    sh, sw = _pair(size)
    factor = min(sh / height, sw / width)
    # At least one pixel: a 1 x 1000 strip would otherwise round to zero rows.
    return max(1, round(height * factor)), max(1, round(width * factor))


def scaled_size_shortest(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to `size`: factor `max(S_h/H, S_w/W)`, rounded."""
    sh, sw = _pair(size)
    factor = max(sh / height, sw / width)
    return round(height * factor), round(width * factor)


def window_starts(long_side: int, size: int) -> list[int]:
    """Start offsets of the square crops covering `long_side` pixels with crops of `size`.

    `n = ceil(long/S)`, overlap per crop `(n*S - long) / (n - 1)`, crop j starts at
    `int(j * (S - overlap_per_crop))`; the last crop ends exactly at `long_side`.
    """
    if long_side < size:
        raise ValueError(f"long_side: {long_side} is shorter than the crop size {size}")
    n = math.ceil(long_side / size)
    overlap = n * size - long_side
    per_crop = overlap / (n - 1) if overlap > 0 else 0.0
    return [int(j * (size - per_crop)) for j in range(n)]


def _check_image(image: Tensor, index: int) -> None:
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"images[{index}]: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of one (3, H, W) image to `size` -> float (3, h, w) in [0, 1].

    uint8 input is rounded back to whole grey levels after resizing, as PIL does, so that the
    network sees the same values as the official PIL pipeline; float input is taken to be in [0, 1].
    """
    same = tuple(image.shape[-2:]) == tuple(size)
    if image.dtype == torch.uint8:
        if not same and image.device.type == "cpu":
            # torch's uint8 CPU kernel is PIL's algorithm (identical on most pixels).
            image = F.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
            return image.float() / 255.0
        x = image.float()
        if not same:
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        return x.round_().clamp_(0, 255) / 255.0
    x = image.float()
    if not same:
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp(0.0, 1.0)


def resize_and_pad(
    images: Sequence[Tensor], size: int | Sequence[int]
) -> tuple[Tensor, list[ImageMeta]]:
    """Resize each (3, H, W) image so its longer side fits `size`, zero-pad bottom/right.

    Returns the batch (B, 3, S_h, S_w) float in [0, 1] and one `ImageMeta` per image.
    """
    sh, sw = _pair(size)
    if not images:
        raise ValueError("images: expected at least one image, got an empty list")
    device = images[0].device
    batch = torch.zeros(len(images), 3, sh, sw, device=device)
    metas: list[ImageMeta] = []
    for i, image in enumerate(images):
        _check_image(image, i)
        h, w = int(image.shape[1]), int(image.shape[2])
        nh, nw = scaled_size_longest(h, w, (sh, sw))
        batch[i, :, :nh, :nw] = resize_image(image.to(device), (nh, nw))
        metas.append(ImageMeta((h, w), (nh, nw), (sh, sw)))
    return batch, metas


def long_side_last(x: Tensor, portrait: bool) -> Tensor:
    """A view of x (..., H, W) with the long side of a `portrait` (H > W) image last: (..., W, H);
    x itself otherwise. Applied twice it gives x back, so one code path serves both orientations."""
    return x.transpose(-2, -1) if portrait else x


def sliding_windows(images: Sequence[Tensor], size: int) -> tuple[Tensor, Windows]:
    """Resize each (3, H, W) image so its shorter side is `size`, cut square crops along the long side.

    Returns all crops of all images (N, 3, S, S) float in [0, 1], image after image, and the
    `Windows` bookkeeping needed to stitch predictions back (see `postprocess.semantic`).
    """
    if not images:
        raise ValueError("images: expected at least one image, got an empty list")
    crops: list[Tensor] = []
    offsets: list[tuple[int, int, int]] = []
    metas: list[ImageMeta] = []
    for i, image in enumerate(images):
        _check_image(image, i)
        h, w = int(image.shape[1]), int(image.shape[2])
        nh, nw = scaled_size_shortest(h, w, size)
        resized = resize_image(image, (nh, nw))  # (3, nh, nw), the short side is `size`
        # Crops run along the longer side; the orientation test is on the original size, as in
        # the official stitching code. One path for both: a view with the long side last.
        portrait = h > w
        along = long_side_last(resized, portrait)  # (3, S, long)
        starts = window_starts(along.shape[2], size)
        index = torch.tensor(starts, device=resized.device)[:, None] + torch.arange(
            size, device=resized.device
        )  # (n, S) pixel positions of every crop along the long side
        c = along[:, :size, index].permute(0, 2, 1, 3)  # (3, n, S, S), the long side last
        crops.append(long_side_last(c, portrait).permute(1, 0, 2, 3))  # (n, 3, S, S) as in the image
        offsets.extend((i, s, s + size) for s in starts)
        metas.append(ImageMeta((h, w), (nh, nw), (size, size)))
    return torch.cat(crops), Windows(offsets, metas)
