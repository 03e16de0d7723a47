"""A label map whose pixels are all unlabelled gives a valid empty target: 0 masks of (0, H, W)."""

import numpy as np
import torch

from eomt.data.ade20k import ADE20KSemantic
from eomt.data.base import target_from_ids, target_from_label_map
from eomt.data.check import check_dataset
from eomt.data.cityscapes import CityscapesSemantic
from eomt.data.transforms import TrainTransform
from eomt.data.user import SemanticFolder
from eomt.training.data_module import train_collate

try:
    from .fixtures import H, W, encode, rgb, write_zip
except ImportError:
    from fixtures import H, W, encode, rgb, write_zip


def _assert_empty(target, size=(H, W)):
    assert len(target) == 0
    assert target.masks.shape == (0, *size) and target.masks.dtype == torch.bool
    assert target.labels.shape == (0,) and target.labels.dtype == torch.int64
    assert target.is_crowd.shape == (0,) and target.is_crowd.dtype == torch.bool


def test_target_helpers_accept_maps_without_a_label():
    _assert_empty(target_from_label_map(np.full((H, W), -1)))
    _assert_empty(target_from_ids(np.zeros((H, W), np.int64), np.zeros(0), np.zeros(0), np.zeros(0)))
    _assert_empty(target_from_ids(np.zeros((H, W), np.int64), np.array([4]), np.array([1]), np.array([False])))


def _semantic_folder(root):
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    for stem, label in (("a", np.full((H, W), 255, np.uint8)), ("b", rng.choice([0, 1, 255], (H, W)))):
        (root / "images" / f"{stem}.png").write_bytes(encode(rgb(rng)))
        (root / "labels" / f"{stem}.png").write_bytes(encode(label.astype(np.uint8)))


def test_semantic_folder_keeps_an_all_ignore_label_as_an_empty_target(tmp_path):
    _semantic_folder(tmp_path)
    kept = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt", skip_unlabelled=False)
    assert len(kept) == 2
    image, target = kept[0]  # a.png: every pixel 255
    assert image.shape == (H, W, 3)
    _assert_empty(target)
    report = check_dataset(kept)
    assert report.ok and report.counts["images_empty"] == 1
    assert any("labels/a.png: no labelled pixel" in w for w in report.warnings)
    skipped = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")
    assert len(skipped) == 1  # the default drops it


def test_training_transform_and_collate_take_an_empty_target(tmp_path):
    _semantic_folder(tmp_path)
    ds = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt", skip_unlabelled=False,
                        transform=TrainTransform((8, 8), seed=0))
    batch = [ds[0], ds[1], ds[0]]
    image, target = batch[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    _assert_empty(target, (8, 8))
    images, targets = train_collate(batch)
    assert images.shape == (3, 3, 8, 8) and [len(t) for t in targets][::2] == [0, 0]


def test_ade20k_semantic_all_ignore_values_give_an_empty_target(tmp_path):
    rng = np.random.default_rng(0)
    # Not one value (the official skip rule keeps it) and none of them a class: 0 is "other", > 150 unknown.
    raw = rng.choice([0, 151, 255], (H, W)).astype(np.uint8)
    write_zip(tmp_path / "ADEChallengeData2016.zip", {
        "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg": encode(rgb(rng), "JPEG"),
        "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png": encode(raw),
        "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg": encode(rgb(rng), "JPEG"),
        "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png": encode(np.zeros((H, W), np.uint8)),
    })
    ds = ADE20KSemantic(tmp_path, "val")
    assert len(ds) == 1
    _assert_empty(ds[0][1])
    everything = ADE20KSemantic(tmp_path, "val", skip_empty=False)  # the constant all-0 map is kept too
    assert len(everything) == 2
    for i in range(2):
        _assert_empty(everything[i][1])


def test_cityscapes_semantic_all_ignored_label_ids_give_an_empty_target(tmp_path):
    rng = np.random.default_rng(0)
    stem = "frankfurt_000000_000294"
    ids = rng.choice([0, 4, 255], (H, W)).astype(np.uint8)  # 0, 4: ignored in evaluation; 255: unknown
    write_zip(tmp_path / "leftImg8bit_trainvaltest.zip",
              {f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png": encode(rgb(rng))})
    write_zip(tmp_path / "gtFine_trainvaltest.zip", {f"gtFine/val/frankfurt/{stem}_gtFine_labelIds.png": encode(ids)})
    ds = CityscapesSemantic(tmp_path, "val")
    assert len(ds) == 1
    _assert_empty(ds[0][1])
    ds.transform = TrainTransform((8, 8), seed=0)
    _assert_empty(ds[0][1], (8, 8))

