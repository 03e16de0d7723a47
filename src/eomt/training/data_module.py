"""The Lightning data module: datasets from the config, the paper's augmentation, resumable order.

The training order is a pure function of (seed, epoch): a seeded permutation, sharded across
processes, and every sample's augmentation is seeded by (seed, epoch, index). A run resumed from a
checkpoint skips the batches its epoch already consumed, so it sees exactly the data the
uninterrupted run would have seen (the train loader is "stateful" to Lightning for that reason).

Training starts only on data that passed the check (`preflight`); a file deleted or corrupted
after it does not stop the run: a training sample that fails to load is replaced by the next one
that loads (deterministically), a validation sample is left out of the metrics, and the main
process logs a warning naming the file and counts it (`data/skipped_samples`,
`data/skipped_val_samples`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from eomt.config import DataConfig, LabelSpace, ModelConfig
from eomt.training.loaders import (
    AugmentedDataset,
    CollateLoaded,
    ReportingLoader,
    ResumableSampler,
    Skipped,
    TolerantDataset,
    TrainLoader,
    eval_collate,
    global_batch_positions,
    train_collate,
)

__all__ = ["EoMTDataModule", "ResumableSampler", "global_batch_positions", "train_collate"]

log = logging.getLogger(__name__)


class EoMTDataModule(pl.LightningDataModule):
    """Builds the train/val datasets named by a `DataConfig` for the model's task and input size.

    Of the model's config only `task` and `img_size` (the training crop) are read: the label space
    is the data's to give (`labels`), not the module's to receive, so the module is complete as
    built and the config resolves its label space from it.
    """

    def __init__(self, data: DataConfig, model: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.data_cfg, self.seed = data, seed
        self.task, self.img_size = model.task, model.img_size
        self.train_set: Any = None
        self.val_set: Any = None
        self.skipped = {"train": 0, "val": 0}  # samples that failed to load in this process

    def options(self, split: str) -> dict[str, Any]:
        """The dataset options of `split`: options named `<split>_<key>` apply to that split only."""
        options: dict[str, Any] = {}
        splits = (self.data_cfg.train_split, self.data_cfg.val_split)
        for key, value in self.data_cfg.kwargs.items():
            prefix, _, rest = key.partition("_")
            if prefix in splits and rest:
                if prefix == split:
                    options[rest] = value
            else:
                options.setdefault(key, value)
        return options

    def spec(self, split: str) -> dict[str, Any]:
        """What names the dataset of `split`: format, root, split, task and options."""
        return {"format": self.data_cfg.dataset, "root": self.data_cfg.root, "split": split,
                "task": self.task, "options": self.options(split)}

    def build(self, split: str) -> Any:
        """The dataset of `split` (see `options`)."""
        from eomt.data.registry import build_dataset

        return build_dataset(
            self.data_cfg.dataset, root=self.data_cfg.root, split=split, task=self.task,
            **self.options(split),
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.build(self.data_cfg.train_split)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self.build(self.data_cfg.val_split)

    @property
    def labels(self) -> LabelSpace | None:
        """The label space the datasets declare (the training set's, else the validation set's);
        None when they name no classes or none is built yet."""
        for dataset in (self.train_set, self.val_set):
            labels = LabelSpace.of(dataset) if dataset is not None else None
            if labels is not None:
                return labels
        return None

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimizer steps per epoch on each of `world` processes (full batches only)."""
        if self.train_set is None:
            self.setup("fit")
        return len(self.train_set) // (world * self.data_cfg.batch_size)

    def train_dataloader(self) -> DataLoader:
        from eomt.data.transforms import TrainTransform

        sampler = ResumableSampler.for_trainer(self.trainer, len(self.train_set), self.data_cfg.batch_size, self.seed)
        transform = TrainTransform(
            self.img_size,
            scale_range=self.data_cfg.scale_range,
            color_jitter=self.data_cfg.color_jitter,
        )
        return TrainLoader(
            AugmentedDataset(self.train_set, transform, self.seed),
            batch_size=self.data_cfg.batch_size,
            sampler=sampler,
            num_workers=self.data_cfg.num_workers,
            collate_fn=CollateLoaded(train_collate),
            on_skipped=lambda notes: self.report_skipped("train", notes),
            drop_last=True,
            persistent_workers=False,
            # Page-locked batches copy to the GPU asynchronously (the step moves them non_blocking).
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
            # Worker seeds come from this generator, not the global RNG, so resuming does not
            # shift the random stream of the training step.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return ReportingLoader(
            TolerantDataset(self.val_set),
            batch_size=self.data_cfg.batch_size,
            # Each process evaluates its own shard (no padding duplicates); evaluators reduce.
            sampler=list(range(rank, len(self.val_set), world)),
            num_workers=self.data_cfg.num_workers,
            collate_fn=CollateLoaded(eval_collate),
            on_skipped=lambda notes: self.report_skipped("val", notes),
        )

    def report_skipped(self, stage: str, notes: list[Skipped]) -> None:
        """One warning per sample that failed to load, naming its file, and the running count as a
        metric (`data/skipped_samples` for training, `data/skipped_val_samples` for validation)."""
        for note in notes:
            self.skipped[stage] += 1
            if stage == "train":
                log.warning("training data: %s; replaced by %s (%d samples skipped so far)", note.describe(),
                            note.replacement, self.skipped[stage])
            else:
                log.warning("validation data: %s; left out of the metrics (%d samples left out so far)",
                            note.describe(), self.skipped[stage])
        trainer = self.trainer
        if trainer is not None:
            key = "data/skipped_samples" if stage == "train" else "data/skipped_val_samples"
            for logger in trainer.loggers:
                logger.log_metrics({key: float(self.skipped[stage])}, step=trainer.global_step)
