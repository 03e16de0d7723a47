"""COCO 2017 read in place from the original archives: panoptic (133 classes) and instance (80).

Official layout (`root` holds the zips as downloaded):
  {split}2017.zip                        {split}2017/000000000139.jpg
  panoptic_annotations_trainval2017.zip  annotations/panoptic_{split}2017.json
                                         annotations/panoptic_{split}2017.zip -> panoptic_{split}2017/*.png
  annotations_trainval2017.zip           annotations/instances_{split}2017.json

Thin constructors on the generic readers of `eomt.data.coco_json`; the label spaces and category
ids are the paper's (`eomt.classes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from eomt import classes
from eomt.data.base import Transform
from eomt.data.coco_json import InstanceJsonDataset, PanopticJsonDataset
from eomt.data.sources import DatasetError, ZipSource


def _root(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"{path}: data folder not found")
    return path


class COCOPanoptic(PanopticJsonDataset):
    """COCO panoptic 2017 read from the original zips in `root` (133 classes, things 0-79)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: Transform | None = None,
                 stuff_classes: Sequence[int] | None = None) -> None:
        path = _root(root)
        ann_zip = path / "panoptic_annotations_trainval2017.zip"
        json_member = f"annotations/panoptic_{split}2017.json"
        annotations = ZipSource(ann_zip).read_json(json_member)
        names, stuff = classes.label_space("coco", "panoptic")
        super().__init__(
            annotations, f"{ann_zip}: {json_member}", ZipSource(path / f"{split}2017.zip"), f"{split}2017",
            ZipSource(ann_zip, inner=f"annotations/panoptic_{split}2017.zip"), f"panoptic_{split}2017",
            classes.COCO_PANOPTIC_CATEGORY_IDS, names, stuff if stuff_classes is None else stuff_classes,
            transform, skip_missing_images=True)


class COCOInstance(InstanceJsonDataset):
    """COCO instance 2017 read from the original zips in `root` (80 thing classes, crowd flagged)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train",
                 transform: Transform | None = None) -> None:
        path = _root(root)
        ann_zip = path / "annotations_trainval2017.zip"
        json_member = f"annotations/instances_{split}2017.json"
        annotations = ZipSource(ann_zip).read_json(json_member)
        names, _ = classes.label_space("coco", "instance")
        super().__init__(
            annotations, f"{ann_zip}: {json_member}", ZipSource(path / f"{split}2017.zip"), f"{split}2017",
            classes.COCO_INSTANCE_CATEGORY_IDS, names, transform, skip_missing_images=True)
