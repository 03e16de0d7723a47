import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from eomt.data.sources import DatasetError
from eomt.data.coco import COCOInstance, COCOPanoptic
from eomt.data.coco_json import decode_segmentations
from eomt.images import rgb_to_id as panoptic_ids

try:
    from .fixtures import H, W, assert_same_segments, panoptic_png, write_coco_instance, write_coco_panoptic
except ImportError:
    from fixtures import H, W, assert_same_segments, panoptic_png, write_coco_instance, write_coco_panoptic


def test_panoptic_id_decoding():
    ids = np.array([[0, 1, 255], [256, 65536, 2**24 - 1]])
    np.testing.assert_array_equal(panoptic_ids(panoptic_png(ids)), ids)


def test_coco_panoptic_reads_the_official_archives(tmp_path):
    expected = write_coco_panoptic(tmp_path, "val")
    ds = COCOPanoptic(tmp_path, "val")
    assert len(ds) == 3 and ds.num_classes == 133 and ds.stuff_classes == tuple(range(80, 133))
    names = [Path(ds.item_name(i)).name for i in range(len(ds))]
    assert names == ["000000000139.jpg", "000000000632.jpg", "000000000785.jpg"]  # numeric order
    assert any("1 images" in w and "without an annotation entry" in w for w in ds.index_warnings)
    for i, name in enumerate(names):
        image, target = ds[i]
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert_same_segments(target, expected[name])
    assert not ds.index_errors


def _crop_and_labels(image, target):
    return image[:4], target.labels


def test_coco_panoptic_pickles_and_applies_transform(tmp_path):
    write_coco_panoptic(tmp_path, "val")
    ds = COCOPanoptic(tmp_path, "val", transform=_crop_and_labels)
    image, labels = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    image2, labels2 = clone[0]
    assert image.shape == (4, W, 3) and torch.equal(labels, labels2) and np.array_equal(image, image2)


def test_coco_instance_reads_polygons_rle_and_crowd(tmp_path):
    expected = write_coco_instance(tmp_path, "val")
    ds = COCOInstance(tmp_path, "val")
    assert len(ds) == 2 and ds.num_classes == 80 and ds.stuff_classes == ()
    for i in range(len(ds)):
        name = Path(ds.item_name(i)).name
        image, target = ds[i]
        assert image.shape == (H, W, 3)
        assert_same_segments(target, expected[name])
        assert target.is_crowd.tolist() == [False, False, True, False]
    assert any("without annotations" in w and "000000000632.jpg" in w for w in ds.index_warnings)


def test_coco_missing_archive_is_named(tmp_path):
    write_coco_instance(tmp_path, "val")
    with pytest.raises(DatasetError, match="annotations_trainval2017.zip: annotations/instances_train2017.json"):
        COCOInstance(tmp_path, "train")
    with pytest.raises(DatasetError, match="panoptic_annotations_trainval2017.zip: archive not found"):
        COCOPanoptic(tmp_path, "val")


def test_decode_segmentations_masks_shape():
    m = decode_segmentations([[[0, 0, 4, 0, 4, 3, 0, 3]]], 5, 6)
    assert m.shape == (1, 5, 6) and m.dtype == torch.bool and m.any()
    assert decode_segmentations([], 5, 6).shape == (0, 5, 6)
