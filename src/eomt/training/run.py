"""Train as an `ExperimentConfig` says, in its run folder (evaluation: `eomt.training.evaluate`).

One run lives in `train.out_dir`: `config.yaml` (the resolved config), `checkpoints/last.ckpt`
(written atomically every `checkpoint_every_n_steps` and at the end; a rerun continues it only when
it is the same run, see `rerun`), `data_check.json` (the cached data check, see `preflight`), CSV
and TensorBoard logs, and `model.safetensors` (the final network with its config, all `predict`
needs). Evaluation writes its logs elsewhere (`eomt.training.evaluate`), never into a training run.
A config with `data.clip_length` > 0 trains a VidEoMT on clips through the same path: its data
module, Lightning module and model file are the `RunKind` of `eomt.training.video_run`.

The typed config travels through: the data module is built from `cfg.data` and the model's task
and size, the label space is read from its datasets (`LabelSpace`) and resolved into the config
before the network and the module are built, and the module gets its `total_steps` from
`TrainConfig.total_steps` at construction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from eomt import files
from eomt.config import ExperimentConfig, LabelSpace
from eomt.models import EoMT, unwrap_compiled
from eomt.training.data_module import EoMTDataModule
from eomt.training.module import EoMTModule
from eomt.training.trainer import AtomicCheckpointIO, make_trainer
from eomt.training.video_run import RunKind, lazy

__all__ = ["AtomicCheckpointIO", "build_network", "make_trainer", "run_kind", "train", "with_dataset_labels"]

log = logging.getLogger(__name__)


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


def _saved_network(cfg: ExperimentConfig, path: Path) -> EoMT:
    from eomt.checkpoints.io import read_safetensors

    network = EoMT(cfg.model)  # the same config, so the same shapes
    network.load_state_dict(read_safetensors(path)[0])
    return network.eval()


IMAGE = RunKind(
    name="image", data_module=EoMTDataModule, module=EoMTModule, build=build_network, blank=EoMT,
    saved=_saved_network, load=lazy("eomt.checkpoints:load_model"),
    save=lazy("eomt.checkpoints:save_model"), check_set=lambda dataset: dataset,
)


def run_kind(cfg: ExperimentConfig) -> RunKind:
    """The kind of run `cfg` is: an image EoMT, or a VidEoMT on clips (`data.clip_length` > 0)."""
    if cfg.data.clip_length > 0:
        from eomt.training.video_run import VIDEO

        return VIDEO
    return IMAGE


def with_dataset_labels(cfg: ExperimentConfig, dataset: Any) -> ExperimentConfig:
    """The config with the label space of `dataset` (its `LabelSpace`: names, count, stuff ids,
    category ids) wherever the config leaves it open (`ExperimentConfig.resolve_labels`); one log
    line says which. A dataset that names no classes leaves the config as it is."""
    labels = LabelSpace.of(dataset)
    if labels is None:
        return cfg
    source = f"dataset {cfg.data.dataset}"
    resolved = cfg.resolve_labels(labels, source)
    if cfg.labels_from_dataset:
        m = resolved.model
        ids = f", dataset ids {short_list(m.category_ids)}" if m.category_ids else ""
        log.info("model %s: %d classes from %s (%d things, %d stuff%s)", m.name, m.num_classes, source,
                 len(m.thing_classes), len(m.stuff_classes), ids)
    return resolved


def short_list(values: Any, limit: int = 8) -> str:
    """`[1, 2, 3, ...]`: the first `limit` values, for a log line or a message."""
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
    weights-only (`trainer.read_training_checkpoint`).
    """
    from eomt.training import preflight, rerun
    from eomt.training.video_run import check_splits

    kind = run_kind(cfg)
    t = cfg.train
    out = Path(t.out_dir)
    pl.seed_everything(t.seed, workers=False, verbose=False)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    data = kind.data_module(cfg.data, cfg.model, seed=t.seed)
    data.setup("fit")
    cfg = with_dataset_labels(cfg, data.train_set)  # the network and module are built from here on
    trainers: list[pl.Trainer] = []  # built once needed: a refusal or a finished run needs none

    def trainer_() -> pl.Trainer:
        if not trainers:
            trainers.append(make_trainer(cfg, progress=progress))
            trainers[0].callbacks += [rerun.ConfiguredOptimizerValues(), rerun.InterruptNote(out)]
        return trainers[0]

    def total_steps() -> int:
        return t.total_steps(data.steps_per_epoch(trainer_().world_size))

    plan = rerun.plan_run(out, cfg.to_dict(), resume, total_steps)
    if plan.action == "finished":
        log.info("%s", plan.message)
        # Where the run ended: its step budget, or the step of its last checkpoint.
        return _finished_module(kind, cfg, out, t.max_steps if t.max_steps > 0 else plan.step)
    # The network before anything is written, so a train.init file that does not fit stops the run
    # with the folder untouched. A resumed run takes its weights from the checkpoint, not from init.
    network = kind.blank(cfg.model) if plan.checkpoint else kind.build(cfg, trust_pickle)
    check = {}
    if t.data_check:
        splits = check_splits(kind, data, cfg)
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
        files.write_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if check:
            files.write_json(out / preflight.CACHE_NAME, check, indent=2)
    module = kind.module(cfg, network, total_steps=total_steps())
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
    if trainer.is_global_zero and t.val_every_n_epochs > 0 and not getattr(module, "last_metrics", None):
        # Lightning validates at epoch ends: a run that stops inside an epoch that is due has none.
        log.warning("no validation ran: the run ended at step %d, before an epoch end where validation is due "
                    "(train.val_every_n_epochs=%d); score the model with `eomt eval`", trainer.global_step,
                    t.val_every_n_epochs)
    if trainer.is_global_zero:
        # The step tells a rerun that this model is the end of the run (`rerun`).
        kind.save(unwrap_compiled(module.network), out / "model.safetensors", extra={"global_step": trainer.global_step})
    return module


def _finished_module(kind: RunKind, cfg: ExperimentConfig, out: Path, total_steps: int) -> EoMTModule:
    """The module of a finished run: its saved model, nothing trained (`already_finished` set)."""
    module = kind.module(cfg, kind.saved(cfg, out / "model.safetensors"), total_steps=total_steps)
    module.already_finished = True  # type: ignore[attr-defined]
    return module


