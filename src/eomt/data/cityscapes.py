"""Cityscapes semantic segmentation (19 train ids) read in place from the original archives.

Layout (`root` holds the zips):
  leftImg8bit_trainvaltest.zip  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine_trainvaltest.zip       gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

`*_gtFine_labelIds.png` values are label ids 0..33; they map to the 19 train ids, and the ids ignored
in evaluation are dropped. Like the official code, images whose label PNG is a single value are
skipped (`skip_empty`), as are images without a label PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eomt import classes
from eomt.data.base import Transform
from eomt.data.semantic_png import UNLABELLED, SemanticPngDataset
from eomt.data.sources import DatasetError, ZipSource, join
from eomt.structures import IGNORE_INDEX

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def label_id_lut() -> np.ndarray:
    """(256,) label id -> train id 0..18; ignored ids (train id 255) and unknown values unlabelled."""
    table = np.asarray(classes.CITYSCAPES_LABEL_TO_TRAIN_ID, dtype=np.int64)
    lut = np.full(256, UNLABELLED, dtype=np.int64)
    lut[: len(table)] = np.where(table == IGNORE_INDEX, UNLABELLED, table)
    return lut


class CityscapesSemantic(SemanticPngDataset):
    """Cityscapes fine annotations, 19 classes."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: Transform | None = None,
                 skip_empty: bool = True) -> None:
        if split not in SPLITS:
            raise DatasetError(f"Cityscapes: split {split!r}; expected one of {list(SPLITS)}")
        images = ZipSource(Path(root) / "leftImg8bit_trainvaltest.zip")
        labels = ZipSource(Path(root) / "gtFine_trainvaltest.zip")
        pairs = []
        for member in images.list(f"leftImg8bit/{split}", IMAGE_SUFFIX):
            relative = member[len("leftImg8bit/") : -len(IMAGE_SUFFIX)]  # <split>/<city>/<stem>
            label = join("gtFine", relative + LABEL_SUFFIX)
            if labels.exists(label):
                pairs.append((member, label))
        names, stuff = classes.label_space("cityscapes", "semantic")
        super().__init__(images, labels, pairs, label_id_lut(), names, stuff, transform,
                         skip="constant" if skip_empty else None)
