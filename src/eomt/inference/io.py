"""Reading images as RGB tensors, and writing result files atomically.

Every image, whatever it arrives as (path, PIL image, numpy array, tensor), becomes one RGB tensor
(3, H, W) by the rule of `eomt.images`, the same the datasets read with: EXIF orientation applied,
grayscale / palette / CMYK converted, alpha composited onto white, 16-bit samples scaled to 8 bits.
A file that is missing, not an image, or truncated raises one clear line naming the file.

A file whose header announces more than `max_pixels` pixels (default `DEFAULT_MAX_PIXELS`) is
refused before anything is decoded: a few hundred bytes of PNG can claim gigapixels of one colour
(a decompression bomb), and every pixel costs memory downstream (the RGB image, the
post-processing's per-pixel state, the overlay). The default is Pillow's own refusal limit
(2 x `PIL.Image.MAX_IMAGE_PIXELS` = 178,956,970 pixels, e.g. 16384 x 10922: any camera photo or
scan up to ~180 MP); a caller may lower or raise it (`None`: no limit): Pillow's own check steps
aside, this one decides.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eomt import files
from eomt.errors import MissingFileError
from eomt.files import write_atomic
from eomt.images import ImageReadError, array_to_rgb, to_chw, to_rgb

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's refusal limit (2 x its MAX_IMAGE_PIXELS of 89,478,485)
_PILLOW_LIMIT = threading.Lock()


class ImageTooLargeError(ImageReadError):
    """An image file whose header announces more pixels than the limit allows."""


@contextlib.contextmanager
def _pillow_check_lifted(lift: bool = True) -> Iterator[None]:
    """Pillow's decompression-bomb warning silenced and, with `lift`, its error lifted: our own
    check (`read_image`) decides instead. Pillow reads its limit from its module, so the lift
    holds a lock and restores the value after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if not lift:
            yield
            return
        with _PILLOW_LIMIT:
            pillow, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = pillow


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Tensor:
    """Read an image file as RGB uint8 (3, H, W), EXIF orientation applied.

    Raises ImageTooLargeError, before decoding, when the file announces more than `max_pixels`
    pixels (None: no limit)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such image file")
    try:
        with _pillow_check_lifted():
            img = Image.open(path)  # reads the header only
        with img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{path}: {w} x {h} = {w * h:,} pixels is more than the limit of {max_pixels:,} "
                    "(a decompression bomb?); not decoded. If the image is genuine, raise the limit "
                    "(--max-pixels / max_pixels=)"
                )
            pillow = Image.MAX_IMAGE_PIXELS
            with _pillow_check_lifted(pillow is not None and w * h > pillow):  # some formats check again
                img.load()  # decode now, so that a truncated file fails here and not later
            return pil_to_tensor(img)
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, Image.UnidentifiedImageError):
            reason = "not an image file (unknown format)"
        raise ImageReadError(f"{path}: cannot read image: {reason}") from None


def pil_to_tensor(img: Image.Image) -> Tensor:
    """A PIL image of any mode -> RGB uint8 (3, H, W), by the shared rule of `eomt.images.to_rgb`."""
    return to_chw(to_rgb(img))


def array_to_tensor(a: np.ndarray, name: str = "image") -> Tensor:
    """A numpy image (H, W), (H, W, 1|3|4) -> RGB uint8 (3, H, W).

    uint16 is scaled by 1/257; floats are taken as [0, 1] (as 0..255 if any value exceeds 1);
    alpha is composited onto white (`eomt.images.array_to_rgb`).
    """
    return to_chw(array_to_rgb(a, name))


def load_image(image: ImageInput, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Tensor:
    """Any supported image input -> (3, H, W): uint8, or float in [0, 1] for float tensors.

    Paths are read with `read_image` (files above `max_pixels` pixels are refused); PIL images
    and numpy arrays (H, W[, C]) are converted to RGB; tensors must be (3, H, W) or (H, W)
    (grayscale) and keep their dtype if uint8 or float; float tensors must lie in [0, 1] (else
    `ImageReadError`: a 0..255 float tensor would be read as saturated white).
    """
    if isinstance(image, (str, Path)):
        return read_image(image, max_pixels)
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
        if image.is_floating_point() and image.numel():
            low, high = float(image.min()), float(image.max())
            if not (0.0 <= low and high <= 1.0):  # also catches NaN
                raise ImageReadError(f"{name}: float tensor values span [{low:g}, {high:g}]; expected [0, 1] "
                                     "(divide by 255, or pass a uint8 tensor)")
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


def write_png(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Write a PNG atomically (`eomt.files.write_atomic`): uint8 (H, W) or (H, W, 3), uint16 (H, W),
    or a PIL image."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))  # uint16 (H, W) -> mode "I;16"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_atomic(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as strict JSON atomically (UTF-8, indented; non-finite numbers as null, see
    `eomt.files.write_json`)."""
    return files.write_json(path, obj)
