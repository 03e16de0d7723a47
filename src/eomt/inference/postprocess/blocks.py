"""Per-pixel reductions over queries in blocks of pixels, shared by the panoptic and instance rules.

The restored logits are channels-last (queries innermost), so a block of pixels is a (b, K) view
whose reductions over queries are contiguous; on the CPU the blocks are cache-sized, on other
devices one block covers the image.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def column_sum(x: Tensor) -> Tensor:
    """Column sums of a (P, K) tensor: (K,), int64 for a boolean tensor (a count).

    Groups of 64 rows are summed first (booleans as uint8 into int16): a reduction over the middle
    axis of (P/64, 64, K) runs vectorised along K, where summing (P, K) over its first axis does not.
    """
    n = x.shape[0] - x.shape[0] % 64
    total = x[n:].sum(0)
    if n:
        if x.dtype == torch.bool:
            grouped = x[:n].view(torch.uint8).view(n // 64, 64, x.shape[1]).sum(1, dtype=torch.int16)
        else:
            grouped = x[:n].view(n // 64, 64, x.shape[1]).sum(1)
        total += grouped.sum(0)
    return total


def count_true(mask: Tensor) -> Tensor:
    """Trues per column of a boolean (P, K) mask, int64 (K,)."""
    return column_sum(mask)


def pixel_blocks(x: Tensor, block: int) -> Iterator[tuple[int, Tensor]]:
    """(start, (b, K) block) over the pixels of a (K, H, W) tensor, in pixel order.

    Blocks are views when the tensor is channels-last (queries innermost), as the restored logits
    are; on the CPU they are cache-sized, on other devices one block covers the image.
    """
    flat = x.permute(1, 2, 0).reshape(-1, x.shape[0])  # (P, K)
    if x.device.type != "cpu":
        block = flat.shape[0]
    for start in range(0, flat.shape[0], block):
        yield start, flat[start : start + block]

