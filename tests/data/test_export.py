"""Synthetic scenes written in the users' formats read back, through the registry, as the generator's items."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eomt.cli import build_parser, main
from eomt.data.check import check_dataset
from eomt.data.export import DEFAULT_CATEGORY_IDS, EXPORT_FORMATS, export_synthetic, split_seed
from eomt.data.registry import build_dataset
from eomt.data.synthetic import SyntheticScenes

SPLITS = {"train": 6, "val": 3}
SIZE, SEED = 64, 5
NAMES = ("circle", "square", "triangle", "cross", "sky", "ground")
SHUFFLED_IDS = {"circle": 40, "square": 3, "triangle": 17, "cross": 22, "sky": 5, "ground": 90}
IMAGE_FORMATS = [f for f in EXPORT_FORMATS if f != "ytvis"]  # ytvis writes videos: its own test below


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {f: export_synthetic(root / f, f, splits=SPLITS, size=SIZE, seed=SEED) for f in IMAGE_FORMATS}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_round_trip(out: Path, fmt: str, split: str, ids: dict[str, int] | None, exact_images: bool = True,
                       size: int | tuple[int, int] = SIZE, seed: int = SEED, n: int | None = None) -> None:
    """Every item of the exported split equals the generator's item of the same index, classes mapped."""
    task = EXPORT_FORMATS[fmt][0]
    ds = build_dataset(fmt, root=out, split=split, task=task)
    scenes = SyntheticScenes(SPLITS[split] if n is None else n, size=size, seed=split_seed(seed, split), task=task)
    # Contiguous classes of a COCO dataset follow its category ids in increasing order.
    names = list(scenes.class_names)
    order = sorted(names, key=lambda name: ids[name]) if ids is not None else names
    to_dataset = torch.tensor([order.index(name) for name in names])  # generator class -> dataset class
    assert ds.class_names == tuple(order)
    assert list(ds.stuff_classes) == sorted(order.index(names[c]) for c in scenes.stuff_classes)
    if ids is not None:
        assert ds.category_ids == tuple(ids[name] for name in order)
    else:
        assert not hasattr(ds, "category_ids")

    seen = set()
    for i in range(len(ds)):
        index = int(Path(ds.item_name(i)).stem)
        image, target = ds[i]
        ref_image, ref = scenes[index]
        if exact_images:
            np.testing.assert_array_equal(image, ref_image)
        else:
            assert image.shape == ref_image.shape
            assert np.abs(image.astype(np.int16) - ref_image).mean() < 8  # JPEG quality 95
        assert torch.equal(target.masks, ref.masks)
        assert torch.equal(target.labels, to_dataset[ref.labels])
        assert torch.equal(target.is_crowd, ref.is_crowd)
        seen.add(index)
    # Only an image with no thing left visible is missing (an instance dataset skips it).
    assert all(len(scenes[j][1]) == 0 for j in set(range(len(scenes))) - seen)

    report = check_dataset(ds)
    assert report.ok and report.errors == [], report.format()


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_exported_dataset_reads_back_as_the_generators_items(exported: dict[str, Path], fmt: str, split: str) -> None:
    ids = None if fmt == "semantic_folder" else DEFAULT_CATEGORY_IDS
    _assert_round_trip(exported[fmt], fmt, split, ids)


def test_exported_youtube_vis_reads_back_as_the_synthetic_videos(tmp_path: Path) -> None:
    from eomt.data.video_synthetic import SyntheticVideos
    from eomt.data.ytvis import YouTubeVIS

    out = export_synthetic(tmp_path / "v", "ytvis", splits={"train": 3}, size=48, seed=SEED, video_length=5)
    ds = YouTubeVIS(out / "train.json", out / "train", clip_length=None)
    videos = SyntheticVideos(3, size=48, video_length=5, clip_length=None, seed=split_seed(SEED, "train"),
                             task="instance", max_things=4)
    assert ds.class_names == NAMES[:4] and ds.category_ids == (11, 12, 17, 22) and not ds.index_errors
    for i in range(3):
        (clip, target), (ref_clip, ref) = ds[i], videos[i]
        assert clip.shape == ref_clip.shape == (5, 3, 48, 48)
        assert (clip.float() - ref_clip.float()).abs().mean() < 8  # JPEG quality 95
        assert torch.equal(target.masks, ref.masks) and torch.equal(target.labels, ref.labels)
    assert sorted(p.name for p in (out / "clips").iterdir()) == [f"train_{i:06d}.mp4" for i in range(3)]


def test_default_ids_are_the_datasets_own_and_not_contiguous(exported: dict[str, Path]) -> None:
    assert [DEFAULT_CATEGORY_IDS[n] for n in NAMES] == [11, 12, 17, 22, 31, 40]
    panoptic = build_dataset("coco_panoptic_json", root=exported["coco_panoptic_json"], split="val")
    instance = build_dataset("coco_instance_json", root=exported["coco_instance_json"], split="val")
    assert panoptic.category_ids == (11, 12, 17, 22, 31, 40) and panoptic.stuff_classes == (4, 5)
    assert instance.category_ids == (11, 12, 17, 22) and instance.class_names == NAMES[:4]
    assert (exported["semantic_folder"] / "classes.txt").read_text().split() == list(NAMES)


@pytest.mark.parametrize("fmt", ["coco_panoptic_json", "coco_instance_json"])
def test_category_ids_of_the_callers_choice_map_to_contiguous_classes(tmp_path: Path, fmt: str) -> None:
    out = export_synthetic(tmp_path / "d", fmt, splits={"train": 4}, size=48, seed=1, category_ids=SHUFFLED_IDS)
    _assert_round_trip(out, fmt, "train", SHUFFLED_IDS, size=48, seed=1, n=4)
    sequence = export_synthetic(tmp_path / "s", fmt, splits={"train": 4}, size=48, seed=1,
                                category_ids=[SHUFFLED_IDS[n] for n in NAMES])
    assert _files(sequence) == _files(out)


def test_jpeg_images_and_non_square_sizes(tmp_path: Path) -> None:
    out = export_synthetic(tmp_path / "d", "coco_panoptic_json", splits={"train": 2}, size=(40, 56), seed=2,
                           image_format="jpg")
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000000.jpg", "000001.jpg"]
    _assert_round_trip(out, "coco_panoptic_json", "train", DEFAULT_CATEGORY_IDS, exact_images=False,
                       size=(40, 56), seed=2, n=2)


def test_non_empty_folder_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(out)):
        export_synthetic(out, "semantic_folder", splits={"train": 3}, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    export_synthetic(out, "semantic_folder", splits={"train": 3}, size=32, overwrite=True)
    export_synthetic(out, "semantic_folder", splits={"train": 2}, size=32, overwrite=True)
    assert len(build_dataset("semantic_folder", root=out, split="train")) == 2  # no stale image left
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, match", [
    ({"category_ids": [1, 2, 3, 4, 5, 5]}, "distinct"),
    ({"category_ids": [1, 2, 3]}, "6 ids|expected 6"),
    ({"category_ids": {"circle": 1}}, "missing"),
    ({"category_ids": [0, 1, 2, 3, 4, 5]}, "positive"),
    ({"splits": {"train": 0}}, "images >= 1"),
    ({"splits": {"a/b": 1}}, "folder name"),
    ({"image_format": "gif"}, "image_format"),
])
def test_bad_arguments_are_errors_naming_them(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        export_synthetic(tmp_path / "d", "coco_panoptic_json", **kwargs)
    with pytest.raises(ValueError, match="semantic_folder has no category ids"):
        export_synthetic(tmp_path / "d", "semantic_folder", category_ids=DEFAULT_CATEGORY_IDS)
    with pytest.raises(ValueError, match="synthetic data is written as one of"):
        export_synthetic(tmp_path / "d", "coco_panoptic")
    assert not (tmp_path / "d").exists()


def test_cli_choices_are_the_export_formats() -> None:
    data = build_parser()._subparsers._group_actions[0].choices["data"]  # type: ignore[union-attr]
    synthetic = data._subparsers._group_actions[0].choices["synthetic"]  # type: ignore[union-attr]
    fmt = next(a for a in synthetic._actions if a.dest == "format")
    assert tuple(fmt.choices) == tuple(EXPORT_FORMATS)


@pytest.mark.parametrize("fmt", ["coco_instance_json", "semantic_folder"])
def test_cli_writes_the_library_files_and_names_the_next_command(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture
) -> None:
    lib = export_synthetic(tmp_path / "lib", fmt, splits={"train": 3, "val": 2}, size=32, seed=7)
    out = tmp_path / "cli"
    assert main(["data", "synthetic", str(out), "--format", fmt, "--train", "3", "--val", "2",
                 "--size", "32", "--seed", "7"]) == 0
    assert _files(out) == _files(lib)
    printed = capsys.readouterr().out
    assert f"eomt data check {EXPORT_FORMATS[fmt][1]} data.root={out}" in printed
    assert main(["data", "synthetic", str(out), "--format", fmt]) == 1  # not empty any more
    assert str(out) in capsys.readouterr().err


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    lib = export_synthetic(tmp_path / "lib", "coco_panoptic_json", splits={"train": 3, "val": 2}, size=32, seed=7)
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "data", "synthetic", str(out), "--format", "coco_panoptic_json",
         "--train", "3", "--val", "2", "--size", "32", "--seed", "7"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert _files(out) == _files(lib)
    assert f"next: eomt data check custom/coco_panoptic data.root={out}" in run.stdout
    assert run.stderr == ""
