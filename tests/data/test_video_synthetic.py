"""Synthetic videos: determinism, clips cut from their video, tracks consistent across frames,
objects that enter, leave and hide, and the registry entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eomt.classes import label_space
from eomt.data.registry import build_dataset
from eomt.data.video import sample_clip
from eomt.data.video_synthetic import SyntheticVideos

SIZE = 48


@pytest.fixture(scope="module")
def videos() -> SyntheticVideos:
    return SyntheticVideos(12, size=SIZE, video_length=10, seed=5, max_things=3)


def test_deterministic_and_clips_are_cut_from_their_video(videos: SyntheticVideos) -> None:
    frames, target = videos.video(3)
    again, target2 = SyntheticVideos(40, size=SIZE, video_length=10, seed=5, max_things=3).video(3)
    assert frames.shape == (10, 3, SIZE, SIZE) and frames.dtype == torch.uint8
    assert torch.equal(frames, again) and torch.equal(target.masks, target2.masks)
    clip, sub = videos.render(3, [2, 5, 6])
    assert torch.equal(clip, frames[[2, 5, 6]]) and sub.frame_indices.tolist() == [2, 5, 6]
    expected = target.select([2, 5, 6])
    assert torch.equal(sub.masks, expected.masks) and torch.equal(sub.track_ids, expected.track_ids)
    assert not torch.equal(videos.video(4)[0], frames)


def test_items_are_clips_of_t_frames(videos: SyntheticVideos) -> None:
    torch.manual_seed(1)
    clip, target = videos[0]
    assert clip.shape == (5, 3, SIZE, SIZE) and target.masks.shape[1:] == (5, SIZE, SIZE)
    idx = target.frame_indices.tolist()
    assert idx == list(range(idx[0], idx[0] + 5))  # consecutive frames of the 10
    assert len({tuple(videos[0][1].frame_indices.tolist()) for _ in range(8)}) > 1  # a new clip each time
    first = SyntheticVideos(2, size=SIZE, video_length=10, sampling="first")[1][1]
    assert first.frame_indices.tolist() == [0, 1, 2, 3, 4]
    whole = SyntheticVideos(2, size=SIZE, video_length=7, clip_length=None)[0]
    assert whole[0].shape[0] == 7


def test_tracks_are_consistent_across_frames(videos: SyntheticVideos) -> None:
    things = label_space("synthetic", "instance")[0]
    for i in range(len(videos)):
        frames, target = videos.video(i)
        present = target.present()  # (N, T)
        assert present.any(1).all()  # only tracks seen in the video
        assert (target.masks.sum(0) <= 1).all()  # one object per pixel
        assert target.labels.min() >= 0 and target.labels.max() < len(things)
        assert torch.equal(target.track_ids, target.track_ids.unique())
        for n in range(len(target)):
            ts = present[n].nonzero()[:, 0]
            big = [t for t in ts.tolist() if target.masks[n, t].sum() >= 12]
            colours = torch.stack([frames[t].flatten(1)[:, target.masks[n, t].flatten()].float().quantile(0.9, 1)
                                   for t in big])  # (frames, 3): the fill colour (the outline is darker)
            assert (colours - colours[0]).abs().max() < 25  # the same object in every frame
            centres = torch.stack([target.masks[n, t].nonzero().float().mean(0) for t in ts])  # (frames, 2)
            steps = (centres[1:] - centres[:-1]).norm(dim=1)
            assert (steps < 0.35 * SIZE).all(), (i, n, steps)  # smooth motion, no jumps between objects


def test_objects_enter_leave_and_hide() -> None:
    ds = SyntheticVideos(30, size=SIZE, video_length=10, seed=0)
    enters = leaves = partly_hidden = 0
    for i in range(len(ds)):
        _, target = ds.video(i)
        present = target.present()
        first = present.float().argmax(1)
        last = present.shape[1] - 1 - present.flip(1).float().argmax(1)
        enters += int((first > 0).sum())
        leaves += int((last < present.shape[1] - 1).sum())
        area = target.masks.flatten(2).sum(2).float()  # (N, T)
        partly_hidden += int(((area > 0) & (area < 0.6 * area.max(1, keepdim=True).values)).any(1).sum())
    assert enters > 0 and leaves > 0 and partly_hidden > 0
    # A clip without an object: its track is left out, and the others keep their ids.
    _, target = ds.video(0)
    sub = target.select([0])
    assert set(sub.track_ids.tolist()) <= set(target.track_ids.tolist())
    assert len(sub) == int(target.present()[:, 0].sum())


def test_panoptic_adds_sky_and_ground_tracks() -> None:
    clip, target = SyntheticVideos(1, size=SIZE, task="panoptic", clip_length=3, sampling="first")[0]
    names, stuff = label_space("synthetic", "panoptic")
    assert set(stuff) <= set(target.labels.tolist())
    assert torch.equal(target.masks.sum(0), torch.ones(3, SIZE, SIZE, dtype=torch.long))  # covers every pixel
    frame = target.frame(1)
    assert frame.masks.shape[1:] == (SIZE, SIZE) and len(frame) == len(target.frame_track_ids(1))


def test_registry_builds_clips_for_training_and_videos_for_evaluation() -> None:
    train = build_dataset("synthetic_video", split="train", num_videos=3, size=32, video_length=6)
    val = build_dataset("synthetic_video", split="val", num_videos=2, size=32, video_length=6)
    assert train[0][0].shape == (5, 3, 32, 32) and val[0][0].shape == (6, 3, 32, 32)
    assert train.class_names == label_space("synthetic", "instance")[0] and train.seed != val.seed
    with pytest.raises(Exception, match="num_image"):
        build_dataset("synthetic_video", num_image=3)


def test_sample_clip_rules() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        ranged = sample_clip(30, 5, rng, frame_range=3)
        assert len(ranged) == 5 and ranged == sorted(ranged) and ranged[-1] - ranged[0] <= 6
    assert len(sample_clip(2, 4, rng)) == 4 and set(sample_clip(2, 4, rng)) == {0, 1}
    assert len(sample_clip(3, 5, rng, frame_range=1)) == 5
    with pytest.raises(ValueError, match="clip_length"):
        sample_clip(3, 0, rng)
