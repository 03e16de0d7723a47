"""`eomt predict` end to end on images the test writes, with a tiny saved checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from eomt.cli import main
from eomt.inference.formats import rgb_to_id

GOOD = {"a": (40, 64), "b": (64, 30), "c": (50, 50)}  # stem -> (H, W)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem, (h, w) in GOOD.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if stem == "c":
            Image.fromarray(pixels[..., 0]).save(folder / f"{stem}.png")  # grayscale
        else:
            Image.fromarray(pixels).save(folder / f"{stem}.{'png' if stem == 'a' else 'jpg'}")
    full = folder / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (folder / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    full.unlink()
    (folder / "notes.png").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


def _overlay_ok(out: Path, stem: str) -> None:
    h, w = GOOD[stem]
    with Image.open(out / f"{stem}_overlay.png") as im:
        im.load()
        assert im.mode == "RGB" and im.height >= h and im.width > w  # picture + legend panel


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_predict_writes_every_file_and_reports_broken_images(
    task: str, checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    threshold = ["--threshold", "0.0"] if task == "panoptic" else []
    code = main(["predict", "--model", str(checkpoint), "--task", task, str(images), "--out", str(out),
                 "--batch-size", "2", *threshold])
    captured = capsys.readouterr()
    assert code == 1  # two images failed
    assert str(images / "truncated.jpg") in captured.err and str(images / "notes.png") in captured.err
    assert "3 image(s) done, 2 failed" in captured.out
    for stem in GOOD:
        _overlay_ok(out, stem)
    assert not list(out.glob("truncated*")) and not list(out.glob("notes*"))

    if task == "panoptic":
        doc = json.loads((out / "panoptic.json").read_text())
        assert [c["name"] for c in doc["categories"]] == ["a", "b", "c", "d", "e"]
        assert [c["isthing"] for c in doc["categories"]] == [1, 1, 1, 0, 0]
        assert sorted(Path(a["file_name"]).stem for a in doc["annotations"]) == [f"{s}_panoptic" for s in sorted(GOOD)]
        for ann in doc["annotations"]:
            stem = ann["file_name"].removesuffix("_panoptic.png")
            with Image.open(out / ann["file_name"]) as im:
                ids = rgb_to_id(np.asarray(im.convert("RGB")))
            assert ids.shape == GOOD[stem]
            info = ann["segments_info"]
            assert info, "threshold 0 keeps segments"
            assert set(np.unique(ids)) - {0} == {s["id"] for s in info}
            for s in info:
                assert set(s) >= {"id", "category_id", "isthing", "score", "area", "bbox"}
                assert s["area"] == int((ids == s["id"]).sum())
                ys, xs = np.nonzero(ids == s["id"])
                assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    elif task == "instance":
        entries = json.loads((out / "instances.json").read_text())
        stems = [Path(e["file_name"]).stem for e in entries]
        assert sorted(set(stems)) == sorted(GOOD)
        for e in entries:
            h, w = GOOD[Path(e["file_name"]).stem]
            rle = {"size": e["segmentation"]["size"], "counts": e["segmentation"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (h, w)
            assert 0 <= e["category_id"] < 5 and 0.0 <= e["score"] <= 1.0 and len(e["bbox"]) == 4
            assert isinstance(e["image_id"], int)
        assert all(stems.count(s) <= 100 for s in GOOD)
    else:
        for stem, (h, w) in GOOD.items():
            with Image.open(out / f"{stem}_semantic.png") as im:
                labels = np.asarray(im)
            assert im.mode == "L" and labels.shape == (h, w) and labels.max() < 5
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_predict_globs_single_files_and_exit_zero(checkpoint: Path, images: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), str(images / "a.png"), str(images / "b*.jpg"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a_overlay.png", "a_panoptic.png", "b_overlay.png",
                                                     "b_panoptic.png", "panoptic.json", "results.jsonl"]


def test_predict_without_matching_inputs_names_the_pattern(checkpoint: Path, tmp_path: Path, capsys) -> None:
    code = main(["predict", "--model", str(checkpoint), str(tmp_path / "nothing*.png"), "--out", str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().err
    assert "nothing*.png: no images found" in err
    assert not (tmp_path / "o").exists()


def test_predict_fp16_on_cpu_is_a_clear_error(checkpoint: Path, images: Path, tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed with CUDA")
    code = main(["predict", "--model", str(checkpoint), str(images / "a.png"), "--out", str(tmp_path / "o"),
                 "--dtype", "fp16"])
    assert code == 1 and "fp16 needs a CUDA device" in capsys.readouterr().err


def test_output_stems_never_collide() -> None:
    from eomt.commands.predict import unique_stems

    paths = [Path("x/a.png"), Path("y/a.jpg"), Path("a_2.png"), Path("z/a.png")]
    assert unique_stems(paths) == ["a", "a_2", "a_2_2", "a_3"]


def test_predict_runs_on_an_exported_onnx_file(tmp_path: Path, checkpoint: Path, images: Path) -> None:
    """`eomt predict --model file.onnx` gives the same panoptic maps as the PyTorch model."""
    from eomt.checkpoints import load_model
    from eomt.export import export_model
    from eomt.inference.predictor import Predictor

    model = load_model(checkpoint)
    onnx_path = export_model(model, tmp_path / "tiny.onnx", format="onnx")
    files = sorted(p for p in images.iterdir() if p.stem in GOOD)
    # A low class threshold so that random weights still produce segments to compare.
    ours = Predictor(model, threshold=0.0)(files)
    exported = Predictor(str(onnx_path), threshold=0.0)(files)
    assert sum(len(r.segments) for r in ours) > 0
    for a, b in zip(ours, exported):
        assert torch.equal(a.segmentation, b.segmentation)
        assert [s["category_id"] for s in a.segments] == [s["category_id"] for s in b.segments]
    out = tmp_path / "onnx_out"
    assert main(["predict", "--model", str(onnx_path), "--out", str(out), *map(str, files)]) == 0
    assert len(list(out.glob("*_overlay.png"))) == len(files)


def test_user_trial_inputs_get_clear_answers(checkpoint: Path, images: Path, tmp_path: Path, capsys, caplog) -> None:
    import logging

    from eomt.inference.io import ImageReadError, load_image

    one = str(images / "a.png")
    out = tmp_path / "out"
    # Inline category ids work as the help says; a file too.
    assert main(["predict", one, "--model", str(checkpoint), "--out", str(out), "--category-ids", "[7,8,9,10,11]"]) == 0
    doc = json.loads((out / "panoptic.json").read_text())
    assert [c["id"] for c in doc["categories"]] == [7, 8, 9, 10, 11]
    assert main(["predict", one, "--model", str(checkpoint), "--out", str(out), "--category-ids", "[1,2]"]) == 1
    assert "--category-ids [1,2]: expected a JSON list of 5 integers" in capsys.readouterr().err
    # An option that would be ignored is an error.
    assert main(["predict", one, "--model", str(checkpoint), "--out", str(out), "--tile-overlap", "10"]) == 1
    assert "--tile-overlap: 10 has no effect without --tile SIZE" in capsys.readouterr().err
    # Reusing --out without --skip-existing says that the earlier results are replaced.
    with caplog.at_level(logging.WARNING, logger="eomt"):
        assert main(["predict", str(images / "b.jpg"), "--model", str(checkpoint), "--out", str(out)]) == 0
    assert "replacing the results of 1 image(s) of an earlier run" in caplog.text
    # A 0..255 float tensor is refused instead of being read as white.
    with pytest.raises(ImageReadError, match=r"float tensor values span \[0, 254\]; expected \[0, 1\]"):
        load_image(torch.tensor([[[0.0, 254.0]]]).expand(3, 1, 2))


def test_an_instance_overlay_says_how_many_it_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from eomt.inference import visualize
    from eomt.structures import InstanceResult

    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[:, 5:10, 5:10] = True
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    result = InstanceResult(masks, torch.tensor([0, 1, 2]), torch.tensor([0.2, 0.3, 0.9]))
    captured = []
    original = visualize._with_legend
    monkeypatch.setattr(visualize, "_with_legend",
                        lambda picture, entries: captured.append([n for n, _ in entries]) or original(picture, entries))
    visualize.overlay_instances(image, result, threshold=0.5)
    assert captured == [["class 2", "(2 below score 0.5)"]]
