"""Reading images as RGB tensors, and writing result files atomically.

Every image, whatever it arrives as (path, PIL image, numpy array, tensor), becomes one RGB tensor
(3, H, W): EXIF orientation applied, grayscale / palette / CMYK converted, alpha composited onto
white (transparent pixels often hold arbitrary colours), 16-bit samples scaled to 8 bits.
A file that is missing, not an image, or truncated raises one clear line naming the file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]


class ImageReadError(ValueError):
    """An input image that cannot be read; the message names the file and the reason."""


def read_image(path: str | Path) -> Tensor:
    """Read an image file as RGB uint8 (3, H, W), EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here and not later
            return pil_to_tensor(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, Image.UnidentifiedImageError):
            reason = "not an image file (unknown format)"
        raise ImageReadError(f"{path}: cannot read image: {reason}") from None


def pil_to_tensor(img: Image.Image) -> Tensor:
    """A PIL image of any mode -> RGB uint8 (3, H, W), EXIF orientation applied."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return array_to_tensor(np.asarray(img))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 255):
        # 16-bit samples: 65535 -> 255 (x / 257 is the exact inverse of 8 -> 16 bit expansion).
        return np.clip(np.round(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        # [0, 1] is the convention; values above 1 can only mean a 0..255 float image.
        scale = 255.0 if a.size == 0 or float(np.nanmax(a)) <= 1.0 else 1.0
        return np.clip(np.round(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
    raise ImageReadError(f"{name}: unsupported array dtype {a.dtype} (expected uint8, uint16 or float)")


def array_to_tensor(a: np.ndarray, name: str = "image") -> Tensor:
    """A numpy image (H, W), (H, W, 1|3|4) -> RGB uint8 (3, H, W).

    uint16 is scaled by 1/257; floats are taken as [0, 1] (as 0..255 if any value exceeds 1).
    """
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageReadError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {a.shape}")
    a = _to_uint8(a, name)
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = np.round(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()


def load_image(image: ImageInput, name: str = "image") -> Tensor:
    """Any supported image input -> (3, H, W): uint8, or float in [0, 1] for float tensors.

    Paths are read with `read_image`; PIL images and numpy arrays (H, W[, C]) are converted to
    RGB; tensors must be (3, H, W) or (H, W) (grayscale) and keep their dtype if uint8 or float.
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        return array_to_tensor(image, name)
    if isinstance(image, Tensor):
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ImageReadError(f"{name}: expected a (3, H, W) or (H, W) tensor, got {tuple(image.shape)}")
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if image.dtype == torch.uint8 or image.is_floating_point():
            return image
        raise ImageReadError(f"{name}: expected a uint8 or float tensor, got {image.dtype}")
    raise ImageReadError(
        f"{name}: unsupported input type {type(image).__name__} "
        "(expected a path, PIL image, numpy array or tensor)"
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`.

    A reader never sees a half-written file, even if the process dies mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_png(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Write a PNG atomically: uint8 (H, W) or (H, W, 3), uint16 (H, W), or a PIL image."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))  # uint16 (H, W) -> mode "I;16"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON atomically (UTF-8, indented)."""
    return write_bytes_atomic(path, json.dumps(obj, indent=1).encode("utf-8"))
