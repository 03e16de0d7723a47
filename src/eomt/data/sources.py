"""Where dataset files lie: a folder, a zip archive, or a zip stored inside a zip.

A `Source` lists members under a folder and decodes images (by the one rule of `eomt.images`, the
predictor's too) and PNGs; `ZipSource` opens its archive lazily and once per process, so a dataset
can be pickled into (or forked into) DataLoader workers and each worker reopens its own handle.
Every problem is a `DatasetError` whose message names the file.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from eomt.errors import EomtError
from eomt.images import exif_orientation, oriented_size, to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _reason(e: Exception) -> str:
    """A decoder's complaint without the in-memory stream it names (`<_io.BytesIO object at 0x...>`)."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image file (unknown format)"
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)) or type(e).__name__


class DatasetError(EomtError, ValueError):
    """Bad dataset input (missing or unreadable file, unknown id); the message names the file."""


@dataclass(frozen=True)
class ImageFrame:
    """Where an image's pixels lie: `stored` (H, W) as in the file, shown after EXIF `orientation`."""

    stored: tuple[int, int]
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) as displayed, the size of the array `read_image` returns."""
        return oriented_size(self.stored, self.orientation)


def natural_key(member: str) -> tuple[float, str]:
    """Sort key: the first integer in the file's base name, then the full name (ties, no digits)."""
    match = re.search(r"\d+", PurePosixPath(member).name)
    return (int(match.group()) if match else float("inf"), member)


def _folder(folder: str) -> str:
    """'./train2017/' -> 'train2017'; '' or '.' -> '' (the root)."""
    parts = [p for p in PurePosixPath(folder.replace("\\", "/")).parts if p not in (".", "/")]
    return "/".join(parts)


def join(folder: str, name: str) -> str:
    """Member path `folder/name` with the folder normalised ('' means the root)."""
    folder = _folder(folder)
    return f"{folder}/{name}" if folder else name


class Source:
    """A tree of files addressed by posix member paths; subclasses provide `read_bytes`/`exists`."""

    name: str

    def read_bytes(self, member: str) -> bytes:
        raise NotImplementedError

    def exists(self, member: str) -> bool:
        raise NotImplementedError

    def members(self) -> list[str]:
        """Every file member (no folders)."""
        raise NotImplementedError

    def list(self, folder: str, suffix: str | tuple[str, ...]) -> list[str]:
        """Members under `folder` (recursively) ending with `suffix`, sorted by `natural_key`."""
        prefix = _folder(folder)
        prefix = prefix + "/" if prefix else ""
        suffixes = tuple(s.lower() for s in ((suffix,) if isinstance(suffix, str) else suffix))
        found = [m for m in self.members() if m.startswith(prefix) and m.lower().endswith(suffixes)]
        return sorted(found, key=natural_key)

    def where(self, member: str) -> str:
        """Human-readable location of a member for error messages."""
        return f"{self.name}: {member}"

    def read_json(self, member: str) -> Any:
        """Parsed JSON member."""
        try:
            return json.loads(self.read_bytes(member))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.where(member)}: invalid JSON ({e})") from None

    def _open_image(self, member: str) -> Image.Image:
        data = self.read_bytes(member)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()  # decode now, so a truncated file fails here and not later
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{self.where(member)}: unreadable image ({_reason(e)})") from None
        return img

    def read_image(self, member: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB as displayed, decoded like the predictor's (`eomt.images.to_rgb`)."""
        return self.read_image_framed(member)[0]

    def read_image_framed(self, member: str) -> tuple[np.ndarray, ImageFrame]:
        """(H, W, 3) uint8 RGB as `read_image`, and the frame its annotations are checked against."""
        img = self._open_image(member)
        frame = self._frame(img, member)  # first: a bad EXIF block is a DatasetError naming the file
        return to_rgb(img), frame

    def _frame(self, img: Image.Image, member: str) -> ImageFrame:
        try:
            return ImageFrame((img.height, img.width), exif_orientation(img))
        except (OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{self.where(member)}: unreadable EXIF data ({e})") from None

    def read_png(self, member: str) -> np.ndarray:
        """Raw stored values: (H, W) for L/P/I;16 (palette indices, not colours), (H, W, C) else."""
        return np.asarray(self._open_image(member))

    def image_frame(self, member: str, decode: bool = False) -> ImageFrame:
        """Stored size and EXIF orientation from the header; `decode` also decodes the pixels
        (so a truncated file is an error here). Raises DatasetError naming the file."""
        if decode:
            return self._frame(self._open_image(member), member)
        try:
            with Image.open(io.BytesIO(self.read_bytes(member))) as img:
                return self._frame(img, member)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{self.where(member)}: unreadable image ({_reason(e)})") from None

    def image_size(self, member: str) -> tuple[int, int]:
        """(H, W) after EXIF orientation, from the header only (the file is not decoded)."""
        return self.image_frame(member).size


class FolderSource(Source):
    """Files of a plain folder; members are posix paths relative to it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.name = str(self.root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: folder not found")
        self._members: list[str] | None = None

    def members(self) -> list[str]:
        if self._members is None:
            self._members = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]
        return self._members

    def exists(self, member: str) -> bool:
        return (self.root / member).is_file()

    def where(self, member: str) -> str:
        return str(self.root / member)

    def read_bytes(self, member: str) -> bytes:
        try:
            return (self.root / member).read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{self.root / member}: file not found") from None
        except OSError as e:
            raise DatasetError(f"{self.root / member}: cannot read ({e})") from None


class ZipSource(Source):
    """Members of a zip archive, or of a zip stored inside it (`inner`, read into memory).

    The handle is opened on first use and cached per process: a forked DataLoader worker sees a
    different pid and reopens, and pickling (spawned workers) drops the handle.
    """

    def __init__(self, path: str | os.PathLike[str], inner: str | None = None) -> None:
        self.path = Path(path)
        self.inner = _folder(inner) if inner else None
        self.name = f"{self.path}!{self.inner}" if self.inner else str(self.path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: archive not found")
        self._handle: zipfile.ZipFile | None = None
        self._pid: int | None = None
        zf = self._zip()
        self._names = [i.filename for i in zf.infolist() if not i.is_dir()]
        self._name_set = frozenset(self._names)
        if self.inner is not None:
            self.close()  # frees the in-memory copy (about 1 GB for COCO train) until a read needs it

    def _zip(self) -> zipfile.ZipFile:
        if self._handle is None or self._pid != os.getpid():
            try:
                outer = zipfile.ZipFile(self.path)
                if self.inner is not None:
                    try:
                        data = outer.read(self.inner)
                    except KeyError:
                        raise DatasetError(f"{self.path}: member {self.inner} not found") from None
                    finally:
                        outer.close()
                    outer = zipfile.ZipFile(io.BytesIO(data))
            except zipfile.BadZipFile as e:
                raise DatasetError(f"{self.name}: not a valid zip archive ({e})") from None
            self._handle, self._pid = outer, os.getpid()
        return self._handle

    def members(self) -> list[str]:
        return self._names

    def exists(self, member: str) -> bool:
        return member in self._name_set

    def read_bytes(self, member: str) -> bytes:
        try:
            return self._zip().read(member)
        except KeyError:
            raise DatasetError(f"{self.where(member)}: member not found in archive") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"{self.where(member)}: cannot read ({e})") from None

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = state["_pid"] = None  # workers reopen their own handle
        return state


def open_source(path: str | os.PathLike[str]) -> Source:
    """A folder, or a .zip file read in place."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".zip":
        return ZipSource(p)
    return FolderSource(p)


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """Parsed JSON file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from None
