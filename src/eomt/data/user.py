"""Users' own data with no code: COCO instance JSON, COCO panoptic JSON + PNGs, semantic PNG folders.

Class names come from the files: the JSON `categories` (contiguous ids in increasing category-id
order; panoptic `isthing: 0` marks stuff) or, for semantic folders, a class list with one name per
line whose line index is the label value. Image and PNG locations may be folders or zip files.
Thin constructors on the generic readers of `eomt.data.coco_json` and `eomt.data.semantic_png`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from eomt.data.base import Transform
from eomt.data.coco_json import InstanceJsonDataset, PanopticJsonDataset
from eomt.data.semantic_png import INVALID, UNLABELLED, SemanticPngDataset
from eomt.data.sources import IMAGE_SUFFIXES, DatasetError, open_source, read_json_file
from eomt.structures import IGNORE_INDEX


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
