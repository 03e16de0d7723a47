"""Semantic segmentation from label PNGs: images paired with single-channel PNGs of raw values.

A lookup table turns each raw value into a class id, `UNLABELLED` (the pixel is dropped) or
`INVALID` (an error naming the file). `SemanticPngDataset` is the reader behind ADE20K and
Cityscapes semantic (`eomt.data.ade20k`, `eomt.data.cityscapes`) and users' semantic folders
(`eomt.data.user.SemanticFolder`), which differ only in how they pair files and fill the table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from eomt.data.base import (
    ItemCheck, SegmentationDataset, Transform, annotation_orientation, present_values, target_from_label_map,
    turned_note,
)
from eomt.data.sources import DatasetError, ImageFrame, Source
from eomt.images import orient
from eomt.structures import Target

UNLABELLED, INVALID = -1, -2  # lookup-table values: dropped pixel / value outside the label space


class SemanticPngDataset(SegmentationDataset):
    """Images with label PNGs; `lut[raw value]` is a class id, UNLABELLED or INVALID.

    pairs: (image member, label member) in order. skip: None, "constant" (drop images whose label PNG
    holds one value: the official EoMT rule) or "unlabelled" (drop images without a labelled pixel);
    both read every label PNG once at construction.
    """

    def __init__(self, images: Source, labels: Source, pairs: Sequence[tuple[str, str]], lut: np.ndarray,
                 class_names: Sequence[str], stuff_classes: Sequence[int] = (), transform: Transform | None = None,
                 skip: str | None = None) -> None:
        super().__init__(class_names, stuff_classes, transform)
        if skip not in (None, "constant", "unlabelled"):
            raise ValueError(f"skip={skip!r}; expected None, 'constant' or 'unlabelled'")
        self.images, self.labels = images, labels
        self.lut = np.asarray(lut, dtype=np.int64)
        self.pairs = list(pairs)
        if skip is not None:
            self.pairs = [p for p in self.pairs if not self._is_empty(p[1], skip)]

    def _is_empty(self, member: str, rule: str) -> bool:
        try:
            raw = self.labels.read_png(member)
            if rule == "constant":
                return bool(raw.min() == raw.max())
            return not (self._map(raw, member) >= 0).any()
        except DatasetError:
            return False  # kept, so that loading or `check` reports the file with the others

    def _map(self, raw: np.ndarray, member: str) -> np.ndarray:
        """Raw (H, W) label values -> (H, W) int64 through the lookup table."""
        if raw.ndim != 2:
            raise DatasetError(f"{self.labels.where(member)}: expected a single-channel label PNG, "
                               f"found shape {raw.shape}")
        if raw.dtype == np.uint8 and len(self.lut) >= 256:
            return self.lut[raw]  # every value is inside the table
        raw = raw.astype(np.int64)
        inside = (raw >= 0) & (raw < len(self.lut))
        return np.where(inside, self.lut[np.clip(raw, 0, len(self.lut) - 1)], INVALID)

    def _invalid_values(self, raw: np.ndarray, mapped: np.ndarray) -> list[int]:
        return np.unique(raw[mapped == INVALID]).tolist()

    def __len__(self) -> int:
        return len(self.pairs)

    def item_name(self, index: int) -> str:
        return self.images.where(self.pairs[index][0])

    def _orientation(self, index: int, raw: np.ndarray, frame: ImageFrame) -> int:
        image_member, label_member = self.pairs[index]
        return annotation_orientation(raw.shape[:2], frame, self.labels.where(label_member),
                                      self.images.where(image_member))

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        """Image (H, W, 3) uint8 and one mask per labelled class; an all-unlabelled PNG gives 0 masks."""
        image_member, label_member = self.pairs[index]
        image, frame = self.images.read_image_framed(image_member)
        raw = self.labels.read_png(label_member)
        mapped = self._map(raw, label_member)
        bad = self._invalid_values(raw, mapped)
        if bad:
            raise DatasetError(f"{self.labels.where(label_member)}: label values {bad[:10]} outside the "
                               f"{self.num_classes} classes (and not the ignore value)")
        return image, target_from_label_map(orient(mapped, self._orientation(index, raw, frame)))

    def check_item(self, index: int, read_images: bool = True) -> ItemCheck:
        """Image readable, label PNG single-channel with known values, on one of the image's frames."""
        image_member, label_member = self.pairs[index]
        out, label_name = ItemCheck(), self.labels.where(label_member)
        try:
            frame = self.images.image_frame(image_member, decode=read_images)
            raw = self.labels.read_png(label_member)
            mapped = self._map(raw, label_member)
            orientation = self._orientation(index, raw, frame)
        except DatasetError as e:
            out.errors.append(str(e))
            return out
        bad = self._invalid_values(raw, mapped)
        if bad:
            out.errors.append(f"{label_name}: label values {bad[:10]} outside the class list "
                              f"({self.num_classes} classes) and not the ignore value")
        if orientation != 1:
            out.warnings.append(turned_note(label_name, self.item_name(index), orientation))
        out.labels = present_values(mapped)
        if out.labels.size == 0:
            out.warnings.append(f"{label_name}: no labelled pixel")
        return out
