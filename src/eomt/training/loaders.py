"""The data pipeline under the data module: a resumable sharded order, seeded augmentation, and
loaders that survive files that fail to load.

The training order is a pure function of (seed, epoch): a seeded permutation, sharded across
processes (`ResumableSampler`), and every sample's augmentation is seeded by (seed, epoch, index)
(`AugmentedDataset`). A training sample that fails to load is replaced by the next one that loads
(`load_or_replace`); a validation sample is left out (`TolerantDataset`); the loaders hand the
notes of skipped samples to the main process (`ReportingLoader`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eomt.data.sources import DatasetError
from eomt.images import to_chw
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

    @classmethod
    def for_trainer(cls, trainer: Any, size: int, batch_size: int, seed: int) -> "ResumableSampler":
        """The sampler of this process of `trainer` (None: one process); a resumed trainer's
        (global_step > 0) skips the batches its current epoch already consumed (one optimizer
        step per batch), said in one log line."""
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = cls(size, batch_size, seed, rank, world)
        if trainer is not None and trainer.global_step:
            sampler.skip_batches = trainer.global_step % sampler.batches_per_epoch
            log.info("resuming at step %d: skipping %d batches of the epoch", trainer.global_step, sampler.skip_batches)
        return sampler

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
