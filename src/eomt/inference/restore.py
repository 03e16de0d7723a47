"""The way back to the image: mask logits of a padded network input -> logits at the original size.

`restore_logits` undoes what `preprocess.resize_and_pad` did to an image, on the network's mask
logits (Q, h4, w4): bilinear upsampling to the network input size, the crop of the unpadded
(scaled) region, and a bilinear resize to the original size (skipped when the scaled size is the
original one), as the official evaluation does. `restore_geometry` says which low-resolution rows
and columns the first upsampling reads; `pixel_bounds` bounds the same interpolation per cell.

Large images: where the restored logits of all channels would pass `_DIRECT_BYTES`, the rules
restore one query at a time (`restored_one_by_one`; a single channel is interpolated with the
same arithmetic as inside a contiguous stack) and reduce into per-pixel state as they come.

The restored logits are the largest tensors of the post-processing (queries x image pixels,
114 MB for 93 queries at 480x640). Freshly allocated, such a block comes from the OS on every call
and its first write page-faults through all of it, which costs more than the interpolation itself;
a `Workspace` (owned by the `Predictor`) keeps the buffers for the next call instead.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from eomt.structures import ImageMeta

_DIRECT_BYTES = 256 << 20  # restored float logits up to this size are made in one piece
WORKSPACE_LIMIT = 512 << 20  # bytes of one buffer a workspace keeps for reuse


class Workspace:
    """Reusable channels-last float32 CPU buffers for restored logits, one set per thread.

    Each thread using the workspace (a `Predictor` may be called from several) has its own buffers,
    so a buffer is rewritten only by the next call of the thread that got it; the caller must be
    done with a restored tensor before its next call. Buffers above `limit` bytes are not kept.
    """

    def __init__(self, limit: int = WORKSPACE_LIMIT) -> None:
        self.limit = limit
        self._local = threading.local()

    def buffer(self, slot: int, shape: tuple[int, int, int, int], like: Tensor) -> Tensor | None:
        """A (B, C, H, W) channels-last float32 view of this thread's buffer `slot`, grown when
        needed; None where not worth it (`like` off the CPU, or more than `limit` bytes)."""
        if like.device.type != "cpu":
            return None
        numel = math.prod(shape)
        if numel * 4 > self.limit:
            return None
        buffers = self._buffers()
        flat = buffers.get(slot)
        if flat is None or flat.numel() < numel:
            flat = buffers[slot] = torch.empty(numel, dtype=torch.float32)
        b, c, h, w = shape
        return flat[:numel].view(b, h, w, c).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)

    def release(self) -> None:
        """Free this thread's buffers (they are made again on demand; tensors using them keep them)."""
        self._local.buffers = {}

    def __getstate__(self) -> dict[str, int]:
        # A copy (or a pickled Predictor) starts with no buffers: they are per thread and per process.
        return {"limit": self.limit}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["limit"])

    def _buffers(self) -> dict[int, Tensor]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        return buffers


def _private_upsample() -> Callable[..., Tensor] | None:
    """torch's bilinear upsampling kernel with an `out=` argument (a private op), if present."""
    nn_ops = getattr(torch._C, "_nn", None)
    return getattr(nn_ops, "upsample_bilinear2d", None)


def upsample_bilinear(
    x: Tensor, size: tuple[int, int], scales: tuple[float, float] | None = None, out: Tensor | None = None
) -> Tensor:
    """`F.interpolate(x, size, mode="bilinear")` of (B, C, h, w) -> (B, C, *size); with `scales`
    (per-axis input pixels per output pixel, inverted) as its scale factors when given.

    With `out` (a (B, C, *size) float tensor of any strides) the result is written there by torch's
    private kernel, which takes an output tensor; where that kernel is missing or its signature
    changed, the public `F.interpolate` gives the same values in a new tensor.
    """
    kernel = _private_upsample() if out is not None else None
    if kernel is not None:
        sh, sw = scales if scales is not None else (None, None)
        try:
            return kernel(x, size, False, sh, sw, out=out)
        except TypeError:  # another signature: the public path below
            pass
    if scales is None:
        return F.interpolate(x, size=size, mode="bilinear")
    return F.interpolate(x, scale_factor=scales, mode="bilinear", recompute_scale_factor=False)


def restore_geometry(
    low_size: Sequence[int], meta: ImageMeta
) -> tuple[int, int, tuple[int, int], tuple[float, float] | None]:
    """The first upsampling of `restore_logits` for logits of size `low_size` (h4, w4): the
    low-resolution rows and columns it reads, its output size and its scale factors (None: the
    factors follow from the sizes, as for the full upsampling to the input size).

    Only the rows and columns the crop keeps are interpolated: the input is cut to the source
    pixels they read (one beyond, so no border clamping changes), with the same scale factor, so
    the values are those of the full upsampling."""
    h4, w4 = low_size
    (ih, iw), (sh, sw) = meta.input_size, meta.scaled_size
    fy, fx = ih / h4, iw / w4
    rows = min(h4, math.ceil(sh / fy) + 1)
    cols = min(w4, math.ceil(sw / fx) + 1)
    if (rows, cols) == (h4, w4):
        return rows, cols, (ih, iw), None
    return rows, cols, (math.floor(rows * fy), math.floor(cols * fx)), (fy, fx)


def restore_logits(
    mask_logits: Tensor, meta: ImageMeta, workspace: Workspace | None = None, channels_last: bool = True
) -> Tensor:
    """Mask logits of one padded input (Q, h4, w4) -> logits at the original image size (Q, H, W).

    Upsample to the network input size, crop the unpadded (scaled) region, resize to the original
    (see `restore_geometry`). The result has channels-last strides (queries innermost), which makes
    the per-pixel reductions over queries contiguous; `channels_last=False` gives a contiguous
    (Q, H, W) result instead, whose every query channel is interpolated on its own (the same values
    whichever queries are restored together).

    With a `workspace` the result lives in its buffers, rewritten by the thread's next call;
    without one it is a fresh tensor (the same values).
    """
    rows, cols, size, scales = restore_geometry(mask_logits.shape[1:], meta)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = mask_logits[None, :, :rows, :cols].float().contiguous(memory_format=layout)  # (1, Q, rows, cols)

    def buffer(slot: int, size: tuple[int, int]) -> Tensor | None:
        return workspace.buffer(slot, (1, x.shape[1], *size), x) if workspace is not None and channels_last else None

    x = upsample_bilinear(x, size, scales, buffer(0, size))
    sh, sw = meta.scaled_size
    x = x[..., :sh, :sw]  # (1, Q, sh, sw) drop the padding
    if meta.scaled_size == meta.original_size:  # resizing to the same size is the identity
        return x[0]
    original = tuple(meta.original_size)
    return upsample_bilinear(x, original, None, buffer(1, original))[0]  # (Q, H, W)


def is_large(channels: int, size: Sequence[int]) -> bool:
    """Whether `channels` float maps of `size` (H, W) are too large to make in one piece."""
    return channels * size[0] * size[1] * 4 > _DIRECT_BYTES


def restored_one_by_one(low: Tensor, meta: ImageMeta) -> Iterator[tuple[int, Tensor]]:
    """(query, logits (H*W,)) one query at a time, restored to the original size (contiguous,
    the caller's to change)."""
    for q in range(low.shape[0]):
        yield q, restore_logits(low[q : q + 1], meta, channels_last=False).view(-1)
