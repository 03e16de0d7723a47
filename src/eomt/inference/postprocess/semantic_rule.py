"""The semantic rule: per-pixel class scores of the sliding-window crops, averaged and restored.

Large images (`restore.is_large`): without `return_scores`, the scores are restored one class at
a time into the best class so far (`_argmax_restored`), the same labels as the direct path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from eomt.inference.preprocess import long_side_last
from eomt.inference.restore import is_large
from eomt.structures import SemanticResult, Windows


def semantic(
    mask_logits: Tensor,
    class_logits: Tensor,
    windows: Windows,
    return_scores: bool = False,
) -> list[SemanticResult]:
    """Semantic segmentation from per-crop mask logits (N, Q, h, w) and class logits (N, Q, C+1).

    Per crop: upsample to the crop size, per-pixel class scores
    `sum_q sigmoid(mask_q) * softmax(class_q)[:-1]`; crops of one image are summed into a canvas of
    the scaled image and divided by the per-pixel crop count, then resized bilinearly to the
    original size; labels are the argmax. `scores` (C, H, W) are kept when `return_scores`.
    """
    offsets = torch.tensor(windows.offsets, dtype=torch.long, device=mask_logits.device)  # (N, 3)
    probs = class_logits.float().softmax(-1)[..., :-1]  # (N, Q, C)
    results = []
    for i, meta in enumerate(windows.images):
        crop_ids = (offsets[:, 0] == i).nonzero()[:, 0]  # (n,) this image's crops
        size = meta.input_size[0]  # square crops
        # One crop at a time: (Q, S, S) floats per crop, whatever the number of crops.
        crop_scores = torch.cat([
            torch.einsum(
                "nqhw,nqc->nchw",
                F.interpolate(mask_logits[c : c + 1].float(), size=meta.input_size, mode="bilinear").sigmoid_(),
                probs[c : c + 1],
            )
            for c in crop_ids.tolist()
        ])  # (n, C, S, S)
        pos = (offsets[crop_ids, 1, None] + torch.arange(size, device=offsets.device)).flatten()  # (n*S,)
        canvas = crop_scores.new_zeros(crop_scores.shape[1], *meta.scaled_size)  # (C, nh, nw)
        h, w = meta.original_size
        # One path for both orientations: views with the long side last (the crops run along it;
        # the orientation test is on the original size, as in the official stitching code).
        portrait = h > w
        along = long_side_last(canvas, portrait)  # (C, short, long) view of the canvas
        crops = long_side_last(crop_scores, portrait)  # (n, C, S, S) long side last
        along.index_add_(2, pos, crops.permute(1, 2, 0, 3).flatten(2, 3))  # (C, S, n*S)
        along /= torch.bincount(pos, minlength=along.shape[2]).clamp(min=1)  # average where crops overlap
        if not return_scores and is_large(canvas.shape[0], (h, w)):
            results.append(SemanticResult(_argmax_restored(canvas, (h, w))))
            continue
        scores = F.interpolate(canvas[None], size=meta.original_size, mode="bilinear")[0]  # (C, H, W)
        results.append(SemanticResult(scores.argmax(0), scores if return_scores else None))
    return results


def _argmax_restored(canvas: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.interpolate(canvas[None], size, mode="bilinear")[0].argmax(0)` of class scores (C, h, w),
    one class at a time (a single channel is interpolated as inside the stack: the same values). A
    later class takes a pixel only when strictly better, so ties go to the first, as argmax."""
    h, w = size
    best = torch.full((h * w,), -math.inf, device=canvas.device)
    labels = torch.zeros(h * w, dtype=torch.long, device=canvas.device)
    for c in range(canvas.shape[0]):
        row = F.interpolate(canvas[None, c : c + 1], size=size, mode="bilinear").view(-1)  # (H*W,)
        labels.masked_fill_(row > best, c)
        torch.maximum(best, row, out=best)
    return labels.view(h, w)

