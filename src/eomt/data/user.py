"""Users' own data with no code: COCO instance JSON, COCO panoptic JSON + PNGs, semantic PNG folders.

Class names come from the files: the JSON `categories` (contiguous ids in increasing category-id
order; panoptic `isthing: 0` marks stuff) or, for semantic folders, a class list with one name per
line whose line index is the label value. Image and PNG locations may be folders or zip files.

`SemanticPngDataset` is also the reader behind ADE20K and Cityscapes semantic: images paired with
single-channel label PNGs whose raw values go through a lookup table to class ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eomt.data.archives import (
    IMAGE_SUFFIXES, DatasetError, FolderSource, ImageFrame, ItemCheck, SegmentationDataset, Source, Transform,
    ZipSource, annotation_orientation, present_values, target_from_label_map, turned_note,
)
from eomt.data.coco import InstanceJsonDataset, PanopticJsonDataset
from eomt.images import orient
from eomt.structures import IGNORE_INDEX, Target

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


def categories_from_json(js: Mapping[str, Any], name: str) -> tuple[dict[int, int], list[str], list[int]]:
    """(category id -> contiguous id in sorted-id order, class names, stuff ids from `isthing: 0`)."""
    cats = js.get("categories") if isinstance(js, Mapping) else None
    if not cats:
        raise DatasetError(f"{name}: no 'categories' list; expected [{{'id', 'name', ...}}, ...]")
    try:
        cats = sorted(cats, key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in cats]
        names = [str(c["name"]) for c in cats]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{name}: a category lacks a valid 'id'/'name' ({e})") from None
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{name}: category ids repeated in 'categories'")
    stuff = [i for i, c in enumerate(cats) if not c.get("isthing", 1)]
    return {cid: i for i, cid in enumerate(ids)}, names, stuff


class CocoInstanceJson(InstanceJsonDataset):
    """COCO instance JSON + image folder (or zip); classes from the JSON's categories."""

    def __init__(self, annotations: str | os.PathLike[str], images: str | os.PathLike[str],
                 transform: Transform | None = None) -> None:
        js = read_json_file(annotations)
        category_ids, names, _ = categories_from_json(js, str(annotations))
        super().__init__(js, str(annotations), open_source(images), "", category_ids, names, transform)


class CocoPanopticJson(PanopticJsonDataset):
    """COCO panoptic JSON + folder of RGB id PNGs + image folder; things/stuff from `isthing`."""

    def __init__(self, annotations: str | os.PathLike[str], masks: str | os.PathLike[str],
                 images: str | os.PathLike[str], transform: Transform | None = None) -> None:
        js = read_json_file(annotations)
        category_ids, names, stuff = categories_from_json(js, str(annotations))
        super().__init__(js, str(annotations), open_source(images), "", open_source(masks), "",
                         category_ids, names, stuff, transform)


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line (line index = label value); blank lines are skipped."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DatasetError(f"{path}: class list not found") from None
    names = [n for n in names if n]
    if not names:
        raise DatasetError(f"{path}: class list is empty; expected one class name per line")
    return names


def _stem(member: str) -> str:
    return member.rsplit(".", 1)[0]


class SemanticFolder(SemanticPngDataset):
    """Folder of images + folder of label PNGs matched by relative path stem + class list file.

    Label value v is class v of the list; `ignore_index` marks unlabelled pixels; other values are
    errors. Images without a label PNG are skipped and listed in `index_errors`.
    """

    def __init__(self, images: str | os.PathLike[str], labels: str | os.PathLike[str],
                 classes: str | os.PathLike[str], ignore_index: int = IGNORE_INDEX,
                 transform: Transform | None = None, skip_unlabelled: bool = True) -> None:
        names = read_class_list(classes)
        if 0 <= ignore_index < len(names):
            raise DatasetError(f"{classes}: ignore_index {ignore_index} is the index of class {names[ignore_index]!r}; "
                               f"expected a value >= {len(names)}")
        lut = np.full(max(256, len(names), ignore_index + 1), INVALID, dtype=np.int64)
        lut[: len(names)] = np.arange(len(names))
        if ignore_index >= 0:
            lut[ignore_index] = UNLABELLED
        image_src, label_src = open_source(images), open_source(labels)
        label_by_stem = {_stem(m): m for m in label_src.list("", ".png")}
        pairs, unlabelled = [], []
        for member in image_src.list("", IMAGE_SUFFIXES):
            label = label_by_stem.pop(_stem(member), None)
            if label is None:
                unlabelled.append(image_src.where(member))
            else:
                pairs.append((member, label))
        super().__init__(image_src, label_src, pairs, lut, names, (), transform,
                         skip="unlabelled" if skip_unlabelled else None)
        self.ignore_index = ignore_index
        self.index_errors += [f"{m}: no label PNG with the same name in {label_src.name}" for m in unlabelled]
        if label_by_stem:
            self.index_warnings.append(f"{len(label_by_stem)} label PNGs in {label_src.name} without an image "
                                       f"(first: {sorted(label_by_stem.values())[0]})")
