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
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eomt.config import DataConfig, ModelConfig
from eomt.data.archives import DatasetError
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


LOAD_ERRORS = (DatasetError, OSError)  # a file gone or unreadable; anything else is a bug and raises
MAX_REPLACEMENTS = 16


class Skipped(NamedTuple):
    """A sample whose files failed to load: where, why, and the sample used instead (if any)."""

    name: str
    reason: str
    replacement: str = ""

    def describe(self) -> str:
        return self.reason if self.name in self.reason else f"{self.name}: {self.reason}"


def _item_name(base: Any, index: int) -> str:
    name = getattr(base, "item_name", None)
    return name(index) if callable(name) else f"item {index}"


def load_or_replace(base: Any, index: int) -> tuple[Any, Target, tuple[Skipped, ...]]:
    """`base[index]` or, when its files fail to load, the next sample that loads (index + 1, ...);
    with a `Skipped` note per sample passed over. Raises DatasetError after `MAX_REPLACEMENTS`."""
    notes: list[Skipped] = []
    for k in range(min(MAX_REPLACEMENTS, len(base))):
        i = (index + k) % len(base)
        try:
            image, target = base[i]
        except LOAD_ERRORS as e:
            notes.append(Skipped(_item_name(base, i), str(e)))
            continue
        return image, target, tuple(n._replace(replacement=_item_name(base, i)) for n in notes)
    raise DatasetError(f"{len(notes)} consecutive training samples failed to load, the first: {notes[0].describe()}")


class AugmentedDataset(Dataset):
    """Applies the training transform to `base[index]`, seeded by (seed, epoch, index).

    Yields (image, target, skipped): a sample whose files fail to load is replaced (`load_or_replace`),
    with the augmentation seed of the index it stands for.
    """

    def __init__(self, base: Any, transform: Any, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Target, tuple[Skipped, ...]]:
        index, epoch = key
        image, target, skipped = load_or_replace(self.base, index)
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        )
        return (*self.transform(image, target, generator=g), skipped)


class TolerantDataset(Dataset):
    """`base[i]` as (image, target, ()), or (None, None, (Skipped,)) when its files fail to load."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, Any, tuple[Skipped, ...]]:
        try:
            image, target = self.base[index]
        except LOAD_ERRORS as e:
            return None, None, (Skipped(_item_name(self.base, index), str(e)),)
        return image, target, ()


class CollateLoaded:
    """Collates (image, target, skipped) samples: `collate` over those that loaded, the notes appended."""

    def __init__(self, collate: Callable[[Sequence[tuple[Any, Target]]], Any]) -> None:
        self.collate = collate

    def __call__(self, batch: Sequence[tuple[Any, Any, tuple[Skipped, ...]]]) -> tuple[Any, ...]:
        loaded = [(image, target) for image, target, _ in batch if image is not None]
        skipped = [note for _, _, notes in batch for note in notes]
        return (*self.collate(loaded), skipped) if loaded else ([], [], skipped)


class ReportingLoader(DataLoader):
    """Yields (images, targets) batches and hands the notes of skipped samples to `on_skipped`
    (in the main process, so the warning is logged once); a batch left empty is not yielded."""

    def __init__(self, *args: Any, on_skipped: Callable[[list[Skipped]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_skipped = on_skipped

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for *batch, skipped in super().__iter__():
            if skipped and self.on_skipped is not None:
                self.on_skipped(skipped)
            if len(batch[0]):
                yield tuple(batch)


class TrainLoader(ReportingLoader):
    """The training loader. Its position is restored from the trainer's step (`ResumableSampler`), so
    its state is the order's identity only; telling Lightning it is stateful also answers its
    warning that a mid-epoch resume would not be exact."""

    def state_dict(self) -> dict[str, Any]:
        s: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {"seed": s.seed, "size": s.size, "batch_size": s.batch_size, "world": s.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        now = self.state_dict()
        if state and state != now:
            log.warning("the training order differs from the checkpoint's (%s, now %s): the resumed epoch "
                        "does not continue the interrupted one exactly", state, now)


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
                "task": self.model_cfg.task, "options": self.options(split)}

    def build(self, split: str) -> Any:
        """The dataset of `split` (see `options`)."""
        from eomt.data.registry import build_dataset

        return build_dataset(
            self.data_cfg.dataset, root=self.data_cfg.root, split=split, task=self.model_cfg.task,
            **self.options(split),
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
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
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
