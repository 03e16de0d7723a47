"""Training VidEoMT: the Lightning module (what `eomt train` builds when `data.clip_length` > 0).

The official recipe (tue-mps/videomt `train_net_video.py`, configs `ytvis19/.../videomt_online_*`):
start from an image EoMT ("segmenter") checkpoint with a new `query_updater`; clips of 5 frames;
AdamW lr 1e-4, weight decay 0.05, layer-wise decay 0.6 over the ViT blocks (embeddings at block
0's rate, the final norm, the queries, the heads and `query_updater` at the full rate), the
two-stage warm-up [500, 1000] (heads, then ViT) and poly 0.9 decay, gradient clipping 0.01, total
batch 8 clips. No masked attention, so no mask annealing. Every one of these is the config's
`train.*` value (`eomt/configs/synthetic/video.yaml` scales them to a tiny model); the loss is
`VideoMaskClassificationLoss` on every frame and every block.

The run around it is the image run's (`eomt.training.run.train`: resume, data check, checkpoints,
`model.safetensors` as a VidEoMT file; the video parts are in `eomt.training.video_run`), and so is
evaluation (`eomt eval`). Validation runs the whole video as one clip and scores it with
`eomt.evaluation.video.VideoInstanceEvaluator` (YouTube-VIS video AP, AP50, AP75, AR1, AR10,
identity switches), logged as `val/ap`, `val/id_switches`, ... (`last_metrics`), every
`train.val_every_n_epochs` epochs as for images. The data: `eomt.training.video_data`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from eomt.config import ExperimentConfig
from eomt.structures import VideoTarget
from eomt.models.video import VidEoMT
from eomt.training.data_module import global_batch_positions
from eomt.training.module import EoMTModule
from eomt.training.points import image_generators
from eomt.training.video_data import Tracks
from eomt.training.video_losses import VideoMaskClassificationLoss
from eomt.training.video_matcher import stack_clip_targets

if TYPE_CHECKING:
    from eomt.structures import VideoInstanceResult

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "eomt.backbone."  # the ViT's parameters inside a VidEoMT
TOP_K = 10  # tracks kept per video for the video AP (the official `inference_video_vis`)


class VideoEoMTModule(EoMTModule):
    """Trains a `VidEoMT` on clips (B, T, 3, H, W) with their tracks, as configured by `config`.

    The image module's optimizer step hooks (gradient clipping, divergence checks, checkpoint
    hooks) are reused; the network, the loss, the optimizer groups and the training step are the
    video ones. `network` defaults to a fresh VidEoMT of `config.model`. The optimizer is the image
    module's (AdamW over the official LLRD groups of the ViT, found under `backbone_prefix`; the
    propagation layer at the full rate), warm-up and poly decay stepped per optimizer step.
    Validation scores whole videos (`video_tracks`) with the video instance evaluator; a panoptic
    model is scored on its thing classes as instances.
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


    # ------------------------------------------------------------------ validation
    def make_evaluator(self) -> Any:
        """YouTube-VIS video AP and identity switches over the model's classes (`val/ap`, ...)."""
        from eomt.evaluation.video import VideoInstanceEvaluator

        return VideoInstanceEvaluator(self.cfg.model.num_classes, self.cfg.model.class_names or None)

    def on_validation_epoch_start(self) -> None:
        self.evaluator = self.make_evaluator()
        self._val_predictor = None  # no image predictor: `video_tracks` is the video's inference

    def validation_step(self, batch: tuple[list[Tensor], list[VideoTarget]], batch_idx: int) -> None:
        """Score whole videos (T, 3, H, W) uint8 against their tracks (a panoptic model: its thing
        tracks, `thing_tracks`)."""
        videos, targets = batch
        stuff = self.cfg.model.stuff_classes
        self.evaluator.update([self.video_tracks(v) for v in videos],
                              [thing_tracks(t, stuff, self.device) for t in targets])

    def video_tracks(self, video: Tensor) -> VideoInstanceResult:
        """One whole video (T, 3, H, W) uint8 -> its `VideoInstanceResult` at (H, W).

        The frames are resized and padded as the image predictor does (`resize_and_pad`) and run as
        one clip; the tracks are the official YouTube-VIS rule's (`clip_instances`: class logits
        averaged over the frames, the top `TOP_K` (query, class) pairs, the query index as track
        id), their mask logits restored to the video's size per frame (`restore_logits`: upsample,
        crop the padding, resize) and cut at 0. A panoptic model is scored as an instance model of
        its thing classes: its stuff classes never name a track (their logits are left out of the
        softmax), as the ground truth's stuff tracks are left out (`thing_tracks`).
        """
        from eomt.evaluation.video import clip_instances
        from eomt.structures import VideoInstanceResult
        from eomt.inference.preprocess import resize_and_pad
        from eomt.inference.restore import restore_logits

        frames, metas = resize_and_pad(list(video.to(self.device)), self.cfg.model.img_size)  # (T, 3, S, S)
        out = self.network(frames[None])  # (1, T, K, C+1), (1, T, K, h, w)
        class_logits, mask_logits = out.class_logits[0].float(), out.mask_logits[0].float()
        stuff = torch.tensor(self.cfg.model.stuff_classes, dtype=torch.int64, device=class_logits.device)
        class_logits = class_logits.index_fill(-1, stuff, float("-inf"))  # (T, K, C+1)
        picked = clip_instances(class_logits, mask_logits, tuple(mask_logits.shape[-2:]), TOP_K)
        keep = ~torch.isin(picked.labels, stuff)
        queries = picked.track_ids[keep]
        if not len(queries):
            h, w = metas[0].original_size
            return VideoInstanceResult(torch.zeros(0, len(metas), h, w, dtype=torch.bool), picked.labels[keep],
                                       picked.scores[keep], queries)
        masks = torch.stack([restore_logits(mask_logits[t, queries], meta, channels_last=False) > 0
                             for t, meta in enumerate(metas)], dim=1)  # (D, T, H, W), one frame at a time
        return VideoInstanceResult(masks, picked.labels[keep], picked.scores[keep], queries)


def thing_tracks(target: VideoTarget, stuff_classes: Sequence[int], device: torch.device | None = None) -> VideoTarget:
    """`target` without its tracks of the `stuff_classes`, its masks on `device` (the IoUs are
    computed where they are)."""
    keep = ~torch.isin(target.labels, torch.tensor(list(stuff_classes), dtype=torch.int64))
    return VideoTarget(target.masks[keep].to(device), target.labels[keep], target.is_crowd[keep],
                       target.track_ids[keep], target.frame_indices)

def build_video_network(cfg: ExperimentConfig, trust_pickle: bool = False) -> VidEoMT:
    """A VidEoMT of `cfg.model`: from `train.init` when given (an image EoMT checkpoint, whose
    `query_updater` starts new as in the official recipe, or a VidEoMT checkpoint), else fresh."""
    if not cfg.train.init:
        log.warning("train.init is empty: the VidEoMT starts from random weights (the video recipe starts from "
                    "a trained image EoMT checkpoint; set train.init to one)")
        return VidEoMT(cfg.model)
    from eomt.checkpoints import CheckpointError
    from eomt.checkpoints.videomt import load_video_model

    try:
        return load_video_model(cfg.train.init, config=cfg.model, trust_pickle=trust_pickle).train()
    except CheckpointError as e:
        raise CheckpointError(f"train.init: {e}") from None
