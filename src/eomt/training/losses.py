"""Mask-classification loss of EoMT: point-sampled BCE + dice on matched masks, and a weighted
cross-entropy over all queries, applied to every prediction block.

Exact constants of the official code: 12544 points per mask (37632 candidates, the 9408 most
uncertain kept, 3136 uniform added), no-object weight 0.1, total = 5 * mask + 5 * dice + 2 * CE
summed over blocks, mask losses divided by the matched-mask count averaged over processes.
The cross-entropy's weighted sum is divided by its class-weight sum averaged over processes too
(the official code divides by each process's own sum), so that the gradients DDP averages over
processes equal those of one process holding the whole batch.
The losses are batched over images: matched pairs of the whole batch are gathered into one
tensor; only the assignment solve in `hungarian_match` runs per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from eomt.training.matcher import BatchTargets, TargetLike, hungarian_match, stack_targets
from eomt.training.points import Generators, point_sample, uncertain_points

LOSS_KEYS = ("loss_mask", "loss_dice", "loss_cross_entropy")


def sigmoid_bce_loss(logits: Tensor, labels: Tensor, num_masks: Tensor | float) -> Tensor:
    """Per-mask mean BCE-with-logits over points, summed over masks, over `num_masks`.

    logits, labels: (M, P); labels in [0, 1].
    """
    per_point = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (M, P)
    return per_point.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: Tensor | float) -> Tensor:
    """Summed dice loss 1 - (2 p.t + 1) / (sum p + sum t + 1) over masks, over `num_masks`.

    logits, labels: (M, P).
    """
    probs = logits.sigmoid()
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def classification_loss(
    class_logits: Tensor,
    batch_idx: Tensor,
    pred_idx: Tensor,
    labels: Tensor,
    no_object_weight: float | Tensor = 0.1,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Weighted cross-entropy over all B * Q queries.

    class_logits (B, Q, C+1); matched query `pred_idx` of image `batch_idx` gets class `labels`
    (all (M,)); every other query gets the no-object class C, whose weight is `no_object_weight`
    (a float, or the full (C+1,) weight vector). Mean weighted by the class weights, as
    `nn.CrossEntropyLoss(weight=...)`: the weighted sum over the sum of the queries' weights, or
    over `normalizer` when given (that sum averaged over processes).
    """
    batch, num_queries, num_outputs = class_logits.shape
    if isinstance(no_object_weight, Tensor):
        weight = no_object_weight.to(device=class_logits.device, dtype=torch.float32)
    else:
        weight = class_logits.new_ones(num_outputs, dtype=torch.float32)
        weight[-1] = no_object_weight
    target = torch.full(
        (batch, num_queries), num_outputs - 1, dtype=torch.int64, device=class_logits.device
    )  # (B, Q), all no-object
    target[batch_idx, pred_idx] = labels
    logits = class_logits.float().flatten(0, 1)  # (B*Q, C+1)
    if normalizer is None:
        return F.cross_entropy(logits, target.flatten(), weight=weight)
    weighted = F.cross_entropy(logits, target.flatten(), weight=weight, reduction="none")  # (B*Q,)
    return weighted.sum() / normalizer


def average_over_processes(values: Sequence[float], device: torch.device) -> Tensor:
    """(n,) float32 mean of `values` over all processes (one all_reduce; the values when alone)."""
    total = torch.tensor([float(v) for v in values], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        return total / dist.get_world_size()
    return total


def average_num_masks(count: int, device: torch.device) -> Tensor:
    """Matched-mask count averaged over processes (sum / world size), clamped to >= 1.

    Every process then divides by the same number, so gradients match one big batch.
    """
    return torch.clamp(average_over_processes([count], device)[0], min=1.0)


def block_suffix(index: int, num_predictions: int) -> str:
    """Key suffix of prediction `index` of `num_predictions`: `_block_{k}`, k = -(n-1)..-1; the
    final prediction has none (the official logging names)."""
    k = index - (num_predictions - 1)
    return "" if k == 0 else f"_block_{k}"


class MaskClassificationLoss(nn.Module):
    """The EoMT training criterion (matching + mask, dice and class losses).

    `forward` scores one prediction; `forward_blocks` scores every block and sums them with the
    loss weights. Random points come from `generator` (on the logits' device) when given:
    one generator for the batch, or one per image (`points.image_generators`), which makes an
    image's points independent of how the batch is split over processes.

    The weights (`*_weight`, the names of `TrainConfig` and of Mask2Former's and transformers'
    configs) weigh the loss terms and the matching costs alike; the official code calls them
    `*_coefficient` (and its matcher `cost_*`).
    """

    def __init__(
        self,
        num_classes: int,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        class_weight: float = 2.0,
        no_object_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.weights = {
            "loss_mask": mask_weight,
            "loss_dice": dice_weight,
            "loss_cross_entropy": class_weight,
        }
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.no_object_weight = no_object_weight
        # Not persistent: a constant of the config, kept out of checkpoints.
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(
        self,
        mask_logits: Tensor,
        class_logits: Tensor,
        targets: Sequence[TargetLike] | BatchTargets,
        *,
        num_masks: Tensor | None = None,
        class_normalizer: Tensor | None = None,
        generator: Generators = None,
        match_points: Tensor | None = None,
        loss_points: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Losses {loss_mask, loss_dice, loss_cross_entropy} of one prediction.

        mask_logits (B, Q, h, w); class_logits (B, Q, C+1); targets per image. `num_masks` and
        `class_normalizer` default to `normalizers` of this batch. `match_points` (B, P, 2) and
        `loss_points` = (candidates (M, 3P, 2), uniform (M, P/4, 2)) replace the random draws,
        to reproduce another implementation exactly.
        """
        if not isinstance(targets, BatchTargets):
            targets = stack_targets(targets)
        indices = hungarian_match(
            class_logits,
            mask_logits,
            targets,
            num_points=self.num_points,
            class_weight=self.weights["loss_cross_entropy"],
            mask_weight=self.weights["loss_mask"],
            dice_weight=self.weights["loss_dice"],
            point_coords=match_points,
            generator=generator,
        )
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])  # (M,)
        pred_idx = torch.cat([src for src, _ in indices])  # (M,)
        tgt_idx = torch.cat([tgt + off for (_, tgt), off in zip(indices, targets.offsets)])  # (M,)
        if num_masks is None or class_normalizer is None:
            own_masks, own_class = self.normalizers(
                int(pred_idx.numel()), class_logits.shape[0] * class_logits.shape[1], mask_logits.device
            )
            num_masks = own_masks if num_masks is None else num_masks
            class_normalizer = own_class if class_normalizer is None else class_normalizer
        losses = self._mask_losses(
            mask_logits[batch_idx, pred_idx],
            targets.masks[tgt_idx],
            num_masks,
            generator,
            loss_points,
            [len(src) for src, _ in indices],
        )
        losses["loss_cross_entropy"] = classification_loss(
            class_logits, batch_idx, pred_idx, targets.labels[tgt_idx], self.empty_weight, class_normalizer
        )
        return losses

    def normalizers(self, matched: int, batch_queries: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(mask-loss divisor, cross-entropy divisor) of a process with `matched` matched masks
        among its `batch_queries` (B * Q) queries, both averaged over processes in one all_reduce.

        The first is the matched-mask count (clamped to >= 1), the second the sum of the queries'
        class weights: 1 for a matched query (every real class weighs 1), the no-object weight
        for the others. With every process dividing by the same numbers, DDP's average of the
        processes' gradients is the gradient of one process holding the whole batch.
        """
        weighted_queries = (batch_queries - matched) * self.no_object_weight + matched
        mean = average_over_processes([matched, weighted_queries], device)  # (2,)
        # A batch without matches and a zero no-object weight has a zero weighted sum: 0 / tiny = 0.
        return mean[0].clamp(min=1.0), mean[1].clamp(min=1e-12)

    def _mask_losses(
        self,
        pred: Tensor,
        target: Tensor,
        num_masks: Tensor,
        generator: Generators,
        loss_points: tuple[Tensor, Tensor] | None,
        rows_per_image: list[int],
    ) -> dict[str, Tensor]:
        """Point-sampled BCE and dice of matched pairs: pred (M, h, w) logits, target (M, H, W);
        `rows_per_image`: how many of the M pairs belong to each image."""
        if pred.shape[0] == 0:
            zero = pred.sum() * 0.0  # keeps the graph connected when a batch has no targets
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        pred = pred.float()
        candidates, extra = loss_points if loss_points is not None else (None, None)
        coords = uncertain_points(
            pred,
            self.num_points,
            self.oversample_ratio,
            self.importance_sample_ratio,
            generator=generator,
            candidates=candidates,
            extra=extra,
            rows_per_image=rows_per_image,
        )  # (M, P, 2)
        with torch.no_grad():
            labels = point_sample(target.unsqueeze(1), coords).squeeze(1)  # (M, P)
        logits = point_sample(pred.unsqueeze(1), coords).squeeze(1)  # (M, P)
        return {
            "loss_mask": sigmoid_bce_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    def forward_blocks(
        self,
        mask_logits_per_block: Sequence[Tensor],
        class_logits_per_block: Sequence[Tensor],
        targets: Sequence[TargetLike] | BatchTargets,
        *,
        generator: Generators = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Score every prediction (intermediate blocks first, final last), each with its own matching.

        Returns (weighted total, per-block losses); keys get `block_suffix` (`loss_dice_block_-2`,
        ..., plain `loss_dice` for the final prediction).
        """
        if len(mask_logits_per_block) != len(class_logits_per_block) or not mask_logits_per_block:
            raise ValueError(
                f"expected as many mask as class predictions (>= 1), got "
                f"{len(mask_logits_per_block)} and {len(class_logits_per_block)}"
            )
        if not isinstance(targets, BatchTargets):
            targets = stack_targets(targets)  # cast the masks once for all blocks
        batch, num_queries = class_logits_per_block[0].shape[:2]
        # Every block matches min(Q, N) targets per image: one all_reduce serves all blocks.
        matched = sum(min(num_queries, n) for n in targets.counts)
        num_masks, class_normalizer = self.normalizers(
            matched, batch * num_queries, mask_logits_per_block[0].device
        )
        losses: dict[str, Tensor] = {}
        n = len(mask_logits_per_block)
        for i, (mask_logits, class_logits) in enumerate(zip(mask_logits_per_block, class_logits_per_block)):
            block = self(
                mask_logits,
                class_logits,
                targets,
                num_masks=num_masks,
                class_normalizer=class_normalizer,
                generator=generator,
            )
            losses.update({f"{key}{block_suffix(i, n)}": value for key, value in block.items()})
        return self.weighted_total(losses), losses

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """Sum of every loss times its weight (5 mask, 5 dice, 2 cross-entropy)."""
        total = None
        for key, value in losses.items():
            base = key.split("_block_")[0]
            if base not in self.weights:
                raise ValueError(f"loss key {key!r}: expected one of {LOSS_KEYS} (with a block suffix)")
            term = self.weights[base] * value
            total = term if total is None else total + term
        if total is None:
            raise ValueError("losses: expected at least one loss, got an empty dict")
        return total
