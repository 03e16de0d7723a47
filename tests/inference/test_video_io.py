"""Video files (PyAV): decode with stride / max_frames, atomic encode, unreadable files; the mask
linker's track rules; the fixed-size annotated frames; YouTube-VIS tracks; VidEoMT streaming."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from eomt.data.synthetic import SyntheticScenes  # noqa: E402
from eomt.errors import MissingFileError  # noqa: E402
from eomt.inference.tracks import MaskLinker, track_colors  # noqa: E402
from eomt.inference.video import youtube_vis_tracks  # noqa: E402
from eomt.inference.video_io import VideoReader, VideoReadError, VideoWriter, probe_video, read_frames  # noqa: E402
from eomt.inference.video_overlay import FrameAnnotator  # noqa: E402
from eomt.structures import InstanceResult, PanopticResult, SemanticResult  # noqa: E402


def moving_scene(frames: int = 8, size: tuple[int, int] = (64, 96), shift: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8: a synthetic scene panning `shift` pixels right per frame."""
    image, _ = SyntheticScenes(1, size=size, seed=3)[0]
    return np.stack([np.roll(image, shift * t, axis=1) for t in range(frames)])


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = moving_scene()
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 12) as video:
        for f in frames:
            video.write(f)
    return path, frames


def test_round_trip_keeps_frames_rate_and_pixels(clip: tuple[Path, np.ndarray]) -> None:
    path, frames = clip
    info = probe_video(path)
    assert (info.frame_count, info.height, info.width, info.fps) == (8, 64, 96, 12.0)
    decoded = list(read_frames(path))
    assert [i for i, _ in decoded] == list(range(8))
    got = torch.stack([f for _, f in decoded]).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
    assert got.dtype == np.uint8 and got.shape == frames.shape
    assert np.abs(got.astype(int) - frames).mean() < 8  # lossy H.264, but the same pictures


@pytest.mark.parametrize("stride, max_frames, expected", [(3, None, [0, 3, 6]), (3, 2, [0, 3]), (1, 5, [0, 1, 2, 3, 4]),
                                                          (10, None, [0])])
def test_stride_and_max_frames(clip: tuple[Path, np.ndarray], stride: int, max_frames: int | None,
                               expected: list[int]) -> None:
    path, frames = clip
    with VideoReader(path) as reader:
        assert reader.info.kept_frames(stride, max_frames) == len(expected)
        got = list(reader.read_frames(stride, max_frames))
    assert [i for i, _ in got] == expected
    for i, frame in got:  # the frame kept is the source frame of that index
        assert np.abs(frame.permute(1, 2, 0).numpy().astype(int) - frames[i]).mean() < 8


def test_writer_is_atomic_and_pads_odd_sizes(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(target, 5) as video:
            video.write(np.zeros((31, 45, 3), np.uint8))
            raise KeyError("stop")
    assert list(tmp_path.iterdir()) == []  # neither the video nor its temporary file
    with VideoWriter(target, 5) as video:
        for value in (0, 200):
            video.write(torch.full((3, 31, 45), value, dtype=torch.uint8))  # a (3, H, W) tensor too
        with pytest.raises(ValueError, match="frame 2 is 40 x 40; the video is 32 x 46"):
            video.write(np.zeros((40, 40, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with pytest.raises(ValueError, match="empty.mp4: no frame written"):
        with VideoWriter(tmp_path / "empty.mp4", 5):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    info = probe_video(target)
    assert (info.height, info.width, info.frame_count) == (32, 46, 2)
    last = list(read_frames(target))[-1][1]
    assert abs(float(last[:, :31, :45].float().mean()) - 200) < 4 and float(last[:, 31].float().mean()) < 40


def test_unreadable_videos_raise_one_line_naming_the_file(tmp_path: Path, clip: tuple[Path, np.ndarray]) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 50)
    with pytest.raises(VideoReadError, match=r"garbage\.mp4: cannot read video: ") as e:
        probe_video(garbage)
    assert "\n" not in str(e.value)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip[0].read_bytes()[:400])  # the header cut short
    with pytest.raises(VideoReadError, match=r"cut\.mp4: cannot "):
        list(read_frames(cut))
    with pytest.raises(MissingFileError, match="missing.mp4: no such video file"):
        probe_video(tmp_path / "missing.mp4")


def _instances(boxes: list[tuple[int, int, int, int]], labels: list[int], size: int = 64) -> InstanceResult:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for m, (y0, x0, y1, x1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return InstanceResult(masks, torch.tensor(labels), torch.linspace(0.9, 0.6, len(boxes)))


def test_linker_follows_moving_objects_and_starts_new_tracks() -> None:
    linker = MaskLinker(patience=1)
    assert linker.update(_instances([(0, 0, 20, 20), (30, 30, 60, 60)], [1, 2])) == [1, 2]
    # Both moved by 4 px and listed in the other order: each keeps its id.
    assert linker.update(_instances([(34, 30, 64, 60), (0, 4, 20, 24)], [2, 1])) == [2, 1]
    # The same place, another class: a new track; a new object: a new track; below `keep`: none.
    got = linker.update(_instances([(0, 4, 20, 24), (40, 0, 50, 10), (34, 30, 64, 60)], [3, 1, 2]),
                        keep=torch.tensor([True, True, False]))
    assert got == [3, 4, None]
    # Track 2 was missed for one frame (within patience): it comes back with its id.
    assert linker.update(_instances([(34, 32, 64, 62)], [2])) == [2]
    # Track 4 was last seen 2 frames ago (> patience 1): ended; the same object gets a new id.
    linker.update(_instances([], []))
    assert linker.update(_instances([(40, 0, 50, 10)], [1])) == [5]


def test_linker_panoptic_segments_and_semantic_classes() -> None:
    seg = torch.zeros(64, 64, dtype=torch.long)
    seg[:, :32], seg[10:20, 40:50] = 1, 2
    segments = [{"id": 1, "category_id": 0, "isthing": False, "score": 1.0},
                {"id": 2, "category_id": 3, "isthing": True, "score": 0.9}]
    linker = MaskLinker()
    assert linker.update(PanopticResult(seg, segments)) == [1, 2]
    moved = torch.zeros_like(seg)
    moved[:, :32], moved[12:22, 43:53] = 2, 1  # segment ids swapped, objects in (about) the same place
    swapped = [{**segments[1], "id": 1}, {**segments[0], "id": 2}]
    assert linker.update(PanopticResult(moved, swapped)) == [2, 1]
    labels = torch.tensor([[4, 4], [1, 4]])
    assert MaskLinker().update(SemanticResult(labels)) == [1, 4]


def test_annotated_frames_have_one_size_and_stable_track_colours() -> None:
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    annotate = FrameAnnotator(64, 64, ["a", "b", "c", "d"], alpha=1.0)
    first = annotate(image, _instances([(0, 0, 20, 20), (30, 30, 60, 60)], [1, 2]), [7, 9])
    second = annotate(image, _instances([(30, 34, 60, 64)] * 12, [2] * 12), [9] + list(range(20, 31)))
    empty = annotate(image, _instances([], []), [])
    assert first.shape == second.shape == empty.shape == (64, annotate.out_width, 3)
    assert annotate.out_width > 64  # the legend panel
    colour = track_colors([9])[0]
    assert (first[45, 45] == colour).all() and (second[45, 50] == colour).all()  # track 9, both frames
    assert (first[10, 10] == track_colors([7])[0]).all()
    semantic = annotate(image, SemanticResult(torch.tensor([[2] * 64] * 64)), [2])
    assert semantic.shape == first.shape


def test_youtube_vis_tracks_by_hand() -> None:
    rle = {"size": [4, 4], "counts": "04"}
    frames = [{"instances": [{"track_id": 2, "category_id": 5, "score": 0.8, "segmentation": rle},
                             {"track_id": None, "category_id": 1, "score": 0.1, "segmentation": rle}]},
              {"instances": []},
              {"instances": [{"track_id": 2, "category_id": 5, "score": 0.6, "segmentation": rle},
                             {"track_id": 3, "category_id": 1, "score": 0.5, "segmentation": rle}]}]
    tracks = youtube_vis_tracks(frames, video_id=4)
    assert tracks == [
        {"video_id": 4, "category_id": 5, "segmentations": [rle, None, rle], "score": 0.7, "track_id": 2},
        {"video_id": 4, "category_id": 1, "segmentations": [None, None, rle], "score": 0.5, "track_id": 3},
    ]


def test_streaming_network_equals_the_clip_call() -> None:
    from eomt.config import tiny_config
    from eomt.inference.video import StreamingNetwork
    from eomt.models.video import VidEoMT

    torch.manual_seed(0)
    model = VidEoMT(tiny_config(task="instance")).eval()
    clip = torch.randn(1, 5, 3, 64, 64)
    stream = StreamingNetwork(model)
    with torch.no_grad():
        whole = model(clip)
        parts = [stream(clip[0, :2]), stream(clip[0, 2:3]), stream(clip[0, 3:])]  # batches of frames, in order
    torch.testing.assert_close(torch.cat([p.class_logits for p in parts]), whole.class_logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([p.mask_logits for p in parts]), whole.mask_logits[0], atol=1e-5, rtol=0)
    stream.reset()
    with torch.no_grad():
        again = stream(clip[0, :2])
    torch.testing.assert_close(again.class_logits, parts[0].class_logits, atol=0, rtol=0)


def test_video_predictor_streams_a_videomt_over_batches_and_videos(clip: tuple[Path, np.ndarray]) -> None:
    from eomt.config import tiny_config
    from eomt.inference.video import VideoPredictor
    from eomt.models.video import VidEoMT

    torch.manual_seed(0)
    model = VidEoMT(tiny_config(task="instance")).eval()
    by_three = VideoPredictor(model, task="instance", batch_size=3)
    first = list(by_three(clip[0], stride=2))
    assert [f.index for f in first] == [0, 2, 4, 6] and first[0].result.masks.shape[-2:] == (64, 96)
    again = list(by_three(clip[0], stride=2))  # a second video starts from the learned queries again
    one_by_one = list(VideoPredictor(model, task="instance", batch_size=1)(clip[0], stride=2))
    for a, b, c in zip(first, again, one_by_one):
        torch.testing.assert_close(a.result.scores, b.result.scores, atol=0, rtol=0)
        torch.testing.assert_close(a.result.scores, c.result.scores, atol=1e-5, rtol=0)
    # The propagation matters: frame 2 differs from the same frame run as a first frame.
    alone = next(iter(by_three.frames([(2, first[1].image)], rate=12)))
    assert not torch.allclose(alone.result.scores, first[1].result.scores)


def test_a_videomt_tracks_by_its_queries(clip: tuple[Path, np.ndarray]) -> None:
    from eomt.config import tiny_config
    from eomt.inference.video import VideoPredictor
    from eomt.models.video import VidEoMT

    torch.manual_seed(0)
    model = VidEoMT(tiny_config(task="instance")).eval()
    frames = list(VideoPredictor(model, task="instance", track_threshold=0.0, threshold=0.0)(clip[0], max_frames=3))
    for f in frames:  # every instance's track id is the query that made it
        assert f.result.queries is not None and f.track_ids == f.result.queries.tolist()
    k = model.config.num_queries
    stuff = (3, 4)
    model = VidEoMT(tiny_config(task="panoptic", stuff_classes=stuff)).eval()
    with torch.no_grad():  # every query confident: segments of things and of stuff
        model.eomt.class_head.bias.copy_(torch.tensor([0.0, 0, 9, 9, 0, -9]))
    frames = list(VideoPredictor(model, task="panoptic", threshold=0.1, overlap_threshold=0.0)(clip[0], max_frames=2))
    kinds = {s["isthing"] for f in frames for s in f.result.segments}
    assert kinds == {True, False}  # both rules are exercised
    for f in frames:
        assert f.track_ids and len(f.track_ids) == len(f.result.segments)
        for track, segment, query in zip(f.track_ids, f.result.segments, f.result.queries.tolist()):
            assert track == (k + segment["category_id"] if segment["category_id"] in stuff else query)
