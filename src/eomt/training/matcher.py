"""Hungarian matching of predicted queries to ground-truth segments.

The cost functions are pure and batched over images; the only per-image step is the
assignment solve (`scipy.optimize.linear_sum_assignment`) on one small (Q, N) matrix.
Constants and rules follow the official EoMT code (which uses Mask2Former's matcher):
cost = 5 * BCE + 2 * class + 5 * dice, evaluated at 12544 uniform points shared by the
predictions and targets of an image, clamped to +-1e10 with NaN -> 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from eomt.structures import Target
from eomt.training.points import Generators, point_sample, uniform_points

TargetLike = Union[Target, tuple[Tensor, Tensor]]

_COST_LIMIT = 1e10  # finite stand-in for inf, so the solver never sees an infeasible matrix


@dataclass(frozen=True)
class BatchTargets:
    """All ground-truth segments of a batch, concatenated over images.

    masks: (T, H, W) float 0/1 (padded with zeros to the largest image when sizes differ);
    labels: (T,) int64; image: (T,) int64 image index of each segment; counts: segments per image.
    """

    masks: Tensor
    labels: Tensor
    image: Tensor
    counts: tuple[int, ...]

    @property
    def offsets(self) -> list[int]:
        """Index in `masks` of the first segment of each image."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(int).tolist()


def stack_targets(targets: Sequence[TargetLike], dtype: torch.dtype = torch.float32) -> BatchTargets:
    """Concatenate per-image targets (`Target` or `(masks (N, H, W), labels (N,))`) into one batch.

    Masks are cast to `dtype` once here, so every prediction block reuses them; float32 keeps the
    bilinear point samples exact under mixed precision too.
    """
    pairs = [(t.masks, t.labels) if isinstance(t, Target) else (t[0], t[1]) for t in targets]
    if not pairs:
        raise ValueError("targets: expected at least one image, got an empty list")
    for i, (masks, labels) in enumerate(pairs):
        if masks.dim() != 3 or labels.dim() != 1 or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"targets[{i}]: expected masks (N, H, W) and labels (N,), "
                f"got masks {tuple(masks.shape)} and labels {tuple(labels.shape)}"
            )
    height = max(m.shape[1] for m, _ in pairs)
    width = max(m.shape[2] for m, _ in pairs)
    # Zero padding to the largest image mirrors the official loss (padded pixels are background).
    masks = torch.cat(
        [F.pad(m.to(dtype), (0, width - m.shape[2], 0, height - m.shape[1])) for m, _ in pairs]
    )  # (T, H, W)
    labels = torch.cat([lab.long() for _, lab in pairs])  # (T,)
    counts = tuple(int(lab.shape[0]) for _, lab in pairs)
    image = torch.repeat_interleave(
        torch.arange(len(pairs), device=labels.device), torch.tensor(counts, device=labels.device)
    )  # (T,)
    return BatchTargets(masks, labels, image, counts)


def class_cost(class_logits: Tensor, labels: Tensor) -> Tensor:
    """-softmax(class_logits)[..., label]: (B, Q, C+1) logits, (B, N) labels -> (B, Q, N).

    The official code approximates the NLL by the negative probability of the target class.
    """
    probs = class_logits.float().softmax(-1)  # (B, Q, C+1)
    index = labels.unsqueeze(1).expand(-1, probs.shape[1], -1)  # (B, Q, N)
    return -probs.gather(2, index)


def pairwise_bce_cost(pred_logits: Tensor, target: Tensor) -> Tensor:
    """Mean sigmoid BCE over points for every (prediction, target) pair.

    pred_logits: (B, Q, P) logits; target: (B, N, P) in [0, 1] -> (B, Q, N).
    Uses BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0), so two batched matmuls replace the
    Q * N explicit losses.
    """
    num_points = pred_logits.shape[-1]
    pos = F.softplus(-pred_logits) / num_points  # BCE against 1, pre-divided for the mean
    neg = F.softplus(pred_logits) / num_points  # BCE against 0
    return pos @ target.transpose(1, 2) + neg @ (1 - target).transpose(1, 2)


def pairwise_dice_cost(pred_logits: Tensor, target: Tensor) -> Tensor:
    """Dice loss 1 - (2 p.t + 1) / (sum p + sum t + 1) for every pair: (B, Q, P), (B, N, P) -> (B, Q, N)."""
    probs = pred_logits.sigmoid()
    numerator = 2 * probs @ target.transpose(1, 2)  # (B, Q, N)
    denominator = probs.sum(-1).unsqueeze(2) + target.sum(-1).unsqueeze(1)  # (B, Q, N)
    return 1 - (numerator + 1) / (denominator + 1)


def matching_cost(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: BatchTargets,
    point_coords: Tensor,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> Tensor:
    """The (B, Q, Nmax) matching cost; columns past an image's own N targets are padding.

    The `*_weight` arguments weigh the three costs (the loss weights of `TrainConfig`; the official
    code's matcher calls them `cost_class`, `cost_mask`, `cost_dice`).

    class_logits (B, Q, C+1); mask_logits (B, Q, h, w); point_coords (B, P, 2) in [0, 1]^2,
    shared by the predictions and the targets of an image.
    """
    batch, _, _ = class_logits.shape
    num_points = point_coords.shape[1]
    n_max = max(max(targets.counts), 1)
    pred = point_sample(mask_logits.float(), point_coords).float()  # (B, Q, P)
    # Each target is sampled at its own image's points.
    tgt = point_sample(targets.masks.unsqueeze(1), point_coords[targets.image]).float()  # (T, 1, P)
    slot = torch.arange(targets.masks.shape[0], device=tgt.device) - torch.tensor(
        targets.offsets, device=tgt.device
    )[targets.image]  # (T,) position of each target inside its image
    tgt_padded = tgt.new_zeros(batch, n_max, num_points)  # (B, Nmax, P)
    tgt_padded[targets.image, slot] = tgt.squeeze(1)
    labels = targets.labels.new_zeros(batch, n_max)  # (B, Nmax); padding reads class 0, ignored
    labels[targets.image, slot] = targets.labels
    cost = (
        mask_weight * pairwise_bce_cost(pred, tgt_padded)
        + class_weight * class_cost(class_logits, labels)
        + dice_weight * pairwise_dice_cost(pred, tgt_padded)
    )
    return cost.clamp(-_COST_LIMIT, _COST_LIMIT).nan_to_num(0.0)


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: Sequence[TargetLike] | BatchTargets,
    num_points: int = 12544,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    point_coords: Tensor | None = None,
    generator: Generators = None,
) -> list[tuple[Tensor, Tensor]]:
    """Match queries to targets per image, minimising the official EoMT cost.

    class_logits (B, Q, C+1); mask_logits (B, Q, h, w); targets: one (masks (N, H, W),
    labels (N,)) per image or a `BatchTargets`. `point_coords` (B, P, 2) fixes the sampled points
    (else `num_points` uniform points per image from `generator`: one for the batch, or one per
    image). Returns per image `(pred_idx, tgt_idx)`, int64 tensors of length min(Q, N) on the
    logits' device, with `pred_idx` sorted ascending.
    """
    if not isinstance(targets, BatchTargets):
        targets = stack_targets(targets)
    batch = class_logits.shape[0]
    if len(targets.counts) != batch:
        raise ValueError(f"targets: expected {batch} images (the batch size), got {len(targets.counts)}")
    device = mask_logits.device
    if point_coords is None:
        point_coords = uniform_points(batch, num_points, device, generator, [1] * batch)  # (B, P, 2)
    cost = matching_cost(class_logits, mask_logits, targets, point_coords, class_weight, mask_weight, dice_weight)
    cost_cpu = cost.cpu().numpy()  # one transfer; the solver runs on the host
    rows, cols = [], []
    for b, n in enumerate(targets.counts):
        r, c = linear_sum_assignment(cost_cpu[b, :, :n])
        rows.append(r)
        cols.append(c)
    sizes = [len(r) for r in rows]
    pred_idx = torch.from_numpy(np.concatenate(rows).astype(np.int64)).to(device).split(sizes)
    tgt_idx = torch.from_numpy(np.concatenate(cols).astype(np.int64)).to(device).split(sizes)
    return list(zip(pred_idx, tgt_idx))
