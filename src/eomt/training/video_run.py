"""The parts of a run that differ between an image EoMT and a VidEoMT, so that training
(`eomt.training.run.train`) and evaluation (`eomt.training.evaluate.evaluate`) are one path each.

A `RunKind` names them: the data module, the Lightning module, how the network is made (to train:
fresh or from `train.init`; blank, for a training checkpoint to fill; from the run's final
`model.safetensors`; from a checkpoint to evaluate), how the final model is written, and what the
data check reads of a dataset. `run.IMAGE` is the image EoMT's; `VIDEO` (here) the VidEoMT's,
which a config with `data.clip_length` > 0 runs (`run.run_kind`). Everything else (the rerun plan,
the data check, config.yaml, temporary-file cleanup, the final last.ckpt, the model's
`global_step`) is the same code for both.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from torch import nn

from eomt.config import ExperimentConfig, ModelConfig
from eomt.models.video import VidEoMT
from eomt.training import preflight
from eomt.training.video_data import VideoDataModule
from eomt.training.video_module import VideoEoMTModule, build_video_network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunKind:
    """What a run of one kind of network needs (module docstring).

    data_module(data, model, seed=) and module(cfg, network, total_steps=) are classes; build(cfg,
    trust_pickle) gives the network to train, blank(model config) one whose weights a training
    checkpoint brings, saved(cfg, path) the finished run's model, load(source, trust_pickle=) a
    model to evaluate, save(network, path, extra=) writes the final model, check_set(dataset) is
    what the data check reads for a dataset (itself, or a view that can be checked).
    """

    name: str
    data_module: Callable[..., Any]
    module: Callable[..., Any]
    build: Callable[[ExperimentConfig, bool], nn.Module]
    blank: Callable[[ModelConfig], nn.Module]
    saved: Callable[[ExperimentConfig, Path], nn.Module]
    load: Callable[[str, bool], nn.Module]
    save: Callable[..., Path]
    check_set: Callable[[Any], Any]


def check_splits(kind: RunKind, data: Any, cfg: ExperimentConfig) -> list[preflight.Split]:
    """The train and val splits for `preflight.check_training_data`; one log line names the splits
    whose data is generated (nothing to read: the check passes them over)."""
    d = cfg.data
    splits = [preflight.Split(name, kind.check_set(dataset), data.spec(split))
              for name, dataset, split in (("train", data.train_set, d.train_split), ("val", data.val_set, d.val_split))]
    generated = [s.name for s in splits if not preflight.is_checkable(s.dataset)]
    if generated:
        log.info("data check (%s): %s data is generated, no files to check", ", ".join(generated), d.dataset)
    return splits


def saved_video_network(cfg: ExperimentConfig, path: Path) -> VidEoMT:
    """The VidEoMT a finished run saved (`save_video_model`'s layout) on the run's config, in eval mode."""
    from eomt.checkpoints.io import read_safetensors
    from eomt.checkpoints.videomt import UPDATER

    network = VidEoMT(cfg.model)
    state = read_safetensors(path)[0]
    network.eomt.load_state_dict({k: v for k, v in state.items() if not k.startswith(UPDATER)})
    network.query_updater.load_state_dict({k[len(UPDATER):]: v for k, v in state.items() if k.startswith(UPDATER)})
    return network.eval()


def lazy(target: str) -> Callable[..., Any]:
    """The function `module:name`, imported when first called (the checkpoint code stays out of
    the import of the training package)."""
    module, name = target.split(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


VIDEO = RunKind(
    name="video", data_module=VideoDataModule, module=VideoEoMTModule, build=build_video_network, blank=VidEoMT,
    saved=saved_video_network, load=partial(lazy("eomt.checkpoints.videomt:load_video_model"), new_updater="zero"),
    save=lazy("eomt.checkpoints.videomt:save_video_model"), check_set=VideoDataModule.check_set,
)
