"""Video instance AP (YouTube-VIS definition) and identity switches on hand-computed cases, and the
one-frame case against pycocotools' image AP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eomt.data.video import VideoTarget
from eomt.errors import InputError
from eomt.evaluation import video as video_eval
from eomt.evaluation.instance import InstanceEvaluator
from eomt.evaluation.video import VideoInstanceEvaluator, VideoInstanceResult, clip_instances, track_ious
from eomt.structures import InstanceResult, Target

H = W = 8


def _track(frames: dict[int, tuple[int, int]], t: int, size: int = 4) -> torch.Tensor:
    """(T, H, W) mask: a size x size square with its corner at (y, x) in the listed frames."""
    m = torch.zeros(t, H, W, dtype=torch.bool)
    for f, (y, x) in frames.items():
        m[f, y : y + size, x : x + size] = True
    return m


def _target(tracks: list[torch.Tensor], labels: list[int], crowd: list[bool] | None = None) -> VideoTarget:
    t = tracks[0].shape[0]
    return VideoTarget(torch.stack(tracks), torch.tensor(labels), torch.tensor(crowd or [False] * len(tracks)),
                       torch.arange(len(tracks)), torch.arange(t))


def _pred(tracks: list[torch.Tensor], labels: list[int], scores: list[float], ids: list[int]) -> VideoInstanceResult:
    return VideoInstanceResult(torch.stack(tracks), torch.tensor(labels), torch.tensor(scores), torch.tensor(ids))


def _run(pairs: list[tuple[VideoInstanceResult, VideoTarget]], num_classes: int = 2) -> dict:
    ev = VideoInstanceEvaluator(num_classes)
    for pred, target in pairs:
        ev.update([pred], [target])
    return ev.compute()


def test_track_iou_sums_intersections_and_unions_over_frames() -> None:
    gt = _track({0: (0, 0), 1: (0, 0), 2: (0, 0)}, 4)  # 3 frames of 16 pixels
    pred = _track({0: (0, 0), 1: (0, 2), 3: (4, 4)}, 4)  # 16 + 8 overlap; 16 extra in frame 3
    ious, frame = track_ious(pred[None], gt[None])
    assert ious.shape == (1, 1) and frame.shape == (4, 1, 1)
    assert ious.item() == pytest.approx((16 + 8) / (16 + 24 + 16 + 16))  # intersections / unions
    assert frame[:, 0, 0].tolist() == pytest.approx([1.0, 8 / 24, 0.0, 0.0])


def test_a_perfect_track_scores_100_without_switches() -> None:
    gt = _track({0: (0, 0), 1: (1, 1), 2: (2, 2)}, 3)
    out = _run([(_pred([gt], [0], [0.9], [7]), _target([gt], [0]))])
    assert out["ap"] == pytest.approx(100) and out["ap50"] == out["ap75"] == pytest.approx(100)
    assert out["ar1"] == pytest.approx(100) and out["ar10"] == pytest.approx(100)
    assert out["per_class"]["0"] == pytest.approx(100) and math.isnan(out["per_class"]["1"])  # no class-1 track
    assert out["id_switches"] == 0 and out["matched_frames"] == pytest.approx(100)


def test_a_track_split_between_two_ids() -> None:
    # 7 frames; id 3 follows the object in frames 0-3 (IoU 4/7 = 0.57), id 5 in frames 4-6 (3/7).
    t = 7
    gt = _track({f: (0, 0) for f in range(t)}, t)
    first, second = _track({f: (0, 0) for f in range(4)}, t), _track({f: (0, 0) for f in range(4, t)}, t)
    out = _run([(_pred([first, second], [0, 0], [0.9, 0.8], [3, 5]), _target([gt], [0]))])
    # Matched at thresholds 0.50 and 0.55 only (precision 1 there, the other track a later FP): 2 / 10.
    assert out["ap"] == pytest.approx(20) and out["ap50"] == pytest.approx(100) and out["ap75"] == 0
    assert out["id_switches"] == 1 and out["matched_frames"] == pytest.approx(100)
    # The same two ids alternating frame by frame: a switch at every change.
    alt = [_track({f: (0, 0) for f in range(t) if f % 2 == k}, t) for k in (0, 1)]
    assert _run([(_pred(alt, [0, 0], [0.9, 0.8], [3, 5]), _target([gt], [0]))])["id_switches"] == 6


def test_a_track_that_leaves_and_returns() -> None:
    t = 5
    gt = _track({0: (0, 0), 1: (0, 2), 4: (4, 4)}, t)  # gone in frames 2 and 3
    out = _run([(_pred([gt], [1], [0.7], [2]), _target([gt], [1]))])
    assert out["ap"] == pytest.approx(100) and out["id_switches"] == 0
    # Predicted in the frames it is away (10 pixels each): IoU 48 / 68 = 0.71, matched up to 0.70.
    ghost = gt.clone()
    ghost[2, 0, :8] = ghost[2, 1, :2] = ghost[3, 0, :8] = ghost[3, 1, :2] = True
    out = _run([(_pred([ghost], [1], [0.7], [2]), _target([gt], [1]))])
    assert out["ap"] == pytest.approx(50) and out["id_switches"] == 0
    # Back under another id: one switch, and no switch for the frames without a match in between.
    back = [_track({0: (0, 0), 1: (0, 2)}, t), _track({4: (4, 4)}, t)]
    out = _run([(_pred(back, [1, 1], [0.7, 0.6], [2, 9]), _target([gt], [1]))])
    assert out["id_switches"] == 1 and out["ap50"] == pytest.approx(100) and out["ap75"] == 0


def test_a_duplicate_track_is_no_switch_and_low_scores_are_no_tracks() -> None:
    t = 6
    gt = _track({f: (0, 0) for f in range(t)}, t)
    track = gt.clone()
    track[:, 3, :4] = False  # id 3 covers 12 of the 16 pixels in every frame
    dup = _track({f: (0, 0) for f in range(t) if f % 2}, t)  # id 5 covers it exactly in the odd frames
    target = _target([gt], [0])
    # Both confident: id 3 still overlaps the object where id 5 fits better, so it keeps it.
    out = _run([(_pred([track, dup], [0, 0], [0.9, 0.8], [3, 5]), target)])
    assert out["id_switches"] == 0 and out["matched_frames"] == pytest.approx(100)
    # id 3 misses the object in frame 3, where only the low-scoring id 5 overlaps it.
    track[3] = False
    pred = _pred([track, dup], [0, 0], [0.9, 0.2], [3, 5])
    out = _run([(pred, target)])
    assert out["id_switches"] == 0 and out["matched_frames"] == pytest.approx(100 * 5 / 6)
    ev = VideoInstanceEvaluator(2, track_threshold=0.0)  # every prediction a track: 3 -> 5 -> 3
    ev.update([pred], [target])
    assert ev.compute()["id_switches"] == 2 and ev.compute()["matched_frames"] == pytest.approx(100)


def test_a_wrong_class_scores_0_but_keeps_its_identity() -> None:
    gt = _track({0: (0, 0), 1: (1, 1)}, 2)
    out = _run([(_pred([gt], [1], [0.9], [0]), _target([gt], [0]))])
    assert out["ap"] == 0 and out["per_class"]["0"] == 0 and math.isnan(out["per_class"]["1"])
    assert out["id_switches"] == 0 and out["matched_frames"] == pytest.approx(100)


def test_two_videos_rank_their_predictions_together(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _track({0: (0, 0), 1: (0, 1)}, 2), _track({0: (4, 4), 1: (3, 4)}, 2)
    miss = _track({0: (0, 4), 1: (0, 4)}, 2)
    pairs = [(_pred([a], [0], [0.9], [0]), _target([a], [0])),
             (_pred([miss, b], [0, 0], [0.95, 0.5], [0, 1]), _target([b], [0]))]
    # Ranked 0.95 (FP), 0.9 (TP), 0.5 (TP): precision envelope 2/3 at every recall point.
    out = _run(pairs)
    assert out["ap"] == pytest.approx(200 / 3) and out["ar1"] == pytest.approx(50) and out["ar10"] == pytest.approx(100)
    # The state of two processes, gathered, gives the same numbers as one process.
    parts = [VideoInstanceEvaluator(2), VideoInstanceEvaluator(2)]
    for ev, (pred, target) in zip(parts, pairs):
        ev.update([pred], [target])
    monkeypatch.setattr(video_eval, "all_gather_objects", lambda records: [parts[0].records, parts[1].records])
    gathered = parts[0].compute()
    assert gathered.pop("per_class")["0"] == pytest.approx(out.pop("per_class")["0"])
    assert gathered == pytest.approx(out)


def test_crowd_tracks_are_ignored() -> None:
    a, crowd = _track({0: (0, 0), 1: (0, 0)}, 2), _track({0: (4, 4), 1: (4, 4)}, 2)
    out = _run([(_pred([a, crowd, crowd], [0, 0, 0], [0.9, 0.8, 0.7], [0, 1, 2]), _target([a, crowd], [0, 0],
                                                                                      [False, True]))])
    assert out["ap"] == pytest.approx(100) and out["id_switches"] == 0


def test_one_frame_videos_match_pycocotools_image_ap() -> None:
    g = torch.Generator().manual_seed(0)
    video, image = VideoInstanceEvaluator(3), InstanceEvaluator(3)
    for _ in range(12):
        n_gt, n_dt = int(torch.randint(1, 4, (), generator=g)), int(torch.randint(0, 6, (), generator=g))
        corners = torch.randint(0, 5, (n_gt + n_dt, 2), generator=g)
        sizes = torch.randint(2, 5, (n_gt + n_dt,), generator=g)
        masks = torch.zeros(n_gt + n_dt, H, W, dtype=torch.bool)
        for i, ((y, x), s) in enumerate(zip(corners.tolist(), sizes.tolist())):
            masks[i, y : y + s, x : x + s] = True
        gt_labels, dt_labels = torch.randint(0, 3, (n_gt,), generator=g), torch.randint(0, 3, (n_dt,), generator=g)
        near = min(n_gt, n_dt)  # the first detections are their ground truth moved by 0 or 1 pixel
        masks[n_gt : n_gt + near] = masks[:near].roll(int(torch.randint(0, 2, (), generator=g)), -1)
        dt_labels[:near] = torch.where(torch.rand(near, generator=g) < 0.7, gt_labels[:near], dt_labels[:near])
        scores = torch.rand(n_dt, generator=g)
        target = Target(masks[:n_gt], gt_labels, torch.zeros(n_gt, dtype=torch.bool))
        image.update([InstanceResult(masks[n_gt:], dt_labels, scores)], [target])
        video.update([VideoInstanceResult(masks[n_gt:, None], dt_labels, scores)],
                     [VideoTarget(masks[:n_gt, None], gt_labels, target.is_crowd, torch.arange(n_gt),
                                  torch.zeros(1, dtype=torch.long))])
    ours, ref = video.compute(), image.compute()
    assert 5 < ref["ap"] < 90 and ref["ap50"] > 20  # a mix of hits and misses, not a trivial score
    for key in ("ap", "ap50", "ap75"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert np.allclose(list(ours["per_class"].values()), list(ref["per_class"].values()), equal_nan=True)


def test_bad_input_is_named() -> None:
    gt = _track({0: (0, 0)}, 2)
    ev = VideoInstanceEvaluator(2)
    with pytest.raises(InputError, match="VideoInstanceResult.masks"):
        ev.update([_pred([gt[:1]], [0], [0.5], [0])], [_target([gt], [0])])
    with pytest.raises(InputError, match="VideoTarget.labels"):
        ev.update([_pred([gt], [0], [0.5], [0])], [_target([gt], [4])])
    assert math.isnan(ev.compute()["ap"])  # nothing seen: undefined


def test_clip_instances_follows_the_official_rule() -> None:
    # T=2, K=3 queries, C=2 classes (+ no-object): query 1 is class 0 over the clip, query 2 class 1.
    cls = torch.tensor([[[0.0, 0, 5], [6, 0, 0], [0, 2, 0]],
                        [[0.0, 0, 5], [2, 0, 0], [0, 4, 0]]])  # (T, K, C+1)
    mask = torch.full((2, 3, 2, 2), -1.0)
    mask[:, 1, 0] = 3.0  # query 1: the top row in both frames
    mask[1, 2] = 2.0  # query 2: the whole of frame 1 only
    out = clip_instances(cls, mask, (4, 4), top_k=2)
    probs = cls.mean(0).softmax(-1)
    assert out.track_ids.tolist() == [1, 2] and out.labels.tolist() == [0, 1]
    assert out.scores.tolist() == pytest.approx([probs[1, 0].item(), probs[2, 1].item()])
    assert out.masks.shape == (2, 2, 4, 4) and out.masks.dtype == torch.bool
    assert out.masks[0, :, :2].all() and not out.masks[0, :, 2:].any()  # bilinear x2, then > 0
    assert not out.masks[1, 0].any() and out.masks[1, 1].all()


def test_a_videomt_clip_goes_through_the_evaluator() -> None:
    from eomt.config import tiny_config
    from eomt.data.video_synthetic import SyntheticVideos
    from eomt.models import VidEoMT

    videos = SyntheticVideos(2, size=64, video_length=3, clip_length=None)
    model = VidEoMT(tiny_config(num_classes=videos.num_classes)).eval()
    ev = VideoInstanceEvaluator(videos.num_classes, videos.class_names)
    for clip, target in videos:
        with torch.no_grad():
            out = model(clip[None].float() / 255)  # (1, T, ...) outputs
        ev.update([clip_instances(out.class_logits[0], out.mask_logits[0], (64, 64))], [target])
    metrics = ev.compute()
    assert 0 <= metrics["ap"] <= 100 and metrics["id_switches"] >= 0 and set(metrics["per_class"]) == set(
        videos.class_names)
