"""Clips for VidEoMT training: `MovingClips` (any image dataset made into short videos) and the data module.

`MovingClips` turns image i of a dataset into a clip of T frames in which the whole scene slides
by a per-clip velocity (wrapping around the borders, so objects leave one side and enter the
other): every segment is one track, its id the segment's index. It needs nothing but an image
dataset, so the synthetic scenes train a tiny VidEoMT end to end with no download; a dataset of
real clips plugs in by yielding the same items.

Items: `(clip uint8 (T, 3, H, W), (masks (N, T, H, W) bool, labels (N,) int64))` or
`(clip, eomt.data.video.VideoTarget)`; the loader batches clips into (B, T, 3, H, W) and keeps a
list of the B (masks, labels) track tuples. `data.dataset: synthetic_video` trains on
`eomt.data.video_synthetic.SyntheticVideos` (shapes that move, occlude, enter and leave), any other
image dataset through `MovingClips`.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from eomt.config import ConfigError, DataConfig, ModelConfig

log = logging.getLogger(__name__)

Tracks = tuple[Tensor, Tensor]


class MovingClips(Dataset):
    """Clips of `clip_length` frames from the images of `base` (module docstring).

    The velocity of clip i is drawn from (seed, i): each axis moves by an integer in
    [-max_shift, max_shift] pixels per frame. `class_names`, `stuff_classes`, `num_classes` are
    the base dataset's. Raises ValueError for clip_length < 1 or max_shift < 0.
    """

    def __init__(self, base: Any, clip_length: int, max_shift: int = 4, seed: int = 0) -> None:
        if clip_length < 1 or max_shift < 0:
            raise ValueError(f"MovingClips: clip_length={clip_length} (>= 1), max_shift={max_shift} (>= 0)")
        self.base, self.clip_length, self.max_shift, self.seed = base, clip_length, max_shift, seed
        for key in ("class_names", "stuff_classes", "num_classes"):
            if hasattr(base, key):
                setattr(self, key, getattr(base, key))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, Tracks]:
        image, target = self.base[index]
        rng = np.random.default_rng([self.seed, index])
        dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        frame = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W)
        masks = target.masks.bool()  # (N, H, W)
        steps = range(self.clip_length)
        clip = torch.stack([frame.roll((t * dy, t * dx), dims=(1, 2)) for t in steps])  # (T, 3, H, W)
        tracks = torch.stack([masks.roll((t * dy, t * dx), dims=(1, 2)) for t in steps], dim=1)  # (N, T, H, W)
        return clip, (tracks, target.labels.long())


def clip_collate(batch: list[tuple[Tensor, Any]]) -> tuple[Tensor, list[Tracks]]:
    """Items -> (clips (B, T, 3, H, W) uint8, the B (masks, labels) track tuples); a target with
    `masks` and `labels` attributes (`VideoTarget`) gives its own."""
    tracks = [(t.masks, t.labels) if hasattr(t, "masks") else t for _, t in batch]
    return torch.stack([clip for clip, _ in batch]), tracks


class VideoDataModule(pl.LightningDataModule):
    """The training clips of a `DataConfig` with `clip_length` T >= 1 (no validation loader).

    The images come from the dataset the config names (`eomt.data.registry`, as for image
    training) at the model's input size; `data.options.max_shift` (default 4) sets the motion.
    The order is a seeded shuffle per epoch (`seed`).
    """

    def __init__(self, data: DataConfig, model: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.data_cfg, self.model_cfg, self.seed = data, model, seed
        self.train_set: Any = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from eomt.training.data_module import EoMTDataModule

        options = dict(self.data_cfg.options)
        if self.data_cfg.dataset == "synthetic_video":
            from eomt.data.video_synthetic import SyntheticVideos

            options.setdefault("num_videos", 200)
            options.setdefault("seed", zlib.crc32(self.data_cfg.train_split.encode()) % 2**31)
            try:
                self.train_set = SyntheticVideos(size=self.model_cfg.img_size, clip_length=self.data_cfg.clip_length,
                                                 task=self.model_cfg.task, **options)
            except TypeError as e:  # an option SyntheticVideos does not take
                raise ConfigError(f"data.options: {e} (dataset synthetic_video)") from None
            return
        max_shift = int(options.pop("max_shift", 4))
        images = EoMTDataModule(dataclasses.replace(self.data_cfg, options=tuple(options.items())), self.model_cfg,
                                self.seed)
        base = images.build(self.data_cfg.train_split)
        self.train_set = MovingClips(base, self.data_cfg.clip_length, max_shift, self.seed)
        log.info("training clips: %d of %d frames from %s", len(self.train_set), self.data_cfg.clip_length,
                 self.data_cfg.dataset)

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimizer steps per epoch on each of `world` processes (full batches only)."""
        self.setup("fit")
        return len(self.train_set) // (world * self.data_cfg.batch_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.data_cfg.batch_size,
            shuffle=True,
            num_workers=self.data_cfg.num_workers,
            collate_fn=clip_collate,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
        )
