"""The panoptic rule: queries compete per pixel, segments are kept by their overlap, stuff merges.

Queries whose best class (no-object included) is a real class with probability > `threshold`
compete per pixel by `score_q * sigmoid(mask_q)` (`_assign_pixels`); `_merge_segments` turns the
winners into segments, as the official evaluation. Three ways to the same pixel assignment:
- direct: the restored logits of all kept queries, reduced in blocks of pixels;
- on the CPU, decided from bounds on the low-resolution logits where they can
  (`eomt.inference.pixel_bounds`), the rest exactly from the restored logits;
- large images (`restore.is_large`): one query at a time into per-pixel state, the winner so
  far (`_assign_pixels_chunked`); peak memory is the state plus one query's logits.

Differences from the transformers port, on purpose:
- a segment is kept when `area(new) / area(orig) >= overlap_threshold` (official code: skip when
  `<`, the ratio in float64); transformers keeps it only when its float32 ratio is `>`. They differ
  only on an exact tie, and at the default 0.8 not even there (float32(0.8) > 0.8); at e.g. 0.7
  transformers drops a tie that the official code keeps.
- segment ids start at 1 and unassigned pixels are 0 (COCO panoptic convention); the official code
  and transformers use -1 for unassigned pixels and ids from 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from eomt.inference.pixel_bounds import plan_assignment
from eomt.inference.postprocess.blocks import count_true, pixel_blocks
from eomt.inference.restore import Workspace, is_large, restore_logits, restored_one_by_one
from eomt.structures import ImageMeta, PanopticResult

_MERGE_BLOCK = 1 << 20  # pixels per step of the segment merging


def panoptic(
    mask_logits: Tensor,
    class_logits: Tensor,
    metas: Sequence[ImageMeta],
    stuff_classes: Sequence[int] = (),
    threshold: float = 0.8,
    mask_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
    workspace: Workspace | None = None,
) -> list[PanopticResult]:
    """Panoptic segmentation from mask logits (B, Q, h, w) and class logits (B, Q, C+1).

    Queries whose best class (no-object included) is a real class with probability > `threshold`
    compete per pixel by `score_q * sigmoid(mask_q)`. Query k becomes a segment when its won
    region `new`, its own mask `orig = sigmoid >= mask_threshold` and `new & orig` are non-empty
    and `|new| / |orig| >= overlap_threshold`; its pixels are `new & orig`. Stuff queries of one
    class merge into one segment (the first query's id and score); things get an id each.
    workspace: buffers for the restored logits, reused across calls (see `restore.Workspace`);
    None: fresh tensors, the same values.
    """
    num_classes = class_logits.shape[-1] - 1
    device = class_logits.device
    is_stuff_class = torch.zeros(num_classes + 1, dtype=torch.bool, device=device)
    if len(stuff_classes):
        is_stuff_class[torch.as_tensor(list(stuff_classes), device=device)] = True
    probs = class_logits.float().softmax(-1)
    scores, classes = probs.max(-1)  # (B, Q) the no-object class takes part in the max
    keep = classes.ne(num_classes) & (scores > threshold)
    results = []
    for i, meta in enumerate(metas):
        idx = keep[i].nonzero()[:, 0]  # (K,) kept queries, in query order
        h, w = meta.original_size
        if idx.numel() == 0:
            none = torch.zeros(0, dtype=torch.long, device=device)
            results.append(PanopticResult(torch.zeros(h, w, dtype=torch.long, device=device), [], none))
            continue
        low, kept_scores = mask_logits[i, idx], scores[i, idx]
        if is_large(idx.numel(), (h, w)):  # one query at a time into per-pixel state
            assignment = _assign_pixels_chunked(low, meta, kept_scores, mask_threshold)
        else:
            # On accelerators the direct path is a few large kernels; the bounds pay off on the CPU.
            plan = plan_assignment(low, meta, kept_scores, mask_threshold) if device.type == "cpu" else None
            logits = restore_logits(low, meta, workspace)  # (K, H, W)
            if plan is None:
                assignment = _assign_pixels(logits, kept_scores, mask_threshold, from_logits=True)
            else:
                assignment = plan.resolve(logits)
        result = _merge_segments(*assignment, kept_scores, classes[i, idx], is_stuff_class, overlap_threshold, (h, w))
        result.queries = idx[result.queries]  # kept-query positions -> the network's query indices
        results.append(result)
    return results


def _assign_pixels(
    masks: Tensor, scores: Tensor, mask_threshold: float, from_logits: bool, block: int = 4096
) -> tuple[Tensor, Tensor, Tensor]:
    """Per pixel: the winning query, whether the pixel is inside the winner's own mask; per query
    the area of its own mask. masks: (K, H, W) probabilities (or logits with `from_logits`).

    Returns mask_ids (H*W,) int64, inside (H*W,) bool and orig_area (K,) int64. The pixels go
    through in blocks (see `pixel_blocks`), so the probabilities, weighted scores and thresholded
    masks of a block stay in cache instead of being written out as (K, H, W) tensors.
    """
    k, h, w = masks.shape
    mask_ids = torch.empty(h * w, dtype=torch.long, device=masks.device)
    inside = torch.empty(h * w, dtype=torch.bool, device=masks.device)
    orig_area = torch.zeros(k, dtype=torch.int64, device=masks.device)
    for start, prob in pixel_blocks(masks, block):
        if from_logits:
            prob = prob.sigmoid()
        ids = (prob * scores).max(1).indices  # (b,) the first maximum wins ties, as argmax
        orig = prob >= mask_threshold  # (b, K)
        orig_area += count_true(orig)
        mask_ids[start : start + ids.shape[0]] = ids
        inside[start : start + ids.shape[0]] = orig.gather(1, ids[:, None])[:, 0]
    return mask_ids, inside, orig_area


def _assign_pixels_chunked(
    low: Tensor, meta: ImageMeta, scores: Tensor, mask_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """`_assign_pixels` of the logits that `restore_logits` makes of `low` (K, h4, w4), restored one
    query at a time: per pixel the best `score * sigmoid` so far and its query (a later
    query takes a pixel only when strictly better: ties go to the first, as argmax)."""
    k = low.shape[0]
    h, w = meta.original_size
    best = torch.full((h * w,), -1.0, device=low.device)  # below every weighted probability
    weighted = torch.empty_like(best)
    mask_ids = torch.zeros(h * w, dtype=torch.long, device=low.device)
    inside = torch.zeros(h * w, dtype=torch.bool, device=low.device)
    orig_area = torch.zeros(k, dtype=torch.int64, device=low.device)
    for j, logits in restored_one_by_one(low, meta):
        prob = logits.sigmoid_()  # (H*W,)
        orig = prob >= mask_threshold
        orig_area[j] = orig.sum()
        torch.mul(prob, scores[j], out=weighted)
        better = weighted > best
        torch.maximum(best, weighted, out=best)
        mask_ids.masked_fill_(better, j)
        inside.copy_(torch.where(better, orig, inside))
    return mask_ids, inside, orig_area


def _panoptic_one(
    masks: Tensor,
    scores: Tensor,
    classes: Tensor,
    is_stuff_class: Tensor,
    mask_threshold: float,
    overlap_threshold: float,
    from_logits: bool = False,
) -> PanopticResult:
    """Segment merging of one image: masks (K, H, W) probabilities (logits with `from_logits`),
    scores / classes (K,)."""
    assignment = _assign_pixels(masks, scores, mask_threshold, from_logits)
    return _merge_segments(*assignment, scores, classes, is_stuff_class, overlap_threshold, masks.shape[1:])


def _merge_segments(
    mask_ids: Tensor,
    inside: Tensor,
    orig_area: Tensor,
    scores: Tensor,
    classes: Tensor,
    is_stuff_class: Tensor,
    overlap_threshold: float,
    size: Sequence[int],
) -> PanopticResult:
    """Segments from the pixel assignment (`_assign_pixels`' outputs) of an (H, W) = `size` image."""
    k = scores.shape[0]
    h, w = size
    ar = torch.arange(k, device=mask_ids.device)
    # A pixel ends up in its winner's segment only if it is also inside the winner's own mask.
    new_area = torch.bincount(mask_ids, minlength=k)  # (K,)
    final_area = torch.zeros(k + 1, dtype=torch.int64, device=mask_ids.device)
    for s in range(0, mask_ids.numel(), _MERGE_BLOCK):  # blocks: no image-sized temporaries
        e = s + _MERGE_BLOCK
        final_area += torch.bincount(mask_ids[s:e].masked_fill(~inside[s:e], k), minlength=k + 1)
    final_area = final_area[:k]  # (K,)
    ratio = new_area.double() / orig_area.clamp(min=1).double()
    valid = (orig_area > 0) & (new_area > 0) & (final_area > 0) & (ratio >= overlap_threshold)

    # Stuff: every valid query of a stuff class joins the segment of the first valid query of that
    # class; a thing query is its own representative. Only representatives open a new segment id.
    stuff = is_stuff_class[classes] & valid
    first = torch.full_like(is_stuff_class, k, dtype=torch.long).scatter_reduce(
        0, classes[stuff], ar[stuff], reduce="amin"
    )  # (C+1,) first valid stuff query of each class, k where none
    rep = torch.where(stuff, first[classes], ar)  # (K,)
    opens = valid & (rep == ar)
    seg_of_query = torch.where(valid, torch.cumsum(opens, 0)[rep], 0)  # (K,) ids from 1, 0 = none
    n = int(opens.sum())
    segmentation = torch.empty_like(mask_ids)  # (H*W,)
    areas = torch.zeros(n + 1, dtype=torch.int64, device=mask_ids.device)
    for s in range(0, mask_ids.numel(), _MERGE_BLOCK):
        e = s + _MERGE_BLOCK
        segmentation[s:e] = seg_of_query[mask_ids[s:e]].masked_fill_(~inside[s:e], 0)
        areas += torch.bincount(segmentation[s:e], minlength=n + 1)
    segmentation = segmentation.view(h, w)  # (H, W)
    areas = areas[1:]  # (n,)
    q = opens.nonzero()[:, 0]  # (n,) the query that opened each segment, in id order
    segments = [
        {"id": j + 1, "category_id": c, "isthing": not s, "score": sc, "area": a}
        for j, (c, s, sc, a) in enumerate(
            zip(classes[q].tolist(), is_stuff_class[classes[q]].tolist(), scores[q].tolist(), areas.tolist())
        )
    ]
    return PanopticResult(segmentation, segments, q)

