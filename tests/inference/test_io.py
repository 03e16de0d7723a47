import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from eomt.inference import formats
from eomt.inference.io import ImageReadError, load_image, read_image, write_json, write_png
from eomt.structures import InstanceResult, PanopticResult, SemanticResult


@pytest.mark.parametrize("name", ["exif", "gray", "rgba", "gray16", "rgb16", "palette"])
def test_read_image_returns_the_displayed_rgb_picture(odd_images, name: str) -> None:
    path, expected = odd_images[name]
    img = read_image(path)
    assert img.dtype == torch.uint8 and img.shape == (3, *expected.shape[:2])
    got = img.permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(got - expected.astype(int))
    if name == "exif":  # JPEG is lossy (and blurs colour at the red/blue edge)
        assert diff.mean() < 4
    else:  # the others are exact
        assert diff.max() == 0


def test_exif_rotation_puts_the_red_half_on_the_right(odd_images) -> None:
    img = read_image(odd_images["exif"][0]).float()
    assert img.shape == (3, 60, 40)
    assert img[0, :, 20:].mean() > 150 and img[2, :, 20:].mean() < 100
    assert img[2, :, :20].mean() > 150 and img[0, :, :20].mean() < 100


@pytest.mark.parametrize("name, reason", [("truncated", "truncated"), ("text", "not an image"), ("empty", "not an image")])
def test_broken_files_raise_one_line_naming_the_file(broken_images, name: str, reason: str) -> None:
    path = broken_images[name]
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and reason in msg and "\n" not in msg


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png: no such image file"):
        read_image(tmp_path / "nope.png")


def test_load_image_accepts_arrays_pil_and_tensors() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    expected = torch.from_numpy(rgb).permute(2, 0, 1)
    assert torch.equal(load_image(rgb), expected)
    assert torch.equal(load_image(Image.fromarray(rgb)), expected)
    assert torch.equal(load_image(expected), expected)
    assert torch.equal(load_image(rgb.astype(np.uint16) * 257), expected)  # 16-bit array
    assert torch.equal(load_image(rgb.astype(np.float32) / 255), expected)  # float array in [0, 1]
    assert torch.equal(load_image(rgb[..., 0]), expected[:1].expand(3, -1, -1))  # grayscale
    f = torch.rand(3, 5, 6)
    assert load_image(f) is f  # float tensors stay float
    with pytest.raises(ImageReadError, match=r"image: expected a \(3, H, W\)"):
        load_image(torch.zeros(5, 4, 4))
    with pytest.raises(ImageReadError, match="unsupported input type list"):
        load_image([1, 2, 3])  # type: ignore[arg-type]


def test_atomic_writers_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    write_json(target, {"x": 1})
    write_json(target, {"x": 2})  # replaces
    assert json.loads(target.read_text()) == {"x": 2}
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    write_png(tmp_path / "l.png", labels)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "l.png", "sub"]


def test_panoptic_png_round_trip_and_coco_entry() -> None:
    seg = torch.zeros(6, 9, dtype=torch.long)
    seg[1:3, 2:5] = 1
    seg[4:, :] = 2
    seg[0, 8] = 300  # ids above 255 use the G channel
    rgb = formats.id_to_rgb(seg)
    assert rgb.dtype == np.uint8 and tuple(rgb[0, 8]) == (300 % 256, 1, 0)
    assert np.array_equal(formats.rgb_to_id(rgb), seg.numpy())
    res = PanopticResult(
        torch.where(seg == 300, 0, seg),
        [{"id": 1, "category_id": 0, "isthing": True, "score": 0.9, "area": 6},
         {"id": 2, "category_id": 2, "isthing": False, "score": 0.85, "area": 18}],
    )
    entry = formats.panoptic_to_coco(res, 7, "x_panoptic.png", category_ids=[1, 2, 90])
    assert entry["image_id"] == 7 and entry["file_name"] == "x_panoptic.png"
    info = entry["segments_info"]
    assert [s["category_id"] for s in info] == [1, 90]
    assert info[0]["bbox"] == [2, 1, 3, 2] and info[1]["bbox"] == [0, 4, 9, 2]
    assert [s["isthing"] for s in info] == [1, 0]


def test_instances_to_coco_rle_decodes_to_the_masks() -> None:
    masks = torch.zeros(3, 7, 11, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5:, :] = True
    res = InstanceResult(masks, torch.tensor([4, 0, 2]), torch.tensor([0.9, 0.5, 0.1]))
    entries = formats.instances_to_coco(res, image_id=3, category_ids=[10, 11, 12, 13, 14])
    assert [e["category_id"] for e in entries] == [14, 10, 12]
    json.dumps(entries)  # JSON-serialisable (RLE counts as str)
    for e, m in zip(entries, masks):
        rle = {"size": e["segmentation"]["size"], "counts": e["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle), m.numpy().astype(np.uint8))
        assert e["image_id"] == 3
    assert entries[0]["bbox"] == [2.0, 1.0, 4.0, 3.0]
    assert formats.instances_to_coco(InstanceResult(masks[:0], torch.zeros(0), torch.zeros(0)), 1) == []


def test_semantic_png_dtype() -> None:
    res = SemanticResult(torch.tensor([[0, 149], [3, 4]]))
    assert formats.semantic_to_png_array(res, 150).dtype == np.uint8
    assert formats.semantic_to_png_array(res, 300).dtype == np.uint16


def test_float_arrays_in_0_255_are_not_saturated() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (6, 7, 3)).astype(np.float32)
    assert torch.equal(load_image(rgb), torch.from_numpy(rgb.astype(np.uint8)).permute(2, 0, 1))
