"""The YouTube-VIS reader on a tiny dataset the test writes, as a folder and as a zip: per-frame
RLE / polygon / null segmentations, crowd tracks, clips, and errors that name the file."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from eomt.data.check import check_dataset
from eomt.data.registry import build_dataset
from eomt.data.sources import DatasetError
from eomt.data.ytvis import YouTubeVIS

H, W, T = 16, 24, 3


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _dataset() -> tuple[dict, dict[str, bytes]]:
    """(the JSON, frame files by path under JPEGImages/) of two videos."""
    files, rng = {}, np.random.default_rng(0)
    videos = []
    for vid, name in ((11, "aaa"), (12, "bbb")):
        names = [f"{name}/{t:05d}.jpg" for t in range(T)]
        for n in names:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, format="JPEG")
            files[n] = buf.getvalue()
        videos.append({"id": vid, "height": H, "width": W, "length": T, "file_names": names})
    polygon = [[2.0, 2.0, 10.0, 2.0, 10.0, 8.0, 2.0, 8.0]]  # the box [2, 10) x [2, 8), as drawn by COCO
    crowd_unc = {  # uncompressed counts, as crowd regions come
        "size": [H, W], "counts": [int(c) for c in _uncompressed(_box(10, 0, 16, 6))]}
    anns = [
        {"id": 5, "video_id": 11, "category_id": 7, "iscrowd": 0,
         "segmentations": [_rle(_box(0, 0, 4, 4)), polygon, None]},
        {"id": 6, "video_id": 11, "category_id": 3, "iscrowd": 1, "segmentations": [crowd_unc] * T},
        {"id": 9, "video_id": 12, "category_id": 3, "iscrowd": 0,
         "segmentations": [None, _rle(_box(4, 4, 12, 12)), _rle(_box(5, 5, 13, 13))]},
        {"id": 10, "video_id": 12, "category_id": 3, "iscrowd": 0, "segmentations": [None]},  # wrong length
    ]
    cats = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    return {"videos": videos, "annotations": anns, "categories": cats}, files


def _uncompressed(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with zeros (the uncompressed RLE counts)."""
    flat = mask.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    js, files = _dataset()
    (tmp_path / "train.json").write_text(json.dumps(js))
    for name, data in files.items():
        path = tmp_path / "train" / "JPEGImages" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


def test_reads_whole_videos_from_a_folder(folder: Path) -> None:
    ds = build_dataset("ytvis", folder, split="train", clip_length=None)
    assert isinstance(ds, YouTubeVIS) and len(ds) == 2
    assert ds.class_names == ("dog", "cat") and ds.category_ids == (3, 7)  # sorted category ids
    assert len(ds.index_errors) == 1 and "annotation 10: 1 segmentations" in ds.index_errors[0]
    clip, target = ds[0]
    assert clip.shape == (T, 3, H, W) and clip.dtype == torch.uint8
    expected = np.asarray(Image.open(folder / "train/JPEGImages/aaa/00001.jpg").convert("RGB"))
    np.testing.assert_array_equal(clip[1].permute(1, 2, 0).numpy(), expected)
    assert target.track_ids.tolist() == [5, 6] and target.labels.tolist() == [1, 0]
    assert target.is_crowd.tolist() == [False, True]
    assert torch.equal(target.masks[0, 0], torch.from_numpy(_box(0, 0, 4, 4)))  # RLE
    assert torch.equal(target.masks[0, 1], torch.from_numpy(_box(2, 2, 8, 10)))  # polygon
    assert not target.masks[0, 2].any()  # null: absent from that frame
    assert torch.equal(target.masks[1], torch.from_numpy(_box(10, 0, 16, 6))[None].expand(T, H, W))
    assert target.present()[0].tolist() == [True, True, False]


def test_clips_for_training(folder: Path) -> None:
    ds = YouTubeVIS(folder / "train.json", folder / "train", clip_length=2, sampling="first")
    clip, target = ds[1]
    assert clip.shape == (2, 3, H, W) and target.frame_indices.tolist() == [0, 1]
    assert target.track_ids.tolist() == [9] and target.masks.shape == (1, 2, H, W)
    torch.manual_seed(0)
    random = YouTubeVIS(folder / "train.json", folder / "train", clip_length=2, frame_range=1)
    for _ in range(5):
        clip, target = random[1]
        f = target.frame_indices.tolist()
        assert len(f) == 2 and f == sorted(f) and f[1] - f[0] <= 2
        assert len(target) == 1  # track 9 (frames 1 and 2) is in every clip of two frames


def test_reads_the_same_from_its_zip(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "ytvis.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(folder / "train.json", "train/instances.json")
        for path in sorted((folder / "train").rglob("*.jpg")):
            zf.write(path, path.relative_to(folder).as_posix())
    from_zip = YouTubeVIS(archive, archive, clip_length=None)
    from_folder = YouTubeVIS(folder / "train.json", folder / "train", clip_length=None)
    assert from_zip.prefix == "train/JPEGImages/"
    for i in range(2):
        (a, ta), (b, tb) = from_zip[i], from_folder[i]
        assert torch.equal(a, b) and torch.equal(ta.masks, tb.masks) and torch.equal(ta.labels, tb.labels)


def test_errors_name_the_file(folder: Path) -> None:
    (folder / "train/JPEGImages/bbb/00002.jpg").unlink()
    ds = YouTubeVIS(folder / "train.json", folder / "train", clip_length=None)
    ds[0]  # the other video still reads
    with pytest.raises(DatasetError, match=r"bbb/00002\.jpg: file not found"):
        ds[1]
    report = check_dataset({"format": "ytvis", "root": folder, "split": "train"})  # `eomt data check`
    assert not report.ok and report.counts["images"] == 2
    assert any("bbb/00002.jpg: file not found" in e for e in report.errors)
    assert any("annotation 10: 1 segmentations" in e for e in report.errors)
    (folder / "bad.json").write_text('{"videos": [')
    with pytest.raises(DatasetError, match=r"bad\.json: invalid JSON"):
        YouTubeVIS(folder / "bad.json", folder / "train")
    (folder / "novideos.json").write_text('{"categories": [{"id": 1, "name": "a"}]}')
    with pytest.raises(DatasetError, match=r"novideos\.json: not a YouTube-VIS JSON"):
        YouTubeVIS(folder / "novideos.json", folder / "train")
    js, _ = _dataset()
    js["videos"][0]["file_names"][0] = "zzz/00000.jpg"
    (folder / "moved.json").write_text(json.dumps(js))
    with pytest.raises(DatasetError, match=r"frame zzz/00000\.jpg .* not found"):
        YouTubeVIS(folder / "moved.json", folder / "train")
