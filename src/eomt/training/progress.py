"""What training shows on the console: one bar over the whole run, counted in optimizer steps.

Lightning's own bars count the batches of an epoch and read `Epoch 3/-2` when `train.max_steps`
drives the run. `StepProgressBar` reads

    train 120/2000 steps ███▋         01:02<16:10, 1.93 steps/s, epoch 3, train/loss 2.41

(done/total, elapsed < ETA, rate), starts at the resumed step, and shows a validation pass as a
transient second bar. `LogIntervalWithinEpoch` keeps Lightning's logging interval within one epoch,
so that a short epoch is logged (and not warned about) instead of never.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar
from tqdm import tqdm

log = logging.getLogger(__name__)

BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} steps {bar} {elapsed}<{remaining}, {rate_noinv_fmt}{postfix}"
EVAL_FORMAT = "{desc} {n_fmt}/{total_fmt} batches {bar} {elapsed}<{remaining}, {rate_noinv_fmt}"


def _short(value: Any) -> str:
    """A metric for the bar: floats with 4 significant digits."""
    if hasattr(value, "item"):
        value = value.item()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StepProgressBar(ProgressBar):
    """Training progress as optimizer steps done / total, with rate and ETA (see the module docstring)."""

    def __init__(self, file: IO[str] | None = None) -> None:
        super().__init__()
        self._enabled = True
        self._file = file
        self._train: tqdm | None = None
        self._eval: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        tqdm.write(sep.join(map(str, args)), file=self._file or sys.stderr)

    def _bar(self, **kwargs: Any) -> tqdm:
        return tqdm(file=self._file or sys.stderr, dynamic_ncols=True, **kwargs)

    def total_steps(self, trainer: pl.Trainer) -> int | None:
        """The run's optimizer steps: `max_steps`, else epochs x steps per epoch; None if unknown."""
        if trainer.max_steps > 0:
            return trainer.max_steps
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        self._train = self._bar(desc="train", total=self.total_steps(trainer), initial=trainer.global_step,
                                unit=" steps", bar_format=BAR_FORMAT, smoothing=0.1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._train is None:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join([f"epoch {trainer.current_epoch}", *(f"{k} {_short(v)}" for k, v in metrics.items())])
        self._train.set_postfix_str(shown, refresh=False)
        self._train.update(trainer.global_step - self._train.n)  # steps, whatever the accumulation
        if self._train.total is not None and self._train.n >= self._train.total:
            self.on_train_end(trainer, pl_module)  # done: end the line before Lightning's closing log

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        total = self.total_val_batches if trainer.state.fn == "fit" else sum(trainer.num_val_batches)
        self._eval = self._bar(desc="validate", total=int(total) if math.isfinite(total) else None,
                               unit=" batches", bar_format=EVAL_FORMAT, leave=False)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._eval is not None:
            self._eval.update(1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None


class LogIntervalWithinEpoch(Callback):
    """`log_every_n_steps` no longer than an epoch: a run of few batches per epoch logs every epoch,
    where Lightning would log never and warn that the interval exceeds the batches."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = getattr(trainer.datamodule, "steps_per_epoch", None)
        if steps is None:
            return
        per_epoch = max(1, int(steps(trainer.world_size)))
        if trainer.log_every_n_steps > per_epoch:
            log.debug("logging every %d steps (an epoch) instead of every %d", per_epoch, trainer.log_every_n_steps)
            trainer.log_every_n_steps = per_epoch


def console_callbacks(progress: bool) -> list[Callback]:
    """The callbacks of what a user sees: the step bar (when `progress`) and the logging interval."""
    return [LogIntervalWithinEpoch(), *([StepProgressBar()] if progress else [])]
