"""Build the Lightning trainer from an `ExperimentConfig` and run training or evaluation.

One run lives in `train.out_dir`: `config.yaml` (the resolved config), `checkpoints/last.ckpt`
(written atomically every `checkpoint_every_n_steps` and at the end; a rerun continues it only when
it is the same run, see `rerun`), `data_check.json` (the cached data check, see `preflight`), CSV
and TensorBoard logs, and `model.safetensors` (the final network with its config, all `predict`
needs). Evaluation writes its logs elsewhere (`evaluate`), never into a training run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from eomt import files
from eomt.config import ExperimentConfig, ModelConfig, parse_devices
from eomt.models import EoMT
from eomt.training.data_module import EoMTDataModule
from eomt.training.module import EoMTModule

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
        from eomt.training.rerun import read_training_checkpoint

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        return read_training_checkpoint(Path(path))


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (`eomt.files.write_atomic`)."""
    files.write_atomic(path, text)


def build_network(cfg: ExperimentConfig, trust_pickle: bool = False) -> EoMT:
    """A fresh network, initialised from `train.init` when given: an EoMT checkpoint (of another
    label space: all but the class head) or DINOv2 weights, told apart by `checkpoints.init_from`.
    A file that is neither, or that does not fit, raises a `CheckpointError` (ValueError)."""
    network = EoMT(cfg.model)
    if not cfg.train.init:
        return network
    from eomt.checkpoints import CheckpointError, init_from

    try:
        init_from(network, cfg.train.init, load_class_head=cfg.train.load_class_head, trust_pickle=trust_pickle)
    except CheckpointError as e:
        raise CheckpointError(f"train.init: {e}") from None
    return network


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

    precision = t.precision
    if precision == "16-mixed" and not torch.cuda.is_available():
        log.warning("train.precision=16-mixed needs CUDA; using bf16-mixed on the CPU")
        precision = "bf16-mixed"
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


def with_dataset_labels(cfg: ExperimentConfig, dataset: Any) -> ExperimentConfig:
    """The config with the dataset's label space (names, count, stuff ids, category ids) wherever
    the config leaves it open (`ExperimentConfig.resolve_labels`); one log line says which."""
    names = list(getattr(dataset, "class_names", []) or [])
    if not names:
        return cfg
    source = f"dataset {cfg.data.dataset}"
    resolved = cfg.resolve_labels(
        names, getattr(dataset, "stuff_classes", ()) or (), getattr(dataset, "category_ids", ()) or (), source
    )
    if cfg.labels_from_dataset:
        m = resolved.model
        ids = f", dataset ids {_short(m.category_ids)}" if m.category_ids else ""
        log.info("model %s: %d classes from %s (%d things, %d stuff%s)", m.name, m.num_classes, source,
                 len(m.thing_classes), len(m.stuff_classes), ids)
    return resolved


def _short(values: Any, limit: int = 8) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def train(cfg: ExperimentConfig, *, resume: str = "auto", progress: bool = True,
          trust_pickle: bool = False) -> EoMTModule:
    """Train as configured in `train.out_dir`, which holds one run (see `eomt.training.rerun`).

    resume: "auto" continues the run in out_dir when its config is the same (a finished one is left
    as it is), "never" starts over (the old run moves to out_dir/previous/), "force" continues with
    new values, or a checkpoint path. The data is checked first (`preflight`, cached). A refusal
    (`RunConflict`, `DataCheckFailed`) comes before anything in out_dir is written.
    Returns the trained module (with `last_metrics` after validation); for a finished run, its
    module with the saved model and `already_finished` set. trust_pickle: let the `train.init`
    file un-pickle Python objects (trusted files only); a checkpoint resumed from is always read
    weights-only (`rerun.read_training_checkpoint`).
    """
    from eomt.training import preflight, rerun

    t = cfg.train
    out = Path(t.out_dir)
    pl.seed_everything(t.seed, workers=False, verbose=False)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    data = EoMTDataModule(cfg.data, cfg.model, seed=t.seed)
    data.setup("fit")
    cfg = with_dataset_labels(cfg, data.train_set)
    data.model_cfg = cfg.model
    trainers: list[pl.Trainer] = []  # built once needed: a refusal or a finished run needs none

    def trainer_() -> pl.Trainer:
        if not trainers:
            trainers.append(make_trainer(cfg, progress=progress))
            trainers[0].callbacks.append(rerun.ConfiguredOptimizerValues())
        return trainers[0]

    def total_steps() -> int:
        return t.max_steps if t.max_steps > 0 else data.steps_per_epoch(trainer_().world_size) * t.epochs

    plan = rerun.plan_run(out, cfg.to_dict(), resume, total_steps)
    if plan.action == "finished":
        log.info("%s", plan.message)
        module = _finished_module(cfg, out)
        module.total_steps = t.max_steps if t.max_steps > 0 else plan.step  # where the run ended
        return module
    # The network before anything is written, so a train.init file that does not fit stops the run
    # with the folder untouched. A resumed run takes its weights from the checkpoint, not from init.
    network = EoMT(cfg.model) if plan.checkpoint else build_network(cfg, trust_pickle)
    check = {}
    if t.data_check:
        splits = [preflight.Split(name, dataset, data.spec(split)) for name, dataset, split in (
            ("train", data.train_set, cfg.data.train_split), ("val", data.val_set, cfg.data.val_split))]
        check = preflight.check_training_data(splits, out / preflight.CACHE_NAME, workers=cfg.data.num_workers,
                                              progress=progress)
    # The checks passed: from here on the folder is this run's.
    trainer = trainer_()
    if trainer.is_global_zero:
        if plan.move_previous:
            moved = rerun.move_previous_run(out)
            if moved is not None:
                log.info("--resume never: the previous run in %s moved to %s", out, moved)
        out.mkdir(parents=True, exist_ok=True)
        # Temporary files of writes a killed run left (a checkpoint of EoMT-L is GBs).
        for folder in (out, out / "checkpoints"):
            files.clean_stale_temps(folder)
        write_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if check:
            files.write_json(out / preflight.CACHE_NAME, check, indent=2)
    module = EoMTModule(cfg.to_dict(), network)
    module.total_steps = total_steps()
    if t.compile:
        module.network = torch.compile(module.network)  # type: ignore[assignment]
    if plan.checkpoint:
        (log.warning if plan.changed else log.info)("%s", plan.message)
    trainer.fit(module, datamodule=data, ckpt_path=plan.checkpoint)
    if trainer.interrupted:
        return module
    # The final state, whatever step the last periodic checkpoint was at: a rerun sees it finished.
    # weights_only=False: the full state (optimizer, loops), as the periodic checkpoints; said
    # explicitly, Lightning logs no "`weights_only` was not set" line.
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
    if trainer.is_global_zero:
        from eomt.checkpoints import save_model

        network = getattr(module.network, "_orig_mod", module.network)
        # The step tells a rerun that this model is the end of the run (`rerun`).
        save_model(network, out / "model.safetensors", extra={"global_step": trainer.global_step})
    return module


def _finished_module(cfg: ExperimentConfig, out: Path) -> EoMTModule:
    """The module of a finished run: its saved model, nothing trained (`already_finished` set)."""
    from eomt.checkpoints.io import read_safetensors

    network = EoMT(cfg.model)  # the same config, so the same shapes
    network.load_state_dict(read_safetensors(out / "model.safetensors")[0])
    module = EoMTModule(cfg.to_dict(), network.eval())
    module.already_finished = True  # type: ignore[attr-defined]
    return module


def check_label_space(model: ModelConfig, data: ModelConfig, checkpoint: str, source: str) -> None:
    """A checkpoint's label space must be the data's: the same class count and dataset category
    ids (a renamed class is only worth a warning). Raises ValueError naming both."""
    if model.num_classes != data.num_classes:
        raise ValueError(
            f"{checkpoint}: the model has {model.num_classes} classes, {source} has {data.num_classes}"
        )
    ids_model = model.category_ids or tuple(range(model.num_classes))
    ids_data = data.category_ids or tuple(range(data.num_classes))
    if ids_model != ids_data:
        raise ValueError(
            f"{checkpoint}: the model's category ids {_short(ids_model)} differ from {source}'s {_short(ids_data)}"
        )
    if model.class_names and data.class_names and tuple(model.class_names) != tuple(data.class_names):
        log.warning("%s: class names differ from %s's (first: %r vs %r)", checkpoint, source,
                    *next((a, b) for a, b in zip(model.class_names, data.class_names) if a != b))


def eval_log_dir(checkpoint: str, out: str | None = None) -> Path:
    """Where an evaluation logs: `eval/` beside `out` (the metrics file) when given, else beside a
    local checkpoint file, else in the working folder (a hub checkpoint). Never the folder itself:
    a `tensorboard/` log folder in the working folder would pass for the package of that name."""
    if out:
        return Path(out).parent / "eval"
    path = Path(checkpoint)
    if path.is_file():
        return path.parent / "eval"
    return path / "eval" if path.is_dir() else Path("eval")


def evaluate(cfg: ExperimentConfig, checkpoint: str, *, progress: bool = True,
             log_dir: str | Path | None = None, trust_pickle: bool = False) -> tuple[dict[str, Any], bool]:
    """Metrics of the model in `checkpoint` on the config's validation split, reduced over all
    processes, and whether this process is the global rank zero (the one that should report).
    Logs go to `log_dir` (default `eval_log_dir(checkpoint)`), not to the config's `train.out_dir`."""
    from eomt import checkpoints

    network = checkpoints.load_model(checkpoint, trust_pickle=trust_pickle)
    data = EoMTDataModule(cfg.data, cfg.model, seed=cfg.train.seed)
    data.setup("validate")
    cfg = with_dataset_labels(cfg, data.val_set)
    check_label_space(network.config, cfg.model, checkpoint, f"dataset {cfg.data.dataset}")
    # The network is the checkpoint's; the data, recipe and post-processing are the config's.
    cfg = dataclasses.replace(cfg, model=network.config)
    data.model_cfg = cfg.model
    if network.masked_attention_active:
        log.warning("%s: masked attention is not fully annealed; evaluating with it", checkpoint)
    module = EoMTModule(cfg.to_dict(), network)
    logs = Path(log_dir) if log_dir is not None else eval_log_dir(checkpoint)
    trainer = make_trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(logs))),
                           progress=progress)
    trainer.validate(module, datamodule=data, verbose=False)
    return module.last_metrics, trainer.is_global_zero
