"""Image files of the awkward kinds (EXIF-rotated, grayscale, RGBA, 16-bit, palette, broken)."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_rgb16(path: Path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))  # filter 0 rows
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


@pytest.fixture
def odd_images(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the RGB (H, W, 3) uint8 picture a correct reader must return)."""
    rng = np.random.default_rng(0)
    out: dict[str, tuple[Path, np.ndarray]] = {}

    # EXIF orientation 6: stored 40x60 with a red top half; displayed rotated 90 degrees clockwise
    # (60 tall, 40 wide) with the red half on the right.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:20] = (220, 30, 30)
    stored[20:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "exif_rotated.jpg"
    Image.fromarray(stored).save(p, exif=exif, quality=95)
    out["exif"] = (p, np.rot90(stored, k=-1).copy())

    gray = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    p = tmp_path / "gray.png"
    Image.fromarray(gray).save(p)
    out["gray"] = (p, np.repeat(gray[..., None], 3, axis=-1))

    rgba = rng.integers(0, 256, (24, 36, 4), dtype=np.uint8)
    rgba[:, :12, 3] = 0  # fully transparent: white
    rgba[:, 12:24, 3] = 255  # opaque: its own colour
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(p)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    out["rgba"] = (p, np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8))

    gray8 = rng.integers(0, 256, (20, 33), dtype=np.uint16)
    p = tmp_path / "gray16.png"
    Image.fromarray((gray8 * 257).astype(np.uint16)).save(p)  # 16-bit grayscale PNG
    out["gray16"] = (p, np.repeat(gray8.astype(np.uint8)[..., None], 3, axis=-1))

    rgb8 = rng.integers(0, 256, (18, 26, 3), dtype=np.uint16)
    p = tmp_path / "rgb16.png"
    write_png_rgb16(p, rgb8 * 257)
    out["rgb16"] = (p, rgb8.astype(np.uint8))

    pal = Image.fromarray(rng.integers(0, 256, (16, 22, 3), dtype=np.uint8)).quantize(colors=8)
    p = tmp_path / "palette.png"
    pal.save(p)
    out["palette"] = (p, np.asarray(pal.convert("RGB")))
    return out


@pytest.fixture
def broken_images(tmp_path: Path) -> dict[str, Path]:
    """A truncated JPEG, a text file named .png, and an empty file."""
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(img).save(full, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    full.unlink()
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return {"truncated": truncated, "text": text, "empty": empty}
