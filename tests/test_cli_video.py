"""`eomt predict` on video files the test writes (PyAV): annotated video, per-frame results,
YouTube-VIS tracks, --stride / --max-frames, a corrupt video skipped, images and videos mixed,
and track ids that follow the objects of a moving scene (a briefly trained model)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

pytest.importorskip("av")

from eomt.checkpoints import save_model  # noqa: E402
from eomt.cli import main  # noqa: E402
from eomt.config import tiny_config  # noqa: E402
from eomt.data.synthetic import SyntheticScenes  # noqa: E402
from eomt.inference.formats import rgb_to_id  # noqa: E402
from eomt.inference.video_io import VideoWriter, probe_video, read_frames  # noqa: E402
from eomt.models import EoMT  # noqa: E402


def pan(image: np.ndarray, frames: int, shift: int) -> np.ndarray:
    """(T, H, W, ...) the picture moved `shift` px right per frame; the left edge column repeats."""
    w = image.shape[1]
    return np.stack([image[:, np.clip(np.arange(w) - shift * t, 0, w - 1)] for t in range(frames)])


def write_clip(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    with VideoWriter(path, fps) as video:
        for f in frames:
            video.write(f)
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = EoMT(tiny_config(task="panoptic", stuff_classes=(3, 4), class_names=("a", "b", "c", "d", "e")))
    model.set_attn_mask_probs([0.0, 0.0])
    return save_model(model, tmp_path / "tiny.safetensors")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder: clip.mp4 (8 frames, 64 x 80), a still image, a corrupt video."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    image, _ = SyntheticScenes(1, size=(64, 80), seed=1)[0]
    write_clip(folder / "clip.mp4", pan(image, 8, 3))
    Image.fromarray(image).save(folder / "still.png")
    (folder / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3 not really matroska" * 20)
    return folder


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_predict_video_writes_video_frames_and_tracks(task: str, checkpoint: Path, inputs: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), "--task", task, str(inputs), "--out", str(out),
                 "--batch-size", "3", "--threshold", "0.0", "--vis-threshold", "0.0"])
    captured = capsys.readouterr()
    assert code == 1  # the corrupt video
    assert f"skipped {inputs / 'broken.mkv'}: cannot read video" in captured.err
    assert "1 video(s) done, 1 failed, 8 frame(s)" in captured.out and "frames/s" in captured.out
    assert (out / "still_overlay.png").is_file()  # the image beside the videos is done too
    info = probe_video(out / "clip_overlay.mp4")
    assert info.frame_count == 8 and info.fps == 10.0 and info.height == 64 and info.width > 80  # + legend
    assert len(list(read_frames(out / "clip_overlay.mp4"))) == 8
    doc = json.loads((out / "clip_video.json").read_text())
    assert (doc["num_frames"], doc["stride"], doc["fps"], doc["height"], doc["width"]) == (8, 1, 10.0, 64, 80)
    assert [f["frame"] for f in doc["frames"]] == list(range(8))
    assert [f["time"] for f in doc["frames"]] == pytest.approx([t / 10 for t in range(8)])
    for frame in doc["frames"]:
        if task == "panoptic":
            with Image.open(out / frame["png"]) as im:
                ids = rgb_to_id(np.asarray(im.convert("RGB")))
            assert ids.shape == (64, 80) and {s["id"] for s in frame["segments_info"]} == set(np.unique(ids)) - {0}
            assert all(isinstance(s["track_id"], int) for s in frame["segments_info"])
        elif task == "semantic":
            with Image.open(out / frame["png"]) as im:
                labels = np.asarray(im)
            assert labels.shape == (64, 80) and frame["classes"] == sorted(np.unique(labels).tolist())
        else:
            assert frame["instances"] and all(isinstance(i["track_id"], int) for i in frame["instances"])
    if task == "instance":
        tracks = json.loads((out / "youtube_vis_results.json").read_text())
        assert tracks and {t["video_id"] for t in tracks} == {2}  # broken.mkv is video 1 (input order)
        frame_ids = {i["track_id"] for f in doc["frames"] for i in f["instances"]}
        assert {t["track_id"] for t in tracks} == frame_ids
        for t in tracks:
            assert len(t["segmentations"]) == 8 and 0 <= t["category_id"] < 5 and 0 <= t["score"] <= 1
            rle = next(s for s in t["segmentations"] if s is not None)
            assert mask_utils.decode({**rle, "counts": rle["counts"].encode()}).shape == (64, 80)
    else:
        assert not (out / "youtube_vis_results.json").exists()
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize("options, frames", [(["--stride", "3"], [0, 3, 6]),
                                             (["--stride", "2", "--max-frames", "2"], [0, 2]),
                                             (["--max-frames", "5"], [0, 1, 2, 3, 4])])
def test_stride_and_max_frames(options: list[str], frames: list[int], checkpoint: Path, inputs: Path,
                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), str(inputs / "clip.mp4"), "--out", str(out), *options])
    assert code == 0, capsys.readouterr().err
    stride = int(options[1]) if options[0] == "--stride" else 1
    info = probe_video(out / "clip_overlay.mp4")
    assert info.frame_count == len(frames) and info.fps == pytest.approx(10 / stride)
    doc = json.loads((out / "clip_video.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == frames
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == [f"{i:06d}_panoptic.png" for i in frames]


def test_skip_existing_passes_over_a_finished_video_and_redoes_it_when_an_option_changes(
        checkpoint: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    clip = inputs / "clip.mp4"
    argv = ["predict", "--model", str(checkpoint), "--task", "instance", str(clip), "--out", str(out),
            "--threshold", "0.0", "--vis-threshold", "0.0", "--max-frames", "3", "--skip-existing"]
    assert main(argv) == 0
    tracks = json.loads((out / "youtube_vis_results.json").read_text())
    stamp = (out / "clip_video.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0  # done with the same settings: not segmented again, its tracks kept
    assert "clip.mp4: already there" in capsys.readouterr().out
    assert (out / "clip_video.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "youtube_vis_results.json").read_text()) == tracks
    assert main([*argv[:-2], "2", "--skip-existing"]) == 0  # --max-frames 2: another result
    assert "already there" not in capsys.readouterr().out
    assert json.loads((out / "clip_video.json").read_text())["num_frames"] == 2


@pytest.mark.parametrize("option", ["--stride", "--max-frames"])
def test_stride_options_must_be_positive(option: str, checkpoint: Path, inputs: Path, tmp_path: Path, capsys) -> None:
    code = main(["predict", "--model", str(checkpoint), str(inputs / "clip.mp4"), "--out", str(tmp_path / "o"),
                 option, "0"])
    assert code == 1 and f"{option}: 0 must be at least 1" in capsys.readouterr().err


def test_track_ids_follow_the_moving_objects(trained_synthetic_model: tuple[Path, object], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    path, _ = trained_synthetic_model
    image, target = SyntheticScenes(1, size=128, seed=7)[0]  # a panoptic scene: things, sky, ground
    frames = pan(image, 8, 2)
    masks = pan(target.masks.permute(1, 2, 0).numpy(), 8, 2)  # (T, H, W, N): each object moves with the picture
    write_clip(tmp_path / "scene.mp4", frames)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(path), str(tmp_path / "scene.mp4"), "--out", str(out),
                 "--threshold", "0.3"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "scene_video.json").read_text())
    followed = 0
    for k in range(masks.shape[-1]):  # per ground-truth object: the track ids of the segments covering it
        ids = []
        for t, frame in enumerate(doc["frames"]):
            with Image.open(out / frame["png"]) as im:
                seg = rgb_to_id(np.asarray(im.convert("RGB")))
            truth = torch.from_numpy(masks[t, ..., k])
            for s in frame["segments_info"]:
                mine = torch.from_numpy(seg == s["id"])
                if (mine & truth).sum() > 0.5 * (mine | truth).sum():
                    ids.append(s["track_id"])
        assert len(set(ids)) <= 1, f"object {k}: track ids {ids}"
        followed += len(ids) >= 6
    assert followed >= 2  # sky and ground at least, in most frames


def test_a_videomt_checkpoint_tracks_by_its_queries(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from eomt.checkpoints import save_video_model
    from eomt.models import VidEoMT

    model = VidEoMT(tiny_config(task="instance", class_names=("a", "b", "c", "d", "e")))
    path = save_video_model(model, tmp_path / "video.safetensors")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(path), "--task", "instance", str(inputs / "clip.mp4"),
                 str(inputs / "still.png"), "--out", str(out), "--threshold", "0.0", "--vis-threshold", "0.0"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "clip_video.json").read_text())
    ids = [i["track_id"] for f in doc["frames"] for i in f["instances"]]
    assert ids and all(0 <= i < model.config.num_queries for i in ids)  # the query is the identity
    assert (out / "still_overlay.png").is_file()  # an image goes through the VidEoMT's image model
    assert main(["predict", "--model", str(path), "--task", "instance", str(inputs / "clip.mp4"), "--out",
                 str(tmp_path / "o2"), "--tile", "64"]) == 1
    assert "--tile / --compile: a VidEoMT runs whole frames" in capsys.readouterr().err
