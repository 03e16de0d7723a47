"""The VidEoMT training criterion: per-clip matching, then the image losses on every frame.

Facts of the official code (tue-mps/videomt `criterion_videomt.py` `VideoSetCriterion` and
`videomt.py` `frame_decoder_loss_reshape`), reproduced here:
- each prediction (the final one and each auxiliary block) is matched on its own, per clip
  (`video_matcher.video_hungarian_match`), and the assignment is applied to all T frames;
- every frame is a target of its own holding all the clip's tracks: a matched query gets its
  track's class on every frame (also where the object is absent) and its frame-t mask (empty where
  absent); unmatched queries get no-object (weight 0.1);
- mask BCE and dice at 12544 uncertainty-sampled points per (frame, matched query), summed and
  divided by the number of (frame, track) targets averaged over processes; the cross-entropy is
  the class-weighted mean over all B*T*Q queries; weights 5 mask, 5 dice, 2 class;
- auxiliary predictions are made at the input of each query block (`VidEoMT.forward(per_block=True)`),
  but the official weight table has keys for the first L2 - 1 of them only, so the loss of the
  prediction entering the LAST query block is computed and dropped. `drop_last_block=True` keeps
  that rule (the final prediction and L2 - 1 auxiliary ones are scored).
The per-pair math is `eomt.training.losses` (the same functions as the image criterion).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eomt.training.losses import MaskClassificationLoss, block_suffix, classification_loss
from eomt.training.points import Generators
from eomt.training.video_matcher import ClipTargets, video_hungarian_match


class VideoMaskClassificationLoss(nn.Module):
    """Matching + mask, dice and class losses of VidEoMT on clips (rules: module docstring).

    The constants are those of `MaskClassificationLoss` (`image`: built from the same arguments);
    `rule`: the matching rule of `video_hungarian_match`.
    """

    def __init__(self, num_classes: int, rule: str = "first_appearance", drop_last_block: bool = True,
                 **image_loss: float) -> None:
        super().__init__()
        self.image = MaskClassificationLoss(num_classes, **image_loss)  # type: ignore[arg-type]
        self.rule = rule
        self.drop_last_block = drop_last_block

    def forward(
        self,
        mask_logits: Tensor,
        class_logits: Tensor,
        targets: ClipTargets,
        *,
        num_masks: Tensor,
        class_normalizer: Tensor,
        generator: Generators = None,
    ) -> dict[str, Tensor]:
        """Losses {loss_mask, loss_dice, loss_cross_entropy} of one prediction of the clips:
        mask_logits (B, T, Q, h, w), class_logits (B, T, Q, C+1); the normalizers as `normalizers`.
        `generator`: one for the batch or one per clip."""
        image = self.image
        b, t, q = class_logits.shape[:3]
        indices = video_hungarian_match(
            class_logits, mask_logits, targets, num_points=image.num_points,
            class_weight=image.weights["loss_cross_entropy"], mask_weight=image.weights["loss_mask"],
            dice_weight=image.weights["loss_dice"], rule=self.rule, generator=generator,
        )
        device = class_logits.device
        offsets = torch.tensor(targets.frames.offsets, device=device)  # (B*T,) first target row of each frame
        frames, preds, rows, per_clip = [], [], [], []
        for i, (pred, track) in enumerate(indices):  # expand each clip's assignment to its T frames
            frame = (i * t + torch.arange(t, device=device))[:, None].expand(t, len(pred))  # (T, M_b)
            frames.append(frame.flatten())
            preds.append(pred[None].expand(t, -1).flatten())
            rows.append((offsets[frame] + track[None]).flatten())
            per_clip.append(t * len(pred))
        frame_idx, pred_idx, row_idx = torch.cat(frames), torch.cat(preds), torch.cat(rows)  # (M,) each
        flat_masks = mask_logits.flatten(0, 1)  # (B*T, Q, h, w)
        losses = image._mask_losses(
            flat_masks[frame_idx, pred_idx], targets.frames.masks[row_idx], num_masks, generator, None,
            per_clip,
        )
        losses["loss_cross_entropy"] = classification_loss(
            class_logits.flatten(0, 1), frame_idx, pred_idx, targets.frames.labels[row_idx],
            image.empty_weight, class_normalizer,
        )
        return losses

    def normalizers(self, targets: ClipTargets, batch: int, num_queries: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(mask divisor, cross-entropy divisor): the (frame, track) targets matched, and the class
        weight sum of the B*T*Q queries, both averaged over processes (`MaskClassificationLoss.normalizers`)."""
        t = targets.num_frames
        matched = sum(t * min(num_queries, n) for n in targets.counts)
        return self.image.normalizers(matched, batch * t * num_queries, device)

    def forward_blocks(
        self,
        mask_logits_per_block: Sequence[Tensor],
        class_logits_per_block: Sequence[Tensor],
        targets: ClipTargets,
        *,
        generator: Generators = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Score the auxiliary predictions (first block first) and the final one (last), each matched
        on its own; with `drop_last_block` the prediction entering the last block is left out.

        Returns (weighted total, losses keyed as `MaskClassificationLoss.forward_blocks`).
        """
        masks, classes = list(mask_logits_per_block), list(class_logits_per_block)
        if len(masks) != len(classes) or not masks:
            raise ValueError(f"expected as many mask as class predictions (>= 1), got {len(masks)} and {len(classes)}")
        if self.drop_last_block and len(masks) > 1:
            del masks[-2], classes[-2]  # the auxiliary prediction entering the last query block
        b, _, q = classes[0].shape[:3]
        num_masks, class_normalizer = self.normalizers(targets, b, q, classes[0].device)
        losses: dict[str, Tensor] = {}
        for i, (m, c) in enumerate(zip(masks, classes)):
            block = self(m, c, targets, num_masks=num_masks, class_normalizer=class_normalizer, generator=generator)
            losses.update({f"{key}{block_suffix(i, len(masks))}": value for key, value in block.items()})
        return self.image.weighted_total(losses), losses
