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

from eomt.cli import main  # noqa: E402
from eomt.config import tiny_config  # noqa: E402
from eomt.data.synthetic import SyntheticScenes  # noqa: E402
from eomt.inference.formats import rgb_to_id  # noqa: E402
from eomt.inference.video_io import VideoWriter, probe_video, read_frames  # noqa: E402


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
    assert "0/? frames" not in captured.err  # no bar is drawn before the frame count is known
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
        scores: dict[int, list[float]] = {}  # track id -> its instances' scores
        for f in doc["frames"]:
            for i in f["instances"]:
                if i["track_id"] is not None:  # None: an empty mask
                    scores.setdefault(i["track_id"], []).append(i["score"])
        best = sorted(scores, key=lambda k: (-sum(scores[k]) / len(scores[k]), k))[:10]  # VIS_TOP_K
        assert [t["track_id"] for t in tracks] == sorted(best)
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


def test_youtube_vis_results_of_a_videomt_keep_the_tracks_below_the_vis_threshold(checkpoint: Path, inputs: Path,
                                                                                  tmp_path: Path) -> None:
    """--vis-threshold sets what is drawn; a VidEoMT's results file and track ids hold every scored
    track. An image model links only the instances drawn (a faint duplicate must not take a track)."""
    from eomt.checkpoints import load_model, save_video_model
    from eomt.models.video import VidEoMT

    video = save_video_model(VidEoMT.from_image(load_model(checkpoint)), tmp_path / "videomt.safetensors")
    docs, results, overlays = [], [], []
    for name, options in [("default", []), ("zero", ["--vis-threshold", "0"])]:
        out = tmp_path / name
        assert main(["predict", "--model", str(video), "--task", "instance", str(inputs / "clip.mp4"),
                     "--out", str(out), "--max-frames", "4", *options]) == 0
        docs.append(json.loads((out / "clip_video.json").read_text())["frames"])
        results.append(json.loads((out / "youtube_vis_results.json").read_text()))
        overlays.append(np.stack([f.numpy() for _, f in read_frames(out / "clip_overlay.mp4")]))
    tracked = {i["track_id"] for f in docs[0] for i in f["instances"]} - {None}  # the queries with a mask
    assert results[0] == results[1] and len(results[0]) == min(10, len(tracked))  # at most the best 10
    assert any(t["score"] < 0.5 for t in results[0])  # kept at the default --vis-threshold 0.5
    assert docs[0] == docs[1]  # the same track ids whatever is drawn
    assert sum(i["track_id"] is not None and i["score"] < 0.5 for f in docs[0] for i in f["instances"]) > 10
    assert not np.array_equal(overlays[0], overlays[1])  # the low-scoring instances drawn at 0 only
    out = tmp_path / "image"
    assert main(["predict", "--model", str(checkpoint), "--task", "instance", str(inputs / "clip.mp4"),
                 "--out", str(out), "--max-frames", "4"]) == 0
    frames = json.loads((out / "clip_video.json").read_text())["frames"]
    assert all((i["track_id"] is not None) == (i["score"] >= 0.5) for f in frames for i in f["instances"]
               if i["score"] < 0.5 or i["area"] > 0)


def test_youtube_vis_tracks_keep_the_best_top_k() -> None:
    from eomt.inference.video import youtube_vis_tracks

    rle = {"size": [4, 4], "counts": "04"}
    frames = [{"instances": [{"track_id": k, "category_id": 1, "score": s, "segmentation": rle}
                             for k, s in [(1, 0.2), (2, 0.9), (3, 0.1), (4, 0.2), (5, 0.6)]]}]
    assert [t["track_id"] for t in youtube_vis_tracks(frames, 1, top_k=3)] == [1, 2, 5]  # tie 0.2: the lower id
    assert [t["track_id"] for t in youtube_vis_tracks(frames, 1, top_k=None)] == [1, 2, 3, 4, 5]


def test_a_rerun_removes_only_our_stale_frame_pngs(checkpoint: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--model", str(checkpoint), str(inputs / "clip.mp4"), "--out", str(out)]
    assert main([*argv, "--stride", "2"]) == 0
    frames = out / "clip_frames"
    assert sorted(p.name for p in frames.iterdir()) == [f"{i:06d}_panoptic.png" for i in (0, 2, 4, 6)]
    foreign = ["000001_semantic.png", "notes.png", "000002_panoptic.png.bak", "12_panoptic.png"]
    for name in foreign:
        (frames / name).write_bytes(b"kept")
    assert main([*argv, "--stride", "3"]) == 0
    listed = [f["png"] for f in json.loads((out / "clip_video.json").read_text())["frames"]]
    assert listed == [f"clip_frames/{i:06d}_panoptic.png" for i in (0, 3, 6)]
    assert sorted(p.name for p in frames.iterdir()) == sorted([Path(n).name for n in listed] + foreign)


def test_a_truncated_video_warns_and_keeps_the_frames_it_decoded(checkpoint: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (30, 64, 80, 3), dtype=np.uint8)  # incompressible
    data = write_clip(tmp_path / "whole.mkv", noise).read_bytes()
    cut = tmp_path / "clip.mkv"
    cut.write_bytes(data[: len(data) // 2])  # the header (duration: 30 frames) stays, the frames stop
    out = tmp_path / "out"
    assert main(["predict", "--model", str(checkpoint), str(cut), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    doc = json.loads((out / "clip_video.json").read_text())
    assert 0 < doc["num_frames"] < 30 and doc["frames_expected"] == 30
    assert f"{cut}: {doc['num_frames']} of 30 frames decoded; the stream ends early" in err
    assert probe_video(out / "clip_overlay.mp4").frame_count == doc["num_frames"]
    assert main(["predict", "--model", str(checkpoint), str(tmp_path / "whole.mkv"), "--out", str(out),
                 "--stride", "4", "--max-frames", "5"]) == 0  # a whole file: no warning
    assert "ends early" not in capsys.readouterr().err
    assert json.loads((out / "whole_video.json").read_text())["frames_expected"] == 5


def test_instances_with_an_empty_mask_get_no_track() -> None:
    from eomt.inference.video import has_mask, query_track_ids
    from eomt.structures import InstanceResult, RLEMasks

    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:4] = masks[2, 5, 5] = True  # instance 1: empty
    for m in (masks, RLEMasks.encode(masks)):
        result = InstanceResult(m, torch.tensor([0, 1, 2]), torch.tensor([0.1, 0.9, 0.3]), torch.tensor([4, 7, 9]))
        assert has_mask(result).tolist() == [True, False, True]
        assert query_track_ids(result, has_mask(result), 10) == [4, None, 9]
