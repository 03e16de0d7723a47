"""The Lightning data module: datasets from the config, the paper's augmentation, resumable order.

The training order is a pure function of (seed, epoch): a seeded permutation, sharded across
processes, and every sample's augmentation is seeded by (seed, epoch, index). A run resumed from a
checkpoint skips the batches its epoch already consumed, so it sees exactly the data the
uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eomt.config import DataConfig, ModelConfig
from eomt.structures import Target

log = logging.getLogger(__name__)


class ResumableSampler(Sampler):
    """Seeded per-epoch permutation, sharded over `world` processes, that can skip a prefix.

    Yields `(index, epoch)` pairs so the dataset can seed the augmentation of each sample.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip_batches = 0
        # Full batches per process per epoch (drop_last semantics, equal on every process).
        self.batches_per_epoch = size // (world * batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data: {size} training images are fewer than one batch of {batch_size} "
                f"on each of {world} processes"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g)
        used = self.batches_per_epoch * self.batch_size * self.world
        mine = perm[:used][self.rank :: self.world]  # this process's shard
        start = self.skip_batches * self.batch_size
        self.skip_batches = 0  # only the first epoch after a resume is partial
        for i in mine[start:].tolist():
            yield i, self.epoch


def global_batch_positions(batch_size: int, rank: int, world: int) -> list[int]:
    """Position in the global batch of each sample of process `rank`'s batch.

    `ResumableSampler` deals every global batch of `world * batch_size` consecutive samples of the
    permutation round-robin, so local sample i is global sample `rank + world * i`.
    """
    return [rank + world * i for i in range(batch_size)]


class AugmentedDataset(Dataset):
    """Applies the training transform to `base[index]`, seeded by (seed, epoch, index)."""

    def __init__(self, base: Any, transform: Any, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Target]:
        index, epoch = key
        image, target = self.base[index]
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        )
        return self.transform(image, target, generator=g)


def train_collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack equally sized uint8 crops (B, 3, S, S); targets stay a list."""
    return torch.stack([img for img, _ in batch]), [t for _, t in batch]


def eval_collate(batch: Sequence[tuple[Any, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Images of any size as a list of uint8 (3, H, W) tensors, with their targets."""
    return [to_chw(img) for img, _ in batch], [t for _, t in batch]


def to_chw(image: Any) -> torch.Tensor:
    """uint8 HWC numpy or CHW tensor -> uint8 (3, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return image if image.shape[0] == 3 else image.permute(2, 0, 1).contiguous()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


class EoMTDataModule(pl.LightningDataModule):
    """Builds the train/val datasets named by a `DataConfig` for the model's task and input size."""

    def __init__(self, data: DataConfig, model: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.data_cfg, self.model_cfg, self.seed = data, model, seed
        self.train_set: Any = None
        self.val_set: Any = None

    def build(self, split: str) -> Any:
        """The dataset of `split`; options named `<split>_<key>` apply to that split only."""
        from eomt.data.registry import build_dataset

        options: dict[str, Any] = {}
        splits = (self.data_cfg.train_split, self.data_cfg.val_split)
        for key, value in self.data_cfg.kwargs.items():
            prefix, _, rest = key.partition("_")
            if prefix in splits and rest:
                if prefix == split:
                    options[rest] = value
            else:
                options.setdefault(key, value)
        return build_dataset(
            self.data_cfg.dataset, root=self.data_cfg.root, split=split, task=self.model_cfg.task, **options
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.build(self.data_cfg.train_split)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self.build(self.data_cfg.val_split)

    def steps_per_epoch(self, world: int = 1) -> int:
        if self.train_set is None:
            self.setup("fit")
        return len(self.train_set) // (world * self.data_cfg.batch_size)

    def train_dataloader(self) -> DataLoader:
        from eomt.data.transforms import TrainTransform

        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = ResumableSampler(len(self.train_set), self.data_cfg.batch_size, self.seed, rank, world)
        if trainer is not None and trainer.global_step:
            # Resumed: skip what the current epoch already consumed (one optimizer step per batch).
            sampler.skip_batches = trainer.global_step % sampler.batches_per_epoch
            log.info("resuming at step %d: skipping %d batches of the epoch", trainer.global_step, sampler.skip_batches)
        transform = TrainTransform(
            self.model_cfg.img_size,
            scale_range=self.data_cfg.scale_range,
            color_jitter=self.data_cfg.color_jitter,
        )
        return DataLoader(
            AugmentedDataset(self.train_set, transform, self.seed),
            batch_size=self.data_cfg.batch_size,
            sampler=sampler,
            num_workers=self.data_cfg.num_workers,
            collate_fn=train_collate,
            drop_last=True,
            persistent_workers=False,
            # Page-locked batches copy to the GPU asynchronously (the step moves them non_blocking).
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            # Worker seeds come from this generator, not the global RNG, so resuming does not
            # shift the random stream of the training step.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return DataLoader(
            self.val_set,
            batch_size=self.data_cfg.batch_size,
            # Each process evaluates its own shard (no padding duplicates); evaluators reduce.
            sampler=list(range(rank, len(self.val_set), world)),
            num_workers=self.data_cfg.num_workers,
            collate_fn=eval_collate,
        )
