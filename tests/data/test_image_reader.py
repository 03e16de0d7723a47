"""One image reader for datasets and prediction; annotations follow their image's EXIF frame."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from eomt.data.sources import DatasetError, FolderSource
from eomt.data.check import check_dataset
from eomt.data.user import CocoInstanceJson, CocoPanopticJson, SemanticFolder
from eomt.images import orient
from eomt.inference.io import read_image

try:
    from .fixtures import panoptic_png
except ImportError:
    from fixtures import panoptic_png

H, W = 12, 16  # stored size of every picture below


def _odd_picture(kind: str) -> tuple[np.ndarray, str]:
    """(array Pillow writes as the PNG kind, mode name) for a 16-bit grayscale or an RGBA picture."""
    rng = np.random.default_rng(1)
    if kind == "gray16":
        return (rng.integers(0, 256, (H, W)) * 257).astype(np.uint16), "I;16"
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[:, :4, 3] = 0  # transparent: must come out white, not its arbitrary colour
    return rgba, "RGBA"


def _write_user_data(root: Path, picture: np.ndarray) -> Path:
    """images/p.png + labels/p.png + classes.txt + instances.json (one box of class 0)."""
    (root / "images").mkdir()
    (root / "labels").mkdir()
    image = root / "images" / "p.png"
    Image.fromarray(picture).save(image)
    label = np.full((H, W), 255, np.uint8)
    label[2:8, 3:9] = 0
    Image.fromarray(label).save(root / "labels" / "p.png")
    (root / "classes.txt").write_text("thing\n")
    rle = mask_utils.encode(np.asfortranarray((label == 0).astype(np.uint8)))
    js = {"images": [{"id": 1, "file_name": "p.png", "height": H, "width": W}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0,
                           "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}}],
          "categories": [{"id": 5, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(js))
    return image


@pytest.mark.parametrize("kind", ["gray16", "rgba"])
def test_datasets_and_the_predictor_read_the_same_pixels(tmp_path, kind):
    picture, mode = _odd_picture(kind)
    path = _write_user_data(tmp_path, picture)
    assert Image.open(path).mode == mode
    predicted = read_image(path).permute(1, 2, 0).numpy()  # (H, W, 3) the predictor sees
    semantic = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")[0][0]
    instance = CocoInstanceJson(tmp_path / "instances.json", tmp_path / "images")[0][0]
    source = FolderSource(tmp_path / "images").read_image("p.png")
    for got in (semantic, instance, source):
        assert got.dtype == np.uint8 and got.shape == (H, W, 3)
        np.testing.assert_array_equal(got, predicted)
    if kind == "gray16":  # scaled by 1/257, not clipped to white
        np.testing.assert_array_equal(semantic[..., 0], (picture // 257).astype(np.uint8))
    else:  # alpha composited onto white
        assert (semantic[:, :4] == 255).all()
        np.testing.assert_array_equal(semantic[:, 4:][picture[:, 4:, 3] == 255], picture[:, 4:, :3][picture[:, 4:, 3] == 255])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_is_pils_exif_transpose(orientation):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(buf)).convert("RGB"))
    np.testing.assert_array_equal(orient(a, orientation), shown)


# An object in the stored frame: a bright box on a dark picture, its mask, a polygon around it.
BOX = (slice(2, 7), slice(3, 12))  # rows 2..6, columns 3..11
POLYGON = [3, 2, 12, 2, 12, 7, 3, 7]  # the same box, x then y (pycocotools' pixel-corner rule)


def _stored_box() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[BOX] = True
    return mask


def _write_rotated_jpeg(path: Path, orientation: int) -> None:
    stored = np.full((H, W, 3), 20, np.uint8)
    stored[_stored_box()] = 235
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, quality=95)


def _displayed(mask: np.ndarray, orientation: int) -> np.ndarray:
    """The stored-frame mask as shown: 6 turns 90 degrees clockwise, 8 counter-clockwise."""
    return np.rot90(mask, k=-1 if orientation == 6 else 1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _instance_json(root: Path, height: int, width: int) -> Path:
    rle = mask_utils.encode(np.asfortranarray(_stored_box().astype(np.uint8)))
    js = {"images": [{"id": 1, "file_name": "r.jpg", "height": height, "width": width}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [POLYGON]},
              {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
               "segmentation": {"size": [height, width], "counts": rle["counts"].decode()}}],
          "categories": [{"id": 1, "name": "box"}]}
    (root / "instances.json").write_text(json.dumps(js))
    return root / "instances.json"


@pytest.mark.parametrize("orientation", [6, 8])
def test_coco_instance_in_the_stored_frame_follows_the_exif_rotation(tmp_path, orientation):
    (tmp_path / "images").mkdir()
    _write_rotated_jpeg(tmp_path / "images" / "r.jpg", orientation)
    ds = CocoInstanceJson(_instance_json(tmp_path, H, W), tmp_path / "images")
    image, target = ds[0]
    expected = _displayed(_stored_box(), orientation)
    assert image.shape == (W, H, 3) and target.masks.shape == (2, W, H)
    for mask in target.masks.numpy():
        assert _iou(mask, expected) == 1.0
        assert image[mask].mean() > 200 and image[~mask].mean() < 60  # on the object
    report = check_dataset(ds)
    assert report.ok and any(f"EXIF orientation {orientation}" in w and "r.jpg" in w for w in report.warnings)


def test_coco_instance_already_in_the_displayed_frame_is_kept(tmp_path):
    (tmp_path / "images").mkdir()
    _write_rotated_jpeg(tmp_path / "images" / "r.jpg", 6)
    js = json.loads(_instance_json(tmp_path, H, W).read_text())
    shown = np.ascontiguousarray(_displayed(_stored_box(), 6))
    rle = mask_utils.encode(np.asfortranarray(shown.astype(np.uint8)))
    js["images"][0].update(height=W, width=H)
    js["annotations"] = [dict(js["annotations"][1], segmentation={"size": [W, H], "counts": rle["counts"].decode()})]
    (tmp_path / "instances.json").write_text(json.dumps(js))
    image, target = CocoInstanceJson(tmp_path / "instances.json", tmp_path / "images")[0]
    np.testing.assert_array_equal(target.masks[0].numpy(), shown)


@pytest.mark.parametrize("orientation", [6, 8])
def test_coco_panoptic_png_in_the_stored_frame_follows_the_exif_rotation(tmp_path, orientation):
    (tmp_path / "images").mkdir()
    (tmp_path / "panoptic").mkdir()
    _write_rotated_jpeg(tmp_path / "images" / "r.jpg", orientation)
    ids = np.where(_stored_box(), 7, 3).astype(np.int64)  # segment 7: the box, 3: the background
    Image.fromarray(panoptic_png(ids)).save(tmp_path / "panoptic" / "r.png")
    js = {"images": [{"id": 1, "file_name": "r.jpg", "height": H, "width": W}],
          "annotations": [{"image_id": 1, "file_name": "r.png", "segments_info": [
              {"id": 7, "category_id": 1, "iscrowd": 0}, {"id": 3, "category_id": 2, "iscrowd": 0}]}],
          "categories": [{"id": 1, "name": "box", "isthing": 1}, {"id": 2, "name": "floor", "isthing": 0}]}
    (tmp_path / "panoptic.json").write_text(json.dumps(js))
    ds = CocoPanopticJson(tmp_path / "panoptic.json", tmp_path / "panoptic", tmp_path / "images")
    image, target = ds[0]
    expected = _displayed(_stored_box(), orientation)
    box = target.masks[target.labels == 0][0].numpy()
    assert image.shape == (W, H, 3) and _iou(box, expected) == 1.0
    np.testing.assert_array_equal(target.masks[target.labels == 1][0].numpy(), ~expected)
    assert image[box].mean() > 200
    report = check_dataset(ds)
    assert report.ok and any("r.png" in w and f"EXIF orientation {orientation}" in w for w in report.warnings)


def test_annotation_fitting_neither_frame_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "panoptic").mkdir()
    (tmp_path / "labels").mkdir()
    _write_rotated_jpeg(tmp_path / "images" / "r.jpg", 6)
    stored_and_shown = r"\(16, 12\) as displayed, \(12, 16\) as stored \(EXIF orientation 6\)"

    ds = CocoInstanceJson(_instance_json(tmp_path, 10, 10), tmp_path / "images")
    with pytest.raises(DatasetError, match=r"instances\.json: r\.jpg \(height/width\): size \(10, 10\) .*r\.jpg: "
                       + stored_and_shown):
        ds[0]
    assert any("size (10, 10)" in e for e in check_dataset(ds).errors)
    assert any("size (10, 10)" in e for e in check_dataset(ds, read_images=False).errors)

    Image.fromarray(panoptic_png(np.full((H + 1, W), 7))).save(tmp_path / "panoptic" / "r.png")
    js = {"images": [{"id": 1, "file_name": "r.jpg", "height": H, "width": W}],
          "annotations": [{"image_id": 1, "file_name": "r.png", "segments_info": [{"id": 7, "category_id": 1}]}],
          "categories": [{"id": 1, "name": "box"}]}
    (tmp_path / "panoptic.json").write_text(json.dumps(js))
    pan = CocoPanopticJson(tmp_path / "panoptic.json", tmp_path / "panoptic", tmp_path / "images")
    with pytest.raises(DatasetError, match=r"panoptic/r\.png: size \(13, 16\) .*" + stored_and_shown):
        pan[0]
    assert not check_dataset(pan).ok

    Image.fromarray(np.zeros((W, W), np.uint8)).save(tmp_path / "labels" / "r.png")
    (tmp_path / "classes.txt").write_text("box\n")
    sem = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")
    with pytest.raises(DatasetError, match=r"labels/r\.png: size \(16, 16\) .*" + stored_and_shown):
        sem[0]
    assert any("labels/r.png: size (16, 16)" in e for e in check_dataset(sem).errors)


def test_semantic_label_in_the_stored_frame_follows_the_exif_rotation(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _write_rotated_jpeg(tmp_path / "images" / "r.jpg", 8)
    Image.fromarray(np.where(_stored_box(), 0, 255).astype(np.uint8)).save(tmp_path / "labels" / "r.png")
    (tmp_path / "classes.txt").write_text("box\n")
    image, target = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")[0]
    assert _iou(target.masks[0].numpy(), _displayed(_stored_box(), 8)) == 1.0
