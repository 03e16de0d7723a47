"""The dataset rooms: each named reader is a thin constructor on one generic base, and the image
encodings (`to_chw`, the panoptic colour rule) have one home that data and inference share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eomt import images
from eomt.data.ade20k import ADE20KPanoptic, ADE20KSemantic
from eomt.data.base import SegmentationDataset
from eomt.data.cityscapes import CityscapesSemantic
from eomt.data.coco import COCOInstance, COCOPanoptic
from eomt.data.coco_json import InstanceJsonDataset, PanopticJsonDataset
from eomt.data.registry import DATASET_FORMATS, _import
from eomt.data.semantic_png import SemanticPngDataset
from eomt.data.synthetic import SyntheticScenes
from eomt.data.user import CocoInstanceJson, CocoPanopticJson, SemanticFolder
from eomt.data.video_synthetic import SyntheticVideos
from eomt.data.ytvis import YouTubeVIS
from eomt.inference import formats


@pytest.mark.parametrize("cls, base", [
    (COCOPanoptic, PanopticJsonDataset), (CocoPanopticJson, PanopticJsonDataset),
    (COCOInstance, InstanceJsonDataset), (CocoInstanceJson, InstanceJsonDataset),
    (ADE20KSemantic, SemanticPngDataset), (CityscapesSemantic, SemanticPngDataset),
    (SemanticFolder, SemanticPngDataset), (ADE20KPanoptic, SegmentationDataset),
])
def test_every_reader_builds_on_a_generic_base(cls: type, base: type) -> None:
    assert issubclass(cls, base) and issubclass(base, SegmentationDataset)


def test_every_dataset_format_names_an_importable_reader() -> None:
    for name, (tasks, target, _) in DATASET_FORMATS.items():
        cls = _import(target)
        assert tasks and isinstance(cls, type), name
        # image readers share one base; the generated scenes and the video datasets yield their own items
        assert issubclass(cls, SegmentationDataset) or cls in (SyntheticScenes, SyntheticVideos, YouTubeVIS), name


def test_panoptic_colour_rule_round_trips_and_has_one_home() -> None:
    ids = torch.tensor([[0, 1, 255], [256, 65793, 256**3 - 1]])  # (H, W)
    rgb = images.id_to_rgb(ids)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[1, 1].tolist() == [1, 1, 1] and rgb[1, 0].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(images.rgb_to_id(rgb), ids.numpy())
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], -1)  # an alpha channel is ignored
    np.testing.assert_array_equal(images.rgb_to_id(rgba), ids.numpy())
    assert formats.id_to_rgb is images.id_to_rgb and formats.rgb_to_id is images.rgb_to_id


def test_to_chw_takes_hwc_arrays_and_passes_chw_tensors_through() -> None:
    hwc = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # (H, W, 3)
    chw = images.to_chw(hwc)
    assert chw.shape == (3, 2, 3) and chw.dtype == torch.uint8
    np.testing.assert_array_equal(chw.permute(1, 2, 0).numpy(), hwc)
    assert images.to_chw(chw) is chw
    np.testing.assert_array_equal(images.to_chw(torch.from_numpy(hwc)).numpy(), chw.numpy())
