"""Training VidEoMT: the Lightning module and `train_video` (what `eomt train` runs when `data.clip_length` > 0).

The official recipe (tue-mps/videomt `train_net_video.py`, configs `ytvis19/.../videomt_online_*`):
start from an image EoMT ("segmenter") checkpoint with a new `query_updater`; clips of 5 frames;
AdamW lr 1e-4, weight decay 0.05, layer-wise decay 0.6 over the ViT blocks (embeddings at block
0's rate, the final norm, the queries, the heads and `query_updater` at the full rate), the
two-stage warm-up [500, 1000] (heads, then ViT) and poly 0.9 decay, gradient clipping 0.01, total
batch 8 clips. No masked attention, so no mask annealing. Every one of these is the config's
`train.*` value (`eomt/configs/synthetic/video.yaml` scales them to a tiny model); the loss is
`VideoMaskClassificationLoss` on every frame and every block.

Not yet here: validation (no video evaluator is wired: the run has no validation loop), resuming
a video run (`--resume` is ignored: a rerun starts over) and the data check.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch import Tensor

from eomt import files
from eomt.config import ExperimentConfig, LabelSpace
from eomt.models.video import VidEoMT
from eomt.training.data_module import global_batch_positions
from eomt.training.module import EoMTModule
from eomt.training.points import image_generators
from eomt.training.video_data import Tracks, VideoDataModule
from eomt.training.video_losses import VideoMaskClassificationLoss
from eomt.training.video_matcher import stack_clip_targets

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "eomt.backbone."  # the ViT's parameters inside a VidEoMT


class VideoEoMTModule(EoMTModule):
    """Trains a `VidEoMT` on clips (B, T, 3, H, W) with their tracks, as configured by `config`.

    The image module's optimizer step hooks (gradient clipping, divergence checks, checkpoint
    hooks) are reused; the network, the loss, the optimizer groups and the training step are the
    video ones. `network` defaults to a fresh VidEoMT of `config.model`. The optimizer is the image
    module's (AdamW over the official LLRD groups of the ViT, found under `backbone_prefix`; the
    propagation layer at the full rate), warm-up and poly decay stepped per optimizer step.
    """

    backbone_prefix = BACKBONE_PREFIX

    def __init__(self, config: ExperimentConfig | dict[str, Any], network: VidEoMT | None = None,
                 total_steps: int = 1) -> None:
        cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
        network = network if network is not None else VidEoMT(cfg.model)
        super().__init__(cfg, network, total_steps)  # type: ignore[arg-type]
        t = self.cfg.train
        network.eomt.gradient_checkpointing = t.activation_checkpointing
        self.criterion = VideoMaskClassificationLoss(  # type: ignore[assignment]
            self.cfg.model.num_classes, num_points=t.num_points, oversample_ratio=t.oversample_ratio,
            importance_sample_ratio=t.importance_sample_ratio, mask_weight=t.mask_weight,
            dice_weight=t.dice_weight, class_weight=t.class_weight, no_object_weight=t.no_object_weight,
        )

    def freeze_backbone(self) -> None:
        """Freeze the ViT; the queries, heads, mask module and `query_updater` train."""
        for name, param in self.network.named_parameters():
            if name.startswith(BACKBONE_PREFIX):
                param.requires_grad_(False)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Nothing to anneal: VidEoMT has no masked attention."""

    def training_step(self, batch: tuple[Tensor, list[Tracks]], batch_idx: int) -> Tensor:
        """Loss of a batch of clips (B, T, 3, H, W) and their tracks, on every frame and block."""
        clips, tracks = batch
        world = self.trainer.world_size if self._trainer is not None else 1
        positions = global_batch_positions(clips.shape[0], self.global_rank, world)
        # One generator per clip, seeded by (seed, step, place in the global batch): the points of
        # a clip do not depend on how the batch is split over processes.
        generators = image_generators(self.cfg.train.seed, self.global_step, positions, self.device)
        targets = stack_clip_targets([(m.to(self.device), lab.to(self.device)) for m, lab in tracks])
        out = self.network(clips, per_block=True)
        masks = [*out.mask_logits_per_block, out.mask_logits]
        classes = [*out.class_logits_per_block, out.class_logits]
        total, losses = self.criterion.forward_blocks(masks, classes, targets, generator=generators)
        self.log_training_loss(total, losses, clips.shape[0])
        return total


def build_video_network(cfg: ExperimentConfig, trust_pickle: bool = False) -> VidEoMT:
    """A VidEoMT of `cfg.model`: from `train.init` when given (an image EoMT checkpoint, whose
    `query_updater` starts new as in the official recipe, or a VidEoMT checkpoint), else fresh."""
    if not cfg.train.init:
        return VidEoMT(cfg.model)
    from eomt.checkpoints import CheckpointError
    from eomt.checkpoints.videomt import load_video_model

    try:
        return load_video_model(cfg.train.init, config=cfg.model, trust_pickle=trust_pickle).train()
    except CheckpointError as e:
        raise CheckpointError(f"train.init: {e}") from None


def train_video(cfg: ExperimentConfig, *, progress: bool = True, trust_pickle: bool = False) -> VideoEoMTModule:
    """Train a VidEoMT as `cfg` says (`data.clip_length` > 0) in `train.out_dir`: writes config.yaml,
    Lightning checkpoints and logs, and `model.safetensors` (a VidEoMT file, `load_video_model` reads it)."""
    from eomt.checkpoints.videomt import save_video_model
    from eomt.training.trainer import make_trainer

    t = cfg.train
    out = Path(t.out_dir)
    pl.seed_everything(t.seed, workers=False, verbose=False)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    data = VideoDataModule(cfg.data, cfg.model, seed=t.seed)
    data.setup("fit")
    labels = LabelSpace.of(data.train_set)  # as `run.with_dataset_labels` (which imports this module)
    if labels is not None:
        cfg = cfg.resolve_labels(labels, f"dataset {cfg.data.dataset}")
    network = build_video_network(cfg, trust_pickle)
    trainer = make_trainer(cfg, progress=progress)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        files.write_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    module = VideoEoMTModule(cfg, network, total_steps=t.total_steps(data.steps_per_epoch(trainer.world_size)))
    trainer.fit(module, datamodule=data)
    if trainer.interrupted:
        return module
    if trainer.is_global_zero:
        save_video_model(module.network, out / "model.safetensors", extra={"global_step": trainer.global_step})  # type: ignore[arg-type]
    return module
