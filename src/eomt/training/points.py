"""Point sampling shared by the matcher and the mask losses.

Masks are compared at a few thousand points instead of at every pixel (PointRend / Mask2Former).
Points are normalised coordinates in [0, 1]^2 (x, y), so predictions at H/4 and targets at the
full input resolution are sampled at the same image locations without any resizing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample `inputs` (N, C, H, W) at `coords` (N, P, 2) in [0, 1]^2 -> (N, C, P).

    `align_corners=False` and zero padding, as the official code: coordinate 0 is the left edge
    of the first pixel, 1 the right edge of the last one.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2) in [-1, 1]
    out = F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False)
    return out.squeeze(3)  # (N, C, P)


def uniform_points(
    n: int, num_points: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """(n, num_points, 2) float32 coordinates drawn uniformly in [0, 1)^2."""
    return torch.rand(n, num_points, 2, device=device, generator=generator)


def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    candidates: Tensor | None = None,
    extra: Tensor | None = None,
) -> Tensor:
    """Pick `num_points` points per mask, biased towards uncertain (|logit| near 0) locations.

    logits: (M, h, w) mask logits. Draws `int(num_points * oversample_ratio)` uniform candidates
    per mask, keeps the `int(importance_sample_ratio * num_points)` with the largest uncertainty
    `-|logit|`, and appends the remaining points drawn uniformly. Returns (M, num_points, 2).

    `candidates` (M, num_candidates, 2) and `extra` (M, num_random, 2) replace the two random
    draws (to reproduce another implementation's points); otherwise they come from `generator`,
    candidates first.
    """
    m = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    if candidates is None:
        candidates = uniform_points(m, num_candidates, logits.device, generator)
    with torch.no_grad():
        candidate_logits = point_sample(logits.detach().unsqueeze(1), candidates)  # (M, 1, K)
        uncertainty = -candidate_logits.squeeze(1).abs()  # (M, K)
        top = uncertainty.topk(num_uncertain, dim=1).indices  # (M, num_uncertain)
    chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))  # (M, num_uncertain, 2)
    if num_random > 0:
        if extra is None:
            extra = uniform_points(m, num_random, logits.device, generator)
        chosen = torch.cat([chosen, extra], dim=1)  # (M, num_points, 2)
    return chosen
