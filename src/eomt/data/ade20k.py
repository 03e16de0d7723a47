"""ADE20K (SceneParsing, 150 classes) read in place from the original archives.

Layout (`root` holds the zips):
  ADEChallengeData2016.zip   ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
                             ADEChallengeData2016/annotations/{training,validation}/ADE_*.png
  annotations_instance.zip   annotations_instance/{training,validation}/ADE_*.png  (panoptic only;
                             built by the user from annotations_instance.tar, e.g. `zip -0 -r`)

Semantic: PNG value v in 1..150 is class v - 1; 0 ("other") and anything else is dropped.
Panoptic: stuff from the semantic PNG (classes in `stuff_classes` only); things from the instance
PNG, channel 0 = instance category (1..100, mapped to ADE-150), channel 1 = instance id.
Like the official code, images whose label PNG is a single value are skipped (`skip_empty`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from eomt import classes
from eomt.data.base import (
    SegmentationDataset, Transform, annotation_orientation, present_values, target_from_ids, target_from_label_map,
)
from eomt.data.semantic_png import UNLABELLED, SemanticPngDataset
from eomt.data.sources import DatasetError, ZipSource, join
from eomt.images import orient
from eomt.structures import Target

SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
NUM_CLASSES = 150


def _split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"ADE20K: split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def semantic_lut() -> np.ndarray:
    """(256,) raw PNG value -> class: 1..150 -> 0..149, everything else unlabelled."""
    lut = np.full(256, UNLABELLED, dtype=np.int64)
    lut[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
    return lut


def _pairs(images: ZipSource, split: str, label_folder: str, labels: ZipSource) -> list[tuple[str, str]]:
    """(image, label) members for every image whose label PNG exists (others skipped, as official)."""
    out = []
    for member in images.list(f"ADEChallengeData2016/images/{split}", ".jpg"):
        label = join(label_folder, member.rsplit("/", 1)[1][: -len(".jpg")] + ".png")
        if labels.exists(label):
            out.append((member, label))
    return out


class ADE20KSemantic(SemanticPngDataset):
    """ADE20K semantic segmentation, 150 classes (PNG 1..150 -> 0..149, 0 dropped)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: Transform | None = None,
                 skip_empty: bool = True) -> None:
        zf = ZipSource(Path(root) / "ADEChallengeData2016.zip")
        split = _split(split)
        pairs = _pairs(zf, split, f"ADEChallengeData2016/annotations/{split}", zf)
        names, stuff = classes.label_space("ade20k", "semantic")
        super().__init__(zf, zf, pairs, semantic_lut(), names, stuff, transform,
                         skip="constant" if skip_empty else None)


def instance_lut() -> np.ndarray:
    """(256,) instance PNG category (1..100) -> ADE-150 class; other values unlabelled."""
    lut = np.full(256, UNLABELLED, dtype=np.int64)
    for cat, ade in classes.ADE20K_INSTANCE_MAPPING.items():
        lut[cat] = ade
    return lut


class ADE20KPanoptic(SegmentationDataset):
    """ADE20K panoptic: stuff masks from the semantic PNG, thing masks from the instance PNG."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: Transform | None = None,
                 stuff_classes: Sequence[int] | None = None, skip_empty: bool = True) -> None:
        names, default_stuff = classes.label_space("ade20k", "panoptic")
        super().__init__(names, default_stuff if stuff_classes is None else stuff_classes, transform)
        self.images = ZipSource(Path(root) / "ADEChallengeData2016.zip")
        self.instances = ZipSource(Path(root) / "annotations_instance.zip")
        split = _split(split)
        self._stuff_lut = semantic_lut()
        self._stuff_lut[~np.isin(self._stuff_lut, self.stuff_classes)] = UNLABELLED  # things come from instances
        self._thing_lut = instance_lut()
        self.items: list[tuple[str, str, str]] = []  # (image, semantic PNG, instance PNG)
        for image, label in _pairs(self.images, split, f"ADEChallengeData2016/annotations/{split}", self.images):
            instance = join(f"annotations_instance/{split}", label.rsplit("/", 1)[1])
            if not self.instances.exists(instance):
                continue
            if skip_empty and self._is_empty(label, instance):
                continue
            self.items.append((image, label, instance))

    def _is_empty(self, label: str, instance: str) -> bool:
        """The official rule: a constant semantic PNG, or a constant instance PNG giving no segment."""
        sem = self.images.read_png(label)
        if sem.min() == sem.max():
            return True
        inst = self.instances.read_png(instance)
        if sem.shape[:2] != inst.shape[:2]:
            return False  # kept, so that loading or `check` reports the file
        flat = inst.reshape(-1, inst.shape[-1]) if inst.ndim == 3 else inst.reshape(-1, 1)
        if (flat.min(0) == flat.max(0)).all():
            return len(self._target(sem, inst)) == 0
        return False

    def __len__(self) -> int:
        return len(self.items)

    def item_name(self, index: int) -> str:
        return self.images.where(self.items[index][0])

    def _target(self, sem: np.ndarray, inst: np.ndarray) -> Target:
        stuff = target_from_label_map(self._stuff_lut[sem.astype(np.int64)])
        if inst.ndim != 3 or inst.shape[2] < 2:
            raise DatasetError(f"ADE20K instance PNG: expected channels (category, instance id, ...), "
                               f"found shape {inst.shape}")
        ids = inst[..., 1].astype(np.int64)
        pairs = present_values(ids * 256 + inst[..., 0])  # distinct (instance id, category), sorted
        uniq, first = np.unique(pairs // 256, return_index=True)  # one category per instance id
        labels = self._thing_lut[pairs[first] % 256]
        keep = (uniq != 0) & (labels >= 0)
        things = target_from_ids(ids, uniq[keep], labels[keep], np.zeros(int(keep.sum()), dtype=bool))
        return Target(torch.cat([stuff.masks, things.masks]), torch.cat([stuff.labels, things.labels]),
                      torch.cat([stuff.is_crowd, things.is_crowd]))

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        image_member, label, instance = self.items[index]
        image, frame = self.images.read_image_framed(image_member)
        where = self.images.where(image_member)
        sem = self.images.read_png(label)
        sem = orient(sem, annotation_orientation(sem.shape[:2], frame, self.images.where(label), where))
        inst = self.instances.read_png(instance)
        inst = orient(inst, annotation_orientation(inst.shape[:2], frame, self.instances.where(instance), where))
        try:
            return image, self._target(sem, inst)
        except DatasetError as e:
            raise DatasetError(f"{self.instances.where(instance)}: {e}") from None
