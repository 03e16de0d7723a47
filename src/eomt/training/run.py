"""Build the Lightning trainer from an `ExperimentConfig` and run training or evaluation.

One run lives in `train.out_dir`: `config.yaml` (the resolved config), `checkpoints/last.ckpt`
(written atomically every `checkpoint_every_n_steps`; a rerun resumes from it), CSV and
TensorBoard logs, and `model.safetensors` (the final network with its config, all `predict` needs).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from eomt.config import ExperimentConfig
from eomt.models import EoMT
from eomt.training.data_module import EoMTDataModule
from eomt.training.module import EoMTModule

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside the target, then renames it into place,
    so a process killed mid-write never leaves a truncated checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_network(cfg: ExperimentConfig) -> EoMT:
    """A fresh network, initialised from `train.init` when given: an EoMT checkpoint (of another
    label space: all but the class head) or DINOv2 weights, told apart by `checkpoints.init_from`.
    A file that is neither, or that does not fit, raises a `CheckpointError` (ValueError)."""
    network = EoMT(cfg.model)
    if not cfg.train.init:
        return network
    from eomt.checkpoints import CheckpointError, init_from

    try:
        init_from(network, cfg.train.init, load_class_head=cfg.train.load_class_head)
    except CheckpointError as e:
        raise CheckpointError(f"train.init: {e}") from None
    return network


def _loggers(out: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # One version folder per (re)start, so a resumed run never overwrites the logs of the first.
    loggers: list[Any] = [CSVLogger(out, name="logs")]
    try:
        loggers.append(TensorBoardLogger(out, name="tensorboard", default_hp_metric=False))
    except ModuleNotFoundError:
        log.warning("tensorboard/tensorboardX not installed: logging to CSV only")
    return loggers


def make_trainer(cfg: ExperimentConfig, *, progress: bool = True, extra_callbacks: list[Any] | None = None) -> pl.Trainer:
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
    precision = t.precision
    if precision == "16-mixed" and not torch.cuda.is_available():
        log.warning("train.precision=16-mixed needs CUDA; using bf16-mixed on the CPU")
        precision = "bf16-mixed"
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,
        max_epochs=t.epochs if t.max_steps <= 0 else -1,
        max_steps=t.max_steps,
        gradient_clip_val=t.grad_clip or None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=[checkpoint, *(extra_callbacks or [])],
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


def _devices(text: str) -> Any:
    text = str(text).strip()
    if text == "auto":
        return "auto"
    if "," in text:
        return [int(x) for x in text.split(",") if x]
    return int(text)


def with_dataset_labels(cfg: ExperimentConfig, dataset: Any) -> ExperimentConfig:
    """Take the label space (class names, stuff ids) from the dataset when the config names none;
    a config that names a different number of classes than the dataset has is an error."""
    names = list(getattr(dataset, "class_names", []) or [])
    if not names:
        return cfg
    m = cfg.model
    if not m.class_names:
        log.info("model: %d classes from the dataset (%s)", len(names), cfg.data.dataset)
        model = m.replace(
            num_classes=len(names), class_names=tuple(names),
            stuff_classes=tuple(getattr(dataset, "stuff_classes", ()) or ()),
        )
        return dataclasses.replace(cfg, model=model)
    if len(m.class_names) != len(names):
        raise ValueError(
            f"model.num_classes: {m.num_classes} in the config, but dataset {cfg.data.dataset} has "
            f"{len(names)} classes; remove model.class_names/num_classes to take them from the data"
        )
    return cfg


def train(cfg: ExperimentConfig, *, resume: str = "auto", progress: bool = True) -> EoMTModule:
    """Train as configured; `resume`: "auto" (from out_dir/checkpoints/last.ckpt if present),
    "never", or a checkpoint path. Returns the trained module (with `last_metrics` after validation)."""
    t = cfg.train
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(t.seed, workers=False, verbose=False)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    data = EoMTDataModule(cfg.data, cfg.model, seed=t.seed)
    data.setup("fit")
    cfg = with_dataset_labels(cfg, data.train_set)
    data.model_cfg = cfg.model
    write_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = make_trainer(cfg, progress=progress)
    module = EoMTModule(cfg.to_dict(), build_network(cfg))
    steps_per_epoch = data.steps_per_epoch(trainer.world_size)
    module.total_steps = t.max_steps if t.max_steps > 0 else steps_per_epoch * t.epochs
    if t.compile:
        module.network = torch.compile(module.network)  # type: ignore[assignment]
    ckpt_path = _resume_path(out, resume)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        from eomt.checkpoints import save_model

        network = getattr(module.network, "_orig_mod", module.network)
        save_model(network, out / "model.safetensors")
    return module


def _resume_path(out: Path, resume: str) -> str | None:
    if resume == "never":
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise FileNotFoundError(f"--resume: checkpoint {resume} not found")
    return resume


def evaluate(cfg: ExperimentConfig, checkpoint: str, *, progress: bool = True) -> tuple[dict[str, Any], bool]:
    """Metrics of the model in `checkpoint` on the config's validation split, reduced over all
    processes, and whether this process is the global rank zero (the one that should report)."""
    from eomt import checkpoints

    network = checkpoints.load_model(checkpoint)
    if network.config.num_classes != cfg.model.num_classes:
        raise ValueError(
            f"--checkpoint {checkpoint}: {network.config.num_classes} classes, the config's dataset "
            f"has {cfg.model.num_classes}"
        )
    if network.masked_attention_active:
        log.warning("%s: masked attention is not fully annealed; evaluating with it", checkpoint)
    module = EoMTModule(cfg.to_dict(), network)
    data = EoMTDataModule(cfg.data, cfg.model, seed=cfg.train.seed)
    trainer = make_trainer(cfg, progress=progress)
    trainer.validate(module, datamodule=data, verbose=False)
    return module.last_metrics, trainer.is_global_zero
