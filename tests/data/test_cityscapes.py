from pathlib import Path

import pytest

from eomt.data.sources import DatasetError
from eomt.data.cityscapes import CityscapesSemantic

try:
    from .fixtures import H, W, assert_same_segments, write_cityscapes
except ImportError:
    from fixtures import H, W, assert_same_segments, write_cityscapes


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    expected = write_cityscapes(tmp_path, "val")
    ds = CityscapesSemantic(tmp_path, "val")
    assert len(ds) == 3 and ds.num_classes == 19
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (H, W, 3)
        assert_same_segments(target, expected[Path(ds.item_name(i)).name])
    assert len(CityscapesSemantic(tmp_path, "train")) == 0


def test_cityscapes_missing_archive(tmp_path):
    with pytest.raises(DatasetError, match="leftImg8bit_trainvaltest.zip: archive not found"):
        CityscapesSemantic(tmp_path, "val")
