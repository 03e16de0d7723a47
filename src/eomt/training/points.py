"""Point sampling shared by the matcher and the mask losses.

Masks are compared at a few thousand points instead of at every pixel (PointRend / Mask2Former).
Points are normalised coordinates in [0, 1]^2 (x, y), so predictions at H/4 and targets at the
full input resolution are sampled at the same image locations without any resizing.

Random points come from one `torch.Generator`, or from one generator per image
(`image_generators`): then an image's points depend only on its own generator, not on which
other images share its batch, so a batch split over several processes samples the same points
as one process holding the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# One generator for all rows, one per image (rows grouped by image), or the global RNG.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]

_POINTS_STREAM = 0x706F696E74  # keeps these seeds apart from the augmentation's (seed, epoch, index)


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample `inputs` (N, C, H, W) at `coords` (N, P, 2) in [0, 1]^2 -> (N, C, P).

    `align_corners=False` and zero padding, as the official code: coordinate 0 is the left edge
    of the first pixel, 1 the right edge of the last one.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2) in [-1, 1]
    out = F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False)
    return out.squeeze(3)  # (N, C, P)


def image_generators(seed: int, step: int, positions: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One generator on `device` per image, seeded by (seed, step, the image's position in the
    global batch).

    A pure function of its arguments: the points of an image are the same on any number of
    processes, and a resumed run needs no saved state to draw them again.
    """
    generators = []
    for position in positions:
        state = np.random.SeedSequence([_POINTS_STREAM, seed, step, position]).generate_state(1, np.uint64)
        generators.append(torch.Generator(device=device).manual_seed(int(state[0])))
    return generators


def uniform_points(
    n: int,
    num_points: int,
    device: torch.device,
    generator: Generators = None,
    rows_per_image: Sequence[int] | None = None,
) -> Tensor:
    """(n, num_points, 2) float32 coordinates drawn uniformly in [0, 1)^2.

    With one generator per image, the rows are grouped by image (`rows_per_image`, summing to n)
    and image b's rows come from `generator[b]`; an image without rows draws nothing.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(n, num_points, 2, device=device, generator=generator)
    if rows_per_image is None or len(rows_per_image) != len(generator) or sum(rows_per_image) != n:
        raise ValueError(
            f"rows_per_image: expected one count per generator ({len(generator)}) summing to {n}, "
            f"got {rows_per_image}"
        )
    parts = [
        torch.rand(rows, num_points, 2, device=device, generator=g)
        for rows, g in zip(rows_per_image, generator)
        if rows > 0
    ]
    return torch.cat(parts) if parts else torch.zeros(0, num_points, 2, device=device)


def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: Generators = None,
    candidates: Tensor | None = None,
    extra: Tensor | None = None,
    rows_per_image: Sequence[int] | None = None,
) -> Tensor:
    """Pick `num_points` points per mask, biased towards uncertain (|logit| near 0) locations.

    logits: (M, h, w) mask logits. Draws `int(num_points * oversample_ratio)` uniform candidates
    per mask, keeps the `int(importance_sample_ratio * num_points)` with the largest uncertainty
    `-|logit|`, and appends the remaining points drawn uniformly. Returns (M, num_points, 2).

    `candidates` (M, num_candidates, 2) and `extra` (M, num_random, 2) replace the two random
    draws (to reproduce another implementation's points); otherwise they come from `generator`,
    candidates first (with one generator per image, `rows_per_image` says how many of the M masks
    belong to each image, as in `uniform_points`).
    """
    m = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    if candidates is None:
        candidates = uniform_points(m, num_candidates, logits.device, generator, rows_per_image)
    with torch.no_grad():
        candidate_logits = point_sample(logits.detach().unsqueeze(1), candidates)  # (M, 1, K)
        uncertainty = -candidate_logits.squeeze(1).abs()  # (M, K)
        top = uncertainty.topk(num_uncertain, dim=1).indices  # (M, num_uncertain)
    chosen = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))  # (M, num_uncertain, 2)
    if num_random > 0:
        if extra is None:
            extra = uniform_points(m, num_random, logits.device, generator, rows_per_image)
        chosen = torch.cat([chosen, extra], dim=1)  # (M, num_points, 2)
    return chosen
