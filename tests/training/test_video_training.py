"""VidEoMT training: per-block predictions, per-clip matching, the video losses and `eomt train` on clips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eomt.checkpoints import load_video_model, save_model
from eomt.cli import main
from eomt.config import ConfigError, DataConfig, ModelConfig
from eomt.data.synthetic import SyntheticScenes
from eomt.models import EoMT
from eomt.models.video import VidEoMT
from eomt.structures import Target
from eomt.training.video_data import MovingClips, clip_collate
from eomt.training.video_losses import VideoMaskClassificationLoss
from eomt.training.video_matcher import stack_clip_targets, tracks_from_frames, video_hungarian_match

TINY = dict(embed_dim=32, depth=3, num_heads=2, num_blocks=2, img_size=(64, 64), num_queries=6, num_classes=4,
            layerscale_init=1.0, task="instance")


def test_per_block_predictions_leave_the_output_unchanged_and_read_unnormed_block_inputs() -> None:
    torch.manual_seed(0)
    model = VidEoMT(ModelConfig(**TINY)).eval()
    clip = torch.rand(2, 3, 3, 64, 64)
    plain, full = model(clip), model(clip, per_block=True)
    assert plain.mask_logits_per_block is None
    assert torch.equal(plain.mask_logits, full.mask_logits) and torch.equal(plain.class_logits, full.class_logits)
    assert len(full.mask_logits_per_block) == 2 and full.class_logits_per_block[1].shape == (2, 3, 6, 5)
    # Block 0's input on frame 0: the learned queries joined to the first blocks' tokens, NOT normed
    # (the official segmenter's `_predict(x_frame)`).
    tokens, grid, _ = model._encode(clip[:, 0])
    x = torch.cat([model.eomt.q.weight[None].expand(2, -1, -1), tokens], dim=1)
    masks, classes = model.eomt._predict(x, grid)
    torch.testing.assert_close(full.mask_logits_per_block[0][:, 0], masks)
    torch.testing.assert_close(full.class_logits_per_block[0][:, 0], classes)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, object]:
    """Two tracks over 3 frames of 16 px: A (class 0) on all frames, B (class 1) from frame 1 on."""
    masks = torch.zeros(2, 3, 16, 16, dtype=torch.bool)
    masks[0, :, :8, :8] = True
    masks[1, 1:, 8:, 8:] = True
    targets = stack_clip_targets([(masks, torch.tensor([0, 1]))])
    mask_logits = torch.full((1, 3, 4, 16, 16), -8.0)
    class_logits = torch.zeros(1, 3, 4, 3)
    mask_logits[0, :, 2] = torch.where(masks[0], 8.0, -8.0)  # query 2 is track A on every frame
    class_logits[0, :, 2, 0] = 6.0
    mask_logits[0, :, 0] = torch.where(masks[1], 8.0, -8.0)  # query 0 is track B (empty on frame 0)
    class_logits[0, :, 0, 1] = 6.0
    return class_logits, mask_logits, targets


def test_matcher_assigns_each_query_one_track_for_the_whole_clip() -> None:
    class_logits, mask_logits, targets = _hand_case()
    assert targets.present.tolist() == [[True, True, True], [False, True, True]]
    for rule in ("first_appearance", "clip"):
        [(pred, track)] = video_hungarian_match(class_logits, mask_logits, targets, num_points=256, rule=rule,
                                                generator=torch.Generator().manual_seed(0))
        assert pred.tolist() == [0, 2] and track.tolist() == [1, 0], rule
    # Official rule: a query taken by a track of an earlier frame is not offered to a later one.
    # Query 2 now predicts B best on frame 1 too, but it already holds A (frame 0): B gets another.
    mask_logits[0, 1:, 2] = torch.where(targets.frames.masks[3].bool(), 8.0, -8.0)
    class_logits[0, 1:, 2] = torch.tensor([0.0, 6.0, 0.0])
    [(pred, track)] = video_hungarian_match(class_logits, mask_logits, targets, num_points=256)
    assert dict(zip(track.tolist(), pred.tolist()))[0] == 2 and dict(zip(track.tolist(), pred.tolist()))[1] != 2


def test_tracks_from_frames_joins_segments_by_id() -> None:
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[0, :2], m[1, 4:] = True, True
    frames = [Target(m[:1], torch.tensor([3]), torch.zeros(1, dtype=torch.bool)),
              Target(m.flip(0), torch.tensor([1, 3]), torch.zeros(2, dtype=torch.bool))]
    masks, labels = tracks_from_frames(frames, [torch.tensor([7]), torch.tensor([9, 7])])
    assert labels.tolist() == [3, 1]  # ids 7, 9
    assert torch.equal(masks[0, 0], m[0]) and torch.equal(masks[0, 1], m[0]) and not masks[1, 0].any()


def test_video_losses_are_finite_on_every_block_and_decrease() -> None:
    torch.manual_seed(0)
    scenes = SyntheticScenes(2, size=64, seed=1, task="instance")
    clips, tracks = clip_collate([MovingClips(scenes, clip_length=3, seed=0)[i] for i in range(2)])
    assert clips.shape == (2, 3, 3, 64, 64) and tracks[0][0].shape[1] == 3
    model = VidEoMT(ModelConfig(**TINY)).train()
    criterion = VideoMaskClassificationLoss(4, num_points=256)
    targets = stack_clip_targets(tracks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    for _ in range(6):
        out = model(clips, per_block=True)
        total, losses = criterion.forward_blocks([*out.mask_logits_per_block, out.mask_logits],
                                                 [*out.class_logits_per_block, out.class_logits], targets)
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    # The final prediction and L2 - 1 = 1 auxiliary one (the official weight table drops the last).
    assert sorted(losses) == ["loss_cross_entropy", "loss_cross_entropy_block_-1", "loss_dice",
                              "loss_dice_block_-1", "loss_mask", "loss_mask_block_-1"]
    assert totals[-1] < 0.8 * totals[0], totals


def test_eomt_train_on_clips_from_an_image_checkpoint_writes_a_videomt(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, "task": "panoptic", "num_classes": 6})
    image = EoMT(cfg)
    init = save_model(image, tmp_path / "image.safetensors")
    out = tmp_path / "run"
    args = ["train", "--no-progress", "synthetic/video", f"train.init={init}", f"train.out_dir={out}",
            "model.embed_dim=32", "model.depth=3", "model.num_heads=2", "model.num_queries=6",
            "model.img_size=[64,64]", "data.options.num_videos=4", "data.options.val_num_videos=2",
            "data.options.video_length=4",
            "data.clip_length=3", "data.batch_size=2", "train.max_steps=3", "train.num_points=256",
            "train.warmup_steps=[0,0]", "train.lr=1e-3", "train.checkpoint_every_n_steps=0"]
    assert main(args) == 0
    video = load_video_model(out / "model.safetensors")
    assert isinstance(video, VidEoMT) and video.config.num_queries == 6 and video.config.img_size == (64, 64)
    # Trained from the image weights: close to them, not equal (3 steps at lr 1e-3).
    start = image.class_head.weight
    assert not torch.equal(video.eomt.class_head.weight, start)
    assert (video.eomt.class_head.weight - start).abs().max() < 0.05
    assert video(torch.rand(1, 3, 3, 64, 64)).mask_logits.shape == (1, 3, 6, 16, 16)


def test_clip_length_is_checked() -> None:
    assert DataConfig().clip_length == 0  # images: the image module trains
    with pytest.raises(ConfigError, match=r"data.clip_length: -1 must be >= 0"):
        DataConfig(clip_length=-1)


def test_video_data_module_serves_clips_of_images_and_of_synthetic_videos() -> None:
    from eomt.training.video_data import VideoDataModule

    model = ModelConfig(**TINY)
    stills = VideoDataModule(DataConfig(dataset="synthetic", clip_length=3, batch_size=2, num_workers=0,
                                        options=(("num_images", 4), ("size", 64))), model)
    stills.setup()
    clips, tracks = next(iter(stills.train_dataloader()))
    assert clips.shape == (2, 3, 3, 64, 64) and tracks[0][0].shape[1:] == (3, 64, 64)
    videos = VideoDataModule(DataConfig(dataset="synthetic_video", clip_length=3, options=(("num_videos", 2),)), model)
    videos.setup()
    clip, target = videos.train_set[0]
    assert clip.shape == (3, 3, 64, 64) and target.masks.shape[1:] == (3, 64, 64)
    bad = VideoDataModule(DataConfig(dataset="synthetic_video", clip_length=3, options=(("frames", 2),)), model)
    with pytest.raises(ConfigError, match="data.options: .*frames"):
        bad.setup()
