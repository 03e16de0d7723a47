"""Evaluate a checkpoint on a config's validation split with the training module's validation.

The network and its label space are the checkpoint's; the data, the recipe's post-processing
thresholds and the engine settings are the config's. The dataset's label space must match the
checkpoint's (`check_label_space`). A config with `data.clip_length` > 0 evaluates a VidEoMT on whole
videos (video AP, identity switches: `eomt.training.video_module`), through the same path
(`run.run_kind`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from eomt.config import ExperimentConfig, ModelConfig
from eomt.training.run import run_kind, short_list, with_dataset_labels
from eomt.training.trainer import make_trainer

log = logging.getLogger(__name__)


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
            f"{checkpoint}: the model's category ids {short_list(ids_model)} differ from {source}'s {short_list(ids_data)}"
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
    kind = run_kind(cfg)
    network = kind.load(checkpoint, trust_pickle=trust_pickle)
    data = kind.data_module(cfg.data, cfg.model, seed=cfg.train.seed)
    data.setup("validate")
    cfg = with_dataset_labels(cfg, data.val_set)
    check_label_space(network.config, cfg.model, checkpoint, f"dataset {cfg.data.dataset}")
    # The network is the checkpoint's; the data, recipe and post-processing are the config's.
    cfg = dataclasses.replace(cfg, model=network.config)
    if getattr(network, "masked_attention_active", False):
        log.warning("%s: masked attention is not fully annealed; evaluating with it", checkpoint)
    module = kind.module(cfg, network)
    logs = Path(log_dir) if log_dir is not None else eval_log_dir(checkpoint)
    trainer = make_trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(logs))),
                           progress=progress)
    trainer.validate(module, datamodule=data, verbose=False)
    return module.last_metrics, trainer.is_global_zero
