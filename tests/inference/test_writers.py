"""The writer table of `eomt predict`: per task, `write` puts an image's files and line in place,
`finish` merges this run's lines into the task's COCO document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eomt.inference.writers import WRITERS, InstanceWriter, PanopticWriter, SemanticWriter, make_writer
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

NAMES = ["thing", "stuff"]


def _result(task: str):
    if task == "panoptic":
        seg = torch.zeros(6, 8, dtype=torch.long)
        seg[:3, :4] = 1
        seg[3:] = 2
        segments = [{"id": 1, "category_id": 0, "isthing": True, "score": 0.9, "area": 12},
                    {"id": 2, "category_id": 1, "isthing": False, "score": 0.8, "area": 24}]
        return PanopticResult(seg, segments)
    if task == "instance":
        masks = torch.zeros(1, 6, 8, dtype=torch.bool)
        masks[0, 1:4, 2:5] = True
        return InstanceResult(masks, torch.tensor([0]), torch.tensor([0.7]))
    return SemanticResult(torch.ones(6, 8, dtype=torch.long))


def _writer(task: str, out: Path, resume: bool = False):
    sources = [out.parent / "a.png", out.parent / "b.png"]
    return make_writer(task, out, sources, ["a", "b"], [(7, "a.png"), (9, "b.png")], {"task": task}, NAMES,
                       num_classes=2, stuff_classes=[1], category_ids=[3, 5], resume=resume)


def test_the_table_has_one_writer_per_task() -> None:
    assert WRITERS == {"panoptic": PanopticWriter, "instance": InstanceWriter, "semantic": SemanticWriter}
    with pytest.raises(ValueError, match="no result writer"):
        make_writer("depth", Path("x"), [], [], [], {}, NAMES, num_classes=2)


@pytest.mark.parametrize("task,files,merged", [
    ("panoptic", ["a_overlay.png", "a_panoptic.png"], "panoptic.json"),
    ("instance", ["a_overlay.png"], "instances.json"),
    ("semantic", ["a_overlay.png", "a_semantic.png"], None),
])
def test_write_then_finish(tmp_path: Path, task: str, files: list[str], merged: str | None) -> None:
    out = tmp_path / "out"
    writer = _writer(task, out)
    image = torch.zeros(3, 6, 8, dtype=torch.uint8)
    written = writer.write(0, image, _result(task))
    assert [p.name for p in written] == files and all(p.is_file() for p in written)
    assert writer.done(0) and not writer.done(1)  # b was never written
    line = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert line["stem"] == "a" and line["image_id"] == 7 and line["outputs"] == files
    finished = writer.finish(failed=[1])
    if merged is None:
        assert finished == []
        return
    assert [p.name for p in finished] == [merged]
    doc = json.loads((out / merged).read_text())
    if task == "panoptic":
        assert [im["id"] for im in doc["images"]] == [7]
        assert [s["category_id"] for s in doc["annotations"][0]["segments_info"]] == [3, 5]
        assert [c["isthing"] for c in doc["categories"]] == [1, 0]
    else:
        assert [(e["image_id"], e["category_id"], e["file_name"]) for e in doc] == [(7, 3, "a.png")]
    assert _writer(task, out, resume=True).done(0)  # a resumed run keeps the line
    assert not _writer(task, out).done(0)  # a fresh one starts empty


def test_write_predictions_reports_each_input_and_goes_on_past_an_unreadable_one(tmp_path: Path) -> None:
    from PIL import Image

    from eomt.inference.writers import write_predictions

    class FakePredictor:  # a semantic result of the image's size, two images per call
        batch_size = 2
        calls = 0

        def predict_tensors(self, images):
            self.calls += 1
            return [SemanticResult(torch.zeros(im.shape[-2:], dtype=torch.long)) for im in images]

    good = tmp_path / "a.png"
    Image.new("RGB", (8, 6)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    writer = make_writer("semantic", tmp_path / "out", [good, bad], ["a", "b"], [(1, "a.png"), (2, "b.png")],
                         {}, NAMES, num_classes=2)
    predictor = FakePredictor()
    outcomes = list(write_predictions(predictor, writer, max_pixels=None))
    assert [o.index for o in outcomes] == [1, 0]  # the unreadable one is reported at once
    assert outcomes[0].error is not None and "b.png" in outcomes[0].error and outcomes[0].written == []
    assert outcomes[1].error is None and [p.name for p in outcomes[1].written] == ["a_overlay.png", "a_semantic.png"]
    assert predictor.calls == 1
    again = list(write_predictions(predictor, writer, max_pixels=None, resume=True))
    assert [(o.index, o.skipped) for o in again] == [(0, True), (1, False)]
