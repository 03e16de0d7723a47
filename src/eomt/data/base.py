"""The dataset base every reader shares: items, targets, the per-image checks.

`SegmentationDataset` holds the label space and `transform` and yields `(image uint8 (H, W, 3),
Target)`; subclasses say how to load item i and what to check in it (`check_item`, used by
`eomt data check`). Targets are built from id maps (`target_from_ids`) or class maps
(`target_from_label_map`).

Annotations follow their image into the displayed frame (`annotation_orientation`): one drawn on
the stored pixels of an EXIF-rotated image is turned with it; one that fits neither frame is an
error naming the file, never resized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from eomt.data.sources import DatasetError, ImageFrame
from eomt.structures import Target


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
