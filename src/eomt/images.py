"""Decoding pictures to RGB, the one rule every reader follows (datasets, predictor, CLI).

A PIL image of any mode, or a numpy array, becomes (H, W, 3) uint8 RGB: EXIF orientation applied,
grayscale / palette / CMYK converted, alpha composited onto white (transparent pixels often hold
arbitrary colours), 16-bit samples scaled by 1/257 (the exact inverse of 8 -> 16 bit expansion).
`orient` applies an EXIF orientation to any (H, W, ...) array, so that annotations drawn on the
stored pixels can follow their image into the displayed frame.

Also the other image encodings every stage shares: `to_chw` (HWC array -> the (3, H, W) tensor the
model takes) and the COCO panoptic colour rule `id = R + 256 G + 256^2 B` (`id_to_rgb`, `rgb_to_id`),
used by the dataset readers and writers and by the result writers alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from eomt.errors import EomtError

EXIF_ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn by 90 degrees (H and W swap)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageReadError(EomtError, ValueError):
    """An input image that cannot be read; the message names the file and the reason."""


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of a PIL image; 1 (as stored) when absent or invalid."""
    value = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(H, W) of a picture stored at `size` (H, W) once `orientation` is applied."""
    return (size[1], size[0]) if orientation in SWAPPING_ORIENTATIONS else (size[0], size[1])


def orient(values: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, ...) array, as the image is shown (a view, not a copy).

    The same transposes `PIL.ImageOps.exif_transpose` makes: 2 mirror, 3 turn 180 degrees, 4 flip,
    5 transpose, 6 turn 90 degrees clockwise, 7 transverse, 8 turn 90 degrees counter-clockwise.
    """
    if orientation == 2:
        return values[:, ::-1]
    if orientation == 3:
        return values[::-1, ::-1]
    if orientation == 4:
        return values[::-1]
    if orientation == 5:
        return values.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(values, k=-1)
    if orientation == 7:
        return np.rot90(values, k=2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(values, k=1)
    return values


def to_uint8(a: np.ndarray, name: str = "image") -> np.ndarray:
    """Samples of any supported dtype -> uint8 (same shape).

    uint16 (and integers above 255) are scaled by 1/257; floats are taken as [0, 1] (as 0..255 if
    any value exceeds 1); bool is 0 / 255. Raises ImageReadError naming `name` for other dtypes.
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # also big-endian uint16 ('>u2')
        return np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 255:
        return np.clip(np.round(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        # [0, 1] is the convention; values above 1 can only mean a 0..255 float image.
        scale = 255.0 if a.size == 0 or float(np.nanmax(a)) <= 1.0 else 1.0
        return np.clip(np.round(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
    raise ImageReadError(f"{name}: unsupported array dtype {a.dtype} (expected uint8, uint16 or float)")


def array_to_rgb(a: np.ndarray, name: str = "image") -> np.ndarray:
    """A numpy image (H, W) or (H, W, 1|3|4) -> (H, W, 3) uint8 RGB, alpha composited onto white.

    Samples convert as `to_uint8`. Raises ImageReadError naming `name` for other shapes.
    """
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageReadError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {a.shape}")
    a = to_uint8(a, name)
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = np.round(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> (H, W, 3) uint8 RGB as displayed (EXIF orientation applied)."""
    orientation = exif_orientation(img)
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        rgb = array_to_rgb(np.asarray(img))
    else:
        if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        rgb = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8, read-only (PIL's buffer)
    # A writable array of its own, so that callers (and torch.from_numpy) may keep and change it.
    return np.array(orient(rgb, orientation), order="C", copy=True)


def to_chw(image: Any) -> torch.Tensor:
    """uint8 HWC numpy or CHW tensor -> uint8 (3, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return image if image.shape[0] == 3 else image.permute(2, 0, 1).contiguous()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def id_to_rgb(ids: torch.Tensor | np.ndarray) -> np.ndarray:
    """Segment ids (H, W) -> COCO panoptic colours (H, W, 3) uint8, `id = R + 256 G + 256^2 B`.

    The rule of the COCO panoptic format (panopticapi's `id2rgb`); ids must lie in [0, 256^3).
    """
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    # The three low bytes of each id, read in place from little-endian int64s (no int64 copies).
    ids = np.ascontiguousarray(ids, dtype=np.dtype("<i8"))
    return np.ascontiguousarray(ids.view(np.uint8).reshape(*ids.shape, 8)[..., :3])


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic colours (H, W, 3) -> segment ids (H, W) int64, `id = R + 256 G + 256^2 B`.

    Channels past the third (an alpha) are ignored; the inverse of `id_to_rgb`.
    """
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
