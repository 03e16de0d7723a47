"""Reading annotated images where they lie: zip archives (also a zip inside a zip) and folders.

A `Source` lists members under a folder and decodes images (by the one rule of `eomt.images`, the
predictor's too) and PNGs; `ZipSource` opens its archive
lazily and once per process, so a dataset can be pickled into (or forked into) DataLoader workers
and each worker reopens its own handle. `SegmentationDataset` is the small base every dataset of
this package shares: label space, `transform`, and the per-image check used by `eomt check`.

Annotations follow their image into the displayed frame (`annotation_orientation`): one drawn on
the stored pixels of an EXIF-rotated image is turned with it; one that fits neither frame is an
error naming the file, never resized.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from eomt.images import exif_orientation, oriented_size, to_rgb
from eomt.structures import Target

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _reason(e: Exception) -> str:
    """A decoder's complaint without the in-memory stream it names (`<_io.BytesIO object at 0x...>`)."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image file (unknown format)"
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)) or type(e).__name__


class DatasetError(ValueError):
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


def annotation_orientation(size: tuple[int, int], frame: ImageFrame, annotation: str, image: str) -> int:
    """The EXIF orientation (`eomt.images.orient`) that puts an annotation of `size` (h, w) on its image.

    Sized like the stored pixels: the image's orientation (tools that ignore EXIF, COCO's among
    them, draw on the stored pixels; with a flip or a square image both frames fit and this one
    wins). Sized like the displayed image only: 1 (already there). Neither: DatasetError naming
    `annotation`, its size and both sizes of `image`.
    """
    size = (int(size[0]), int(size[1]))
    if size == frame.stored:
        return frame.orientation
    if size == frame.size:
        return 1
    shown = f"{frame.size}" if frame.orientation == 1 else \
        f"{frame.size} as displayed, {frame.stored} as stored (EXIF orientation {frame.orientation})"
    raise DatasetError(f"{annotation}: size {size} (H, W) fits neither frame of its image {image}: {shown}")


def turned_note(annotation: str, image: str, orientation: int) -> str:
    """The `check` warning for an annotation that `annotation_orientation` turns with its image."""
    return f"{annotation}: drawn on the stored pixels of {image}, turned with it (EXIF orientation {orientation})"


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, ...) array of ids to (H, W) (torch 'nearest' rule).

    Not for annotations that disagree with their image: those go through `annotation_orientation`.
    """
    h, w = values.shape[:2]
    if (h, w) == tuple(size):
        return values
    rows = np.minimum((np.arange(size[0]) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size[1]) * (w / size[1])).astype(np.int64), w - 1)
    return values[rows[:, None], cols[None, :]]


def target_from_ids(id_map: np.ndarray, ids: np.ndarray, labels: np.ndarray, is_crowd: np.ndarray) -> Target:
    """One mask per id of `ids` found in `id_map` (H, W); ids absent from the map are dropped.

    Masks (N, H, W) bool; with no id left the target is empty: masks (0, H, W).
    """
    ids = np.asarray(ids, dtype=np.int64)
    # numpy, not torch: a (N, H, W) compare is faster here and does not contend for threads in workers
    masks = np.asarray(id_map)[None] == ids[:, None, None]  # (N, H, W)
    keep = masks.any(axis=(1, 2))  # (N,); N = 0 (an all-unlabelled map) gives an empty target
    return Target(
        torch.from_numpy(masks[keep]),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)[keep]),
        torch.from_numpy(np.asarray(is_crowd, dtype=bool)[keep]),
    )


def present_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct non-negative values of a small-range int array (bincount beats unique)."""
    flat = values[values >= 0].ravel()
    return np.flatnonzero(np.bincount(flat)) if flat.size else np.zeros(0, dtype=np.int64)


def target_from_label_map(label_map: np.ndarray) -> Target:
    """One mask per class present in an (H, W) class map; negative values are unlabelled."""
    classes = present_values(label_map)
    return target_from_ids(label_map, classes, classes, np.zeros(len(classes), dtype=bool))


@dataclass
class ItemCheck:
    """Result of checking one image: messages name the files; labels are the segments' classes."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


Transform = Callable[[np.ndarray, Target], Any]


class SegmentationDataset(torch.utils.data.Dataset):
    """Base of every dataset: yields `(image uint8 (H, W, 3), Target)`, then `transform` if set.

    Subclasses implement `__len__`, `load(i)` and `item_name(i)`; indexing problems found while
    reading the annotation files go to `index_errors` / `index_warnings` (reported by `check`).
    """

    def __init__(self, class_names: list[str] | tuple[str, ...], stuff_classes: list[int] | tuple[int, ...],
                 transform: Transform | None = None) -> None:
        self.class_names = tuple(class_names)
        self.stuff_classes = tuple(int(c) for c in stuff_classes)
        self.transform = transform
        self.index_errors: list[str] = []
        self.index_warnings: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        """The untransformed sample: image (H, W, 3) uint8 and its Target at the image size."""
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        """Where image `index` lives, for messages."""
        return f"item {index}"

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        image, target = self.load(index % len(self))
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def check_item(self, index: int, read_images: bool = True) -> ItemCheck:
        """Load image `index` and report what fails; subclasses add format-specific checks."""
        out = ItemCheck()
        try:
            _, target = self.load(index)
        except DatasetError as e:
            out.errors.append(str(e))
            return out
        out.labels = target.labels.numpy()
        if len(target) == 0:
            out.warnings.append(f"{self.item_name(index)}: no segments")
        return out
