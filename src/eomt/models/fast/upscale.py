"""Contract: equals `ScaleBlock` and `upscale(x).flatten(1, 2) @ embed_t` (fp32 to 1e-5); guarded by tests/models/test_fast_paths.py.

The upscale blocks of the mask module in matmul form, and the last one in bands of rows.

A 2x2/2 transposed convolution has non-overlapping outputs, so it is one matmul per pixel with
the outputs ordered (dy, dx, C), followed by the GELU (elementwise, so it commutes with the
shuffle and fuses into the matmul on the bf16 CPU path, `fast.linear`) and a pixel shuffle that
moves whole (dx, C) rows. The depthwise convolution runs on a channels-last view and the norm
needs no permute copy. For eager CPU inference the last block and the mask product run in bands
(`_banded_mask_logits`): the full-resolution features never exist at once.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from eomt.models.fast.linear import cpu_inference, linear_gelu
from eomt.models.upscale import ScaleBlock


def mask_logits(blocks: Sequence[ScaleBlock], patches: Tensor, embed_t: Tensor) -> Tensor:
    """Upscale patch features and take the mask product: (B, h, w, D), (B, D, K) -> (B, 2^n h, 2^n w, K).

    n = len(blocks). The result is a contiguous (B, H', W', K) tensor.
    """
    x = patches
    if len(blocks) and cpu_inference(patches):
        *first, last = blocks
        for block in first:
            x = scale_block(block, x)
        return _banded_mask_logits(last, x, embed_t)  # (B, 4h, 4w, K)
    for block in blocks:
        x = scale_block(block, x)
    return (x.flatten(1, 2) @ embed_t).unflatten(1, x.shape[1:3])  # (B, 4h, 4w, K)


def scale_block(block: ScaleBlock, x: Tensor) -> Tensor:
    """`block(x)` in matmul form: (B, H, W, C) -> (B, 2H, 2W, C)."""
    return block.norm(depthwise(block, expand(x, *expand_params(block))))


def expand_params(block: ScaleBlock) -> tuple[Tensor, Tensor]:
    """conv1 as a linear layer: weight (dy, dx, C_out, C_in) flattened to rows, bias per row."""
    c_in = block.conv1.weight.shape[0]
    weight = block.conv1.weight.permute(2, 3, 1, 0).reshape(-1, c_in)  # (4 C_out, C_in)
    return weight, block.conv1.bias.repeat(4)


def expand(x: Tensor, weight: Tensor, bias: Tensor, out: Tensor | None = None) -> Tensor:
    """Transposed convolution + GELU + pixel shuffle: (B, H, W, C) -> (B, 2H, 2W, C_out).

    `out`, if given, is a (B, 2H, 2W, C_out) view (rows may be strided) that receives the result.
    """
    b, h, w, _ = x.shape
    y = linear_gelu(x, weight, bias).view(b, h, w, 2, 2, -1)  # (B, H, W, dy, dx, C_out)
    if out is None:
        return y.transpose(2, 3).reshape(b, 2 * h, 2 * w, -1)  # (B, 2H, 2W, C_out)
    out.view(b, h, 2, w, 2, -1).copy_(y.transpose(2, 3))
    return out


def depthwise(block: ScaleBlock, y: Tensor) -> Tensor:
    """The depthwise 3x3 convolution of `block` on a channels-last (B, H, W, C) map (zero padding)."""
    return block.conv2(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _banded_mask_logits(block: ScaleBlock, x: Tensor, embed_t: Tensor, band_bytes: int = 2 << 20) -> Tensor:
    """The last upscale block and the mask product, computed in bands of rows (CPU inference).

    x: (B, H, W, C) input of `block`; embed_t: (B, C, K) mask embeddings. Returns the mask logits
    (B, 2H, 2W, K), equal to `block(x).flatten(1, 2) @ embed_t`. The full-resolution features
    (the largest activation of the network) never exist at once: each band's temporaries stay
    around `band_bytes`, in cache and free of page faults. The depthwise convolution needs one row
    either side, so the last two expanded rows of a band are carried into the next one, and a band
    emits the rows whose neighbours it has (the last band emits the rest). Every band is written
    into one reused buffer, after the two rows it carries.
    """
    b, h, w, _ = x.shape
    k = embed_t.shape[-1]
    weight, bias = expand_params(block)
    out = x.new_empty(b, 2 * h, 2 * w, k)
    step = max(1, band_bytes // max(1, b * w * weight.shape[0] * x.element_size()))
    # Rows 0-1 of the band buffer hold the last two expanded rows of the previous band.
    buf = x.new_empty(b, 2 * step + 2, 2 * w, weight.shape[0] // 4)
    done = 0  # output rows written
    for a in range(0, h, step):
        e = min(a + step, h)
        n = 2 * (e - a)
        if a:  # every band but the last holds 2 * step expanded rows
            buf[:, :2] = buf[:, 2 * step : 2 * step + 2]
        expand(x[:, a:e], weight, bias, out=buf[:, 2 : 2 + n])  # expanded rows [2a, 2e)
        start, top = (2, 2 * a) if a == 0 else (0, 2 * a - 2)
        z = depthwise(block, buf[:, start : 2 + n])  # rows [top, 2e); the first and last lack a neighbour
        stop = z.shape[1] if e == h else z.shape[1] - 1  # unless at the image border
        z = block.norm(z[:, done - top : stop])  # rows [done, top + stop)
        torch.matmul(z.flatten(1, 2), embed_t, out=out[:, done : done + z.shape[1]].flatten(1, 2))
        done += z.shape[1]
    return out
