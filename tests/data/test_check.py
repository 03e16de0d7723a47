import json
from collections import Counter

import numpy as np
import pytest

from eomt.data.check import check_dataset
from eomt.data.coco import COCOPanoptic
from eomt.data.user import CocoInstanceJson, CocoPanopticJson, SemanticFolder

try:
    from .fixtures import H, W, encode, panoptic_png, write_coco_panoptic, write_semantic_folder, write_user_coco
except ImportError:
    from fixtures import H, W, encode, panoptic_png, write_coco_panoptic, write_semantic_folder, write_user_coco


def _instance(root):
    return CocoInstanceJson(root / "instances.json", root / "images")


def _edit_json(path, fn):
    js = json.loads(path.read_text())
    fn(js)
    path.write_text(json.dumps(js))


def test_clean_user_data_passes_with_counts(tmp_path):
    _, expected = write_semantic_folder(tmp_path)
    report = check_dataset(SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt"))
    assert report.ok, report.format()
    want = Counter(lab for segs in expected.values() for lab, _, _ in segs)
    assert report.counts["segments_per_class"] == {"sky": want[0], "road": want[1], "car": want[2]}
    assert report.counts["images"] == 3 and report.counts["segments"] == sum(want.values())
    assert any("classes never seen: road" in w for w in report.warnings)  # labels hold 0 and 2 only
    assert report.format().endswith("OK")


def test_official_archives_pass_with_thing_and_stuff_counts(tmp_path):
    expected = write_coco_panoptic(tmp_path)
    report = check_dataset(COCOPanoptic(tmp_path, "val"), read_images=False)
    assert report.ok, report.format()
    labels = [lab for segs in expected.values() for lab, _, _ in segs]
    assert report.counts["things"] == sum(lab < 80 for lab in labels)
    assert report.counts["stuff"] == sum(lab >= 80 for lab in labels)


@pytest.mark.parametrize("read_images", [True, False])
def test_missing_image_fails_with_its_name(tmp_path, read_images):
    write_user_coco(tmp_path)
    (tmp_path / "images" / "b.jpg").unlink()
    report = check_dataset(_instance(tmp_path), read_images=read_images)
    assert not report.ok
    assert [e for e in report.errors if "images/b.jpg" in e and "not found" in e]
    assert report.counts["images_with_errors"] == 1
    assert "b.jpg" in report.format() and "FAILED" in report.format()


def test_unknown_category_fails_with_json_and_image_named(tmp_path):
    write_user_coco(tmp_path)
    _edit_json(tmp_path / "instances.json", lambda js: js["annotations"][0].update(category_id=99))
    image = {1: "b.jpg", 2: "a.jpg"}[json.loads((tmp_path / "instances.json").read_text())["annotations"][0]["image_id"]]
    report = check_dataset(_instance(tmp_path))
    assert not report.ok
    assert [e for e in report.errors if "instances.json" in e and image in e and "unknown category_id 99" in e]


def test_corrupt_image_is_named(tmp_path):
    write_user_coco(tmp_path)
    data = (tmp_path / "images" / "a.jpg").read_bytes()
    (tmp_path / "images" / "a.jpg").write_bytes(data[:40])
    report = check_dataset(_instance(tmp_path))
    assert [e for e in report.errors if "images/a.jpg: unreadable image" in e]


def test_panoptic_png_and_segments_info_disagree(tmp_path):
    write_user_coco(tmp_path)
    pan = json.loads((tmp_path / "panoptic.json").read_text())
    first = pan["annotations"][0]
    ids = np.full((H, W), first["segments_info"][0]["id"])
    ids[0, :3] = 123  # an id with no segments_info entry; the other segments vanish from the PNG
    (tmp_path / "panoptic" / first["file_name"]).write_bytes(encode(panoptic_png(ids)))
    pan["annotations"][1]["segments_info"].append(dict(pan["annotations"][1]["segments_info"][0]))
    (tmp_path / "panoptic.json").write_text(json.dumps(pan))
    report = check_dataset(CocoPanopticJson(tmp_path / "panoptic.json", tmp_path / "panoptic", tmp_path / "images"))
    png = first["file_name"]
    assert [e for e in report.errors if png in e and "[123] in the PNG are not in segments_info" in e]
    assert [e for e in report.errors if "segments_info ids" in e and f"not found in" in e and png in e]
    assert [e for e in report.errors if "repeated in segments_info" in e]


def test_semantic_label_out_of_class_list_and_missing_label(tmp_path):
    write_semantic_folder(tmp_path, names=("sky", "road"))
    (tmp_path / "labels" / "img2.png").unlink()
    report = check_dataset(SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt"))
    assert [e for e in report.errors if "labels/img1.png: label values [2] outside the class list" in e]
    assert [e for e in report.errors if "images/img2.png: no label PNG" in e]


def test_spec_builds_through_the_registry_and_reports_construction_errors(tmp_path):
    write_semantic_folder(tmp_path)
    spec = {"format": "semantic_folder", "root": tmp_path, "split": "x", "images": "images", "labels": "labels"}
    assert check_dataset(spec).ok
    bad = check_dataset(dict(spec, classes="nope.txt"))
    assert not bad.ok and "nope.txt: class list not found" in bad.errors[0]
    typo = check_dataset(dict(spec, format="semantic_foldr"))
    assert "did you mean 'semantic_folder'" in typo.errors[0]


def test_datasets_without_check_item_are_loaded(tmp_path):
    report = check_dataset({"format": "synthetic", "split": "val", "task": "panoptic", "num_images": 3, "size": 32})
    assert report.ok and report.counts["images"] == 3
    assert report.counts["things"] + report.counts["stuff"] == report.counts["segments"] > 0


def test_bad_polygon_is_reported(tmp_path):
    write_user_coco(tmp_path)
    _edit_json(tmp_path / "instances.json", lambda js: js["annotations"][1].update(segmentation=[[1, 2, 3, 4]]))
    report = check_dataset(_instance(tmp_path))
    assert [e for e in report.errors if "instances.json: annotation" in e and "polygon with 4 coordinates" in e]
