"""Reading images as RGB tensors, and writing result files atomically.

Every image, whatever it arrives as (path, PIL image, numpy array, tensor), becomes one RGB tensor
(3, H, W) by the rule of `eomt.images`, the same the datasets read with: EXIF orientation applied,
grayscale / palette / CMYK converted, alpha composited onto white, 16-bit samples scaled to 8 bits.
A file that is missing, not an image, or truncated raises one clear line naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eomt import files
from eomt.files import write_atomic
from eomt.images import ImageReadError, array_to_rgb, to_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]


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
    """A PIL image of any mode -> RGB uint8 (3, H, W), by the shared rule of `eomt.images.to_rgb`."""
    return _chw(to_rgb(img))


def array_to_tensor(a: np.ndarray, name: str = "image") -> Tensor:
    """A numpy image (H, W), (H, W, 1|3|4) -> RGB uint8 (3, H, W).

    uint16 is scaled by 1/257; floats are taken as [0, 1] (as 0..255 if any value exceeds 1);
    alpha is composited onto white (`eomt.images.array_to_rgb`).
    """
    return _chw(array_to_rgb(a, name))


def _chw(rgb: np.ndarray) -> Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


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
    """Write `data` to `path` atomically (`eomt.files.write_atomic`): a reader never sees a
    half-written file, even if the process dies mid-write; the umask applies."""
    return write_atomic(path, data)


def write_png(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Write a PNG atomically: uint8 (H, W) or (H, W, 3), uint16 (H, W), or a PIL image."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))  # uint16 (H, W) -> mode "I;16"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as strict JSON atomically (UTF-8, indented; non-finite numbers as null, see
    `eomt.files.write_json`)."""
    return files.write_json(path, obj)
