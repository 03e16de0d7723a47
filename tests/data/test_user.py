import json
from pathlib import Path

import numpy as np
import pytest

from eomt.config import ConfigError
from eomt.data.sources import DatasetError
from eomt.data.registry import build_dataset
from eomt.data.user import CocoInstanceJson, CocoPanopticJson, SemanticFolder

try:
    from .fixtures import assert_same_segments, write_semantic_folder, write_user_coco
except ImportError:
    from fixtures import assert_same_segments, write_semantic_folder, write_user_coco


def test_coco_instance_json_round_trip(tmp_path):
    expected, _ = write_user_coco(tmp_path)
    ds = CocoInstanceJson(tmp_path / "instances.json", tmp_path / "images")
    assert ds.class_names == ("cat", "dog", "grass")  # sorted category ids 3, 7, 42
    assert [Path(ds.item_name(i)).name for i in range(len(ds))] == ["a.jpg", "b.jpg"]  # c.jpg has no annotation
    for i in range(len(ds)):
        assert_same_segments(ds[i][1], expected[Path(ds.item_name(i)).name])


def test_coco_panoptic_json_round_trip(tmp_path):
    _, expected = write_user_coco(tmp_path)
    ds = CocoPanopticJson(tmp_path / "panoptic.json", tmp_path / "panoptic", tmp_path / "images")
    assert ds.class_names == ("cat", "dog", "grass") and ds.stuff_classes == (2,)
    assert len(ds) == 2
    for i in range(len(ds)):
        assert_same_segments(ds[i][1], expected[Path(ds.item_name(i)).name])


def test_semantic_folder_round_trip(tmp_path):
    pixels, expected = write_semantic_folder(tmp_path)
    ds = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")
    assert ds.class_names == ("sky", "road", "car") and ds.num_classes == 3
    assert [Path(ds.item_name(i)).stem for i in range(len(ds))] == ["img1", "img2", "img10"]
    for i in range(len(ds)):
        stem = Path(ds.item_name(i)).stem
        image, target = ds[i]
        np.testing.assert_array_equal(image, pixels[stem])
        assert_same_segments(target, expected[stem])


def test_semantic_folder_value_outside_class_list_is_an_error(tmp_path):
    write_semantic_folder(tmp_path, names=("sky", "road"))  # labels hold 0, 2 and 255
    ds = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")
    with pytest.raises(DatasetError, match=r"labels/img1\.png: label values \[2\] outside the 2 classes"):
        ds[0]
    with pytest.raises(DatasetError, match="ignore_index 1 is the index of class 'road'"):
        SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt", ignore_index=1)
    other = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt", ignore_index=2)
    with pytest.raises(DatasetError, match=r"label values \[255\] outside"):  # 2 is ignored now, 255 is not
        other[0]


def test_user_format_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="missing.json: annotation file not found"):
        CocoInstanceJson(tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match="bad.json: invalid JSON"):
        CocoInstanceJson(tmp_path / "bad.json", tmp_path)
    (tmp_path / "nocats.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="nocats.json: no 'categories'"):
        CocoInstanceJson(tmp_path / "nocats.json", tmp_path)
    (tmp_path / "classes.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="classes.txt: class list is empty"):
        SemanticFolder(tmp_path, tmp_path, tmp_path / "classes.txt")


def test_registry_builds_user_formats_with_default_layout(tmp_path):
    pixels, expected = write_semantic_folder(tmp_path / "raw")
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (tmp_path / "raw" / "images").rename(root / "images" / "val")
    (root / "labels").mkdir()
    (tmp_path / "raw" / "labels").rename(root / "labels" / "val")
    (tmp_path / "raw" / "classes.txt").rename(root / "classes.txt")
    ds = build_dataset("semantic_folder", root, "val", "semantic")
    assert len(ds) == 3 and ds.class_names == ("sky", "road", "car")
    _, inst = write_user_coco(tmp_path / "coco")
    ds = build_dataset("coco_instance_json", tmp_path / "coco", "val", "instance",
                       annotations="instances.json", images="images")
    assert len(ds) == 2


def test_registry_errors_suggest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'coco_panoptic'"):
        build_dataset("coco_panoptc", tmp_path, "val", "panoptic")
    with pytest.raises(ConfigError, match="task 'instance' not supported"):
        build_dataset("ade20k_semantic", tmp_path, "val", "instance")
    with pytest.raises(ConfigError, match="did you mean 'ignore_index'"):
        build_dataset("semantic_folder", tmp_path, "val", "semantic", ignore_idx=3)


def test_registry_family_name_and_synthetic(tmp_path):
    from eomt.data.cityscapes import CityscapesSemantic
    try:
        from .fixtures import write_cityscapes
    except ImportError:
        from fixtures import write_cityscapes
    write_cityscapes(tmp_path, "val")
    assert isinstance(build_dataset("cityscapes", tmp_path, "val", "semantic"), CityscapesSemantic)
    train = build_dataset("synthetic", split="train", task="instance", num_images=2, size=32)
    val = build_dataset("synthetic", split="val", task="instance", num_images=2, size=32)
    assert len(train) == 2 and train.class_names == val.class_names
    assert not np.array_equal(train[0][0], val[0][0])
    wrapped = build_dataset("synthetic", split="val", task="semantic", num_images=1, size=32,
                            transform=_shape_and_count)
    plain = build_dataset("synthetic", split="val", task="semantic", num_images=1, size=32)
    assert wrapped[0] == ((32, 32, 3), len(plain[0][1]))


def _shape_and_count(image, target):
    return image.shape, len(target)
