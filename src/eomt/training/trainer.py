"""The Lightning trainer of a run: devices, precision, atomic checkpoints, loggers, progress.

`make_trainer` is the one place a `TrainConfig` becomes a `pl.Trainer`, for training and for
evaluation alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from eomt import files
from eomt.config import ExperimentConfig, parse_devices, precision as precisions
from eomt.errors import InputError, MissingFileError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside the target, then renames it into place,
    so a process killed mid-write never leaves a truncated checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        # `eomt.files`: the umask's mode, and the temporary files of killed writes removed.
        files.write_atomic(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Tensors and plain containers only, whatever the caller or `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`
        asks: un-pickling a planted `last.ckpt` must not run its code (an explicit `weights_only=True`
        wins over that variable). Our checkpoints hold nothing else."""
        if not Path(path).is_file():
            raise MissingFileError(f"{path}: no such checkpoint file")
        return read_training_checkpoint(Path(path))


def _loggers(out: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # One version folder per (re)start, so a resumed run never overwrites the logs of the first.
    loggers: list[Any] = [CSVLogger(out, name="logs")]
    try:
        # Not "tensorboard/": a folder of that name in the working directory (out_dir=".") would be
        # imported as the tensorboard package by the next run.
        loggers.append(TensorBoardLogger(out, name="tb_logs", default_hp_metric=False))
    except ModuleNotFoundError:
        log.warning("tensorboard/tensorboardX not installed: logging to CSV only")
    return loggers


def make_trainer(cfg: ExperimentConfig, *, progress: bool = True, extra_callbacks: list[Any] | None = None) -> pl.Trainer:
    """The Lightning trainer of `cfg.train`: devices, precision, step budget, periodic atomic
    checkpoints in `train.out_dir/checkpoints`, CSV and TensorBoard logs, console progress."""
    t = cfg.train
    out = Path(t.out_dir)
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="step{step}",
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=0 if t.checkpoint_every_n_steps > 0 else -1,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
    )
    from eomt.training.progress import console_callbacks

    precision = lightning_precision(t.precision)
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=parse_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,
        max_epochs=t.epochs if t.max_steps <= 0 else -1,
        max_steps=t.max_steps,
        # Clipping is the module's (`on_before_optimizer_step`): Lightning refuses to clip for a
        # fused optimizer, which needs no unscaling when no GradScaler runs.
        gradient_clip_val=None,
        check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps,
        # Progress in optimizer steps (done/total, rate, ETA), whether epochs or max_steps drive the run.
        callbacks=[checkpoint, *console_callbacks(progress), *(extra_callbacks or [])],
        logger=_loggers(out),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # our samplers shard and resume themselves
        enable_progress_bar=progress,
        enable_model_summary=False,
        # No sanity validation: it would consume random numbers at a resume and change the run.
        num_sanity_val_steps=0,
        default_root_dir=out,
        deterministic=False,
    )


def lightning_precision(name: str) -> str:
    """The Lightning precision to run `train.precision` with on this machine: float16 autocast
    (`16-mixed`) needs CUDA, so without it the bfloat16 autocast row of the precision table runs
    instead, with one warning."""
    row = precisions.by_lightning(name)
    if row.autocast and row.dtype == "float16" and not torch.cuda.is_available():
        fallback = precisions.by_name("bf16-autocast").lightning[0]
        log.warning("train.precision=%s needs CUDA; using %s on the CPU", name, fallback)
        return fallback
    return name


def read_training_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint (`last.ckpt`), un-pickled weights-only: a planted file runs no code.

    `weights_only=True` is passed explicitly, which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` does not
    override; `eomt train` writes nothing but tensors and plain containers. A truncated, foreign
    or code-carrying file raises one `ValueError` line naming it (`--resume never` starts over).
    """
    import pickle

    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # not the zip format: no mmap
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise InputError(
                f"{path}: holds pickled Python objects besides tensors, which a checkpoint written by "
                "`eomt train` never does; refusing to un-pickle it (it could run code). Start over with "
                "--resume never, or remove the file"
            ) from None
        raise _unreadable(path, e) from None
    except Exception as e:
        raise _unreadable(path, e) from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a training checkpoint (found {type(ckpt).__name__}, expected a dict)")
    return ckpt


def _unreadable(path: Path, e: BaseException) -> ValueError:
    first = (str(e).strip().splitlines() or [""])[0][:100]
    return InputError(
        f"{path}: unreadable training checkpoint ({type(e).__name__}: {first}); it may be truncated "
        "(start over with --resume never, or remove the file)"
    )
