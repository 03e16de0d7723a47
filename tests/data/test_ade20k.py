from pathlib import Path

import pytest

from eomt.data.ade20k import ADE20KPanoptic, ADE20KSemantic
from eomt.data.sources import DatasetError

try:
    from .fixtures import H, W, assert_same_segments, write_ade20k
except ImportError:
    from fixtures import H, W, assert_same_segments, write_ade20k


@pytest.fixture
def ade(tmp_path):
    semantic, panoptic = write_ade20k(tmp_path, "validation")
    return tmp_path, semantic, panoptic


def test_ade20k_semantic(ade):
    root, semantic, _ = ade
    ds = ADE20KSemantic(root, "val")
    assert ds.num_classes == 150 and len(ds) == 2  # constant label PNG and missing label skipped
    names = [Path(ds.item_name(i)).name for i in range(len(ds))]
    assert names == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    for i, name in enumerate(names):
        image, target = ds[i]
        assert image.shape == (H, W, 3)
        assert_same_segments(target, semantic[name])
    assert len(ADE20KSemantic(root, "validation", skip_empty=False)) == 3


def test_ade20k_panoptic(ade):
    root, _, panoptic = ade
    ds = ADE20KPanoptic(root, "val")
    assert len(ds) == 2 and len(ds.stuff_classes) == 50
    for i in range(len(ds)):
        _, target = ds[i]
        assert_same_segments(target, panoptic[Path(ds.item_name(i)).name])
        assert not target.is_crowd.any()


def test_ade20k_unknown_split(ade):
    with pytest.raises(DatasetError, match="split 'test'"):
        ADE20KSemantic(ade[0], "test")
