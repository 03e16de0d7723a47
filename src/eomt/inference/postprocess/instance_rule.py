"""The instance rule: the best (query, class) pairs, each a binary mask scored by its confidence.

As the official evaluation: top-k over all (query, class) pairs (one query may give several
instances); transformers takes one class per query and thresholds the score instead. Each
distinct query is restored once (`_masks_and_scores`); for large images one query at a time,
straight into the bool masks (`_masks_and_scores_chunked`) or into COCO run-length encodings
(`_rles_and_scores`, `mask_format="rle"`), with the same masks and scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from eomt.errors import OptionError
from eomt.inference.postprocess.blocks import column_sum, count_true, pixel_blocks
from eomt.inference.restore import Workspace, is_large, restore_logits, restored_one_by_one
from eomt.structures import ImageMeta, InstanceResult, RLEMasks

DENSE_MASK_BYTES = 256 << 20  # instance masks of mask_format="auto" are RLE above this size
MASK_FORMATS = ("auto", "dense", "rle")


def instance(
    mask_logits: Tensor,
    class_logits: Tensor,
    metas: Sequence[ImageMeta],
    top_k: int = 100,
    threshold: float = 0.0,
    mask_format: str = "auto",
    workspace: Workspace | None = None,
    stuff_classes: Sequence[int] = (),
) -> list[InstanceResult]:
    """Instance segmentation from mask logits (B, Q, h, w) and class logits (B, Q, C+1).

    The `top_k` best (query, class) pairs over the flattened Q x C class probabilities (no-object
    excluded; one query may give several instances); mask = logits > 0 at the original size;
    score = class probability x mean sigmoid inside the mask. Instances scoring below `threshold`
    are dropped (0 keeps all, as the evaluation does). Sorted by decreasing score.

    stuff_classes: classes that are never instances (a panoptic model's stuff: sky, road). They
    take no part in the top-k, so a panoptic model gives `top_k` thing instances. Mask2Former's
    instance inference of a panoptic model drops them too, after its top-k (fewer instances);
    the instance evaluation counts only things either way.

    mask_format: "dense": masks as an (N, H, W) bool tensor; "rle": as `RLEMasks` (COCO
    run-length encodings, made one query at a time, so memory stays at one query's pixels);
    "auto" (default): dense unless the stack of `top_k` masks would pass `DENSE_MASK_BYTES`
    (256 MB: 40 masks of a 6000x4000 photo, 270 of 1280x720), then RLE.
    workspace: buffers for the restored logits, reused across calls (see `restore.Workspace`);
    None: fresh tensors, the same values.
    """
    check_mask_format(mask_format)
    probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, C)
    things = torch.ones(probs.shape[-1], dtype=torch.bool, device=probs.device)
    if len(stuff_classes):
        things[torch.as_tensor(list(stuff_classes), device=probs.device)] = False
    thing_ids = things.nonzero()[:, 0]  # (T,) the classes an instance can have
    if len(thing_ids) < len(things):
        probs = probs[..., thing_ids]  # (B, Q, T)
    num_classes = probs.shape[-1]
    k = min(top_k, probs.shape[1] * num_classes)
    if k == 0:  # every class is stuff
        empty = torch.zeros(0, dtype=torch.long, device=probs.device)
        return [InstanceResult(torch.zeros(0, *m.original_size, dtype=torch.bool, device=probs.device), empty,
                               empty.float()) for m in metas]
    top_scores, top_idx = probs.flatten(1).topk(k, dim=1)  # (B, k)
    results = []
    for i, meta in enumerate(metas):
        queries = top_idx[i] // num_classes
        labels = thing_ids[top_idx[i] % num_classes]
        # Upsample each distinct query once, then index the instances into it.
        uniq, inverse = torch.unique(queries, return_inverse=True)
        rle = use_rle(mask_format, k, meta.original_size)
        if rle:
            rles, mask_scores = _rles_and_scores(mask_logits[i, uniq], meta)
        elif not is_large(uniq.numel(), meta.original_size):
            logits = restore_logits(mask_logits[i, uniq], meta, workspace)  # (U, H, W)
            binary, mask_scores = _masks_and_scores(logits)  # (U, H, W) contiguous masks, (U,)
        else:
            # Room for every instance: the masks are then put in instance order in place.
            binary, mask_scores = _masks_and_scores_chunked(mask_logits[i, uniq], meta, rows=k)
        scores = top_scores[i] * mask_scores[inverse]
        keep = scores >= threshold
        order = scores[keep].argsort(descending=True)
        sel = keep.nonzero()[:, 0][order]
        rows = inverse[sel]
        if rle:
            masks = RLEMasks([rles[r] for r in rows.tolist()], meta.original_size, mask_logits.device)
            results.append(InstanceResult(masks, labels[sel], scores[sel], queries[sel]))
            continue
        if binary.shape[0] > len(uniq):
            binary = _gather_rows_in_place(binary, rows)
        elif not torch.equal(rows, torch.arange(len(uniq), device=rows.device)):
            binary = binary[rows]  # a copy; skipped when the instances are the queries in order
        results.append(InstanceResult(binary, labels[sel], scores[sel], queries[sel]))
    return results


def check_mask_format(mask_format: str) -> None:
    """`OptionError` unless `mask_format` is one of `MASK_FORMATS`."""
    if mask_format not in MASK_FORMATS:
        raise OptionError(f"mask_format: unknown value {mask_format!r} (expected one of: {', '.join(MASK_FORMATS)})")


def use_rle(mask_format: str, count: int, size: Sequence[int]) -> bool:
    """Whether `count` instance masks of an (H, W) = `size` image are made as `RLEMasks`."""
    if mask_format == "auto":
        return count * size[0] * size[1] > DENSE_MASK_BYTES
    return mask_format == "rle"


def _masks_and_scores(logits: Tensor, block: int = 4096) -> tuple[Tensor, Tensor]:
    """Binary masks `logits > 0` as a contiguous (U, H, W) bool tensor, and per query the mean
    sigmoid inside its mask (0 for an empty mask), from (U, H, W) logits.

    The pixels go through in blocks (see `pixel_blocks`): each block is thresholded once,
    transposed into the mask rows and summed, in float64 across blocks.
    """
    u, h, w = logits.shape
    masks = torch.empty(u, h * w, dtype=torch.bool, device=logits.device)
    total = torch.zeros(u, dtype=torch.float64, device=logits.device)
    count = torch.zeros(u, dtype=torch.int64, device=logits.device)
    for start, x in pixel_blocks(logits, block):
        pos = x > 0
        masks[:, start : start + x.shape[0]] = pos.t()
        prob = x.sigmoid().masked_fill_(~pos, 0.0)  # (b, U) sigmoid inside the mask, 0 outside
        total += column_sum(prob)
        count += count_true(pos)
    return masks.view(u, h, w), (total / (count + 1e-6)).float()


def _masks_and_scores_chunked(low: Tensor, meta: ImageMeta, rows: int = 0) -> tuple[Tensor, Tensor]:
    """`_masks_and_scores` of the logits that `restore_logits` makes of `low` (U, h4, w4),
    restored one query at a time straight into the (U, H, W) bool masks; with `rows` > U the
    masks tensor has that many rows, the ones after U unset (room for `_gather_rows_in_place`)."""
    u = low.shape[0]
    h, w = meta.original_size
    masks = torch.empty(max(u, rows), h * w, dtype=torch.bool, device=low.device)
    total = torch.zeros(u, dtype=torch.float64, device=low.device)
    count = torch.zeros(u, dtype=torch.int64, device=low.device)
    for q, logits in restored_one_by_one(low, meta):
        pos = masks[q]  # (H*W,) written in place
        torch.gt(logits, 0, out=pos)
        prob = logits.sigmoid_().masked_fill_(~pos, 0.0)  # sigmoid inside the mask, 0 outside
        total[q] = prob.sum(dtype=torch.float64)
        count[q] = pos.sum()
    return masks.view(-1, h, w), (total / (count + 1e-6)).float()


def _rles_and_scores(low: Tensor, meta: ImageMeta) -> tuple[list[dict], Tensor]:
    """`_masks_and_scores` of the logits that `restore_logits` makes of `low` (U, h4, w4), with
    each mask as a COCO RLE: restored, thresholded and encoded one query at a time."""
    u = low.shape[0]
    h, w = meta.original_size
    total = torch.zeros(u, dtype=torch.float64, device=low.device)
    count = torch.zeros(u, dtype=torch.int64, device=low.device)
    column_major = torch.empty(w, h, dtype=torch.bool)  # one mask, transposed: what the encoder reads
    rles = []
    for q, logits in restored_one_by_one(low, meta):
        pos = logits > 0  # (H*W,)
        column_major.copy_(pos.view(h, w).t())
        rles.append(mask_utils.encode(column_major.numpy().view(np.uint8).T[:, :, None])[0])
        prob = logits.sigmoid_().masked_fill_(~pos, 0.0)  # sigmoid inside the mask, 0 outside
        total[q] = prob.sum(dtype=torch.float64)
        count[q] = pos.sum()
    return rles, (total / (count + 1e-6)).float()


def _gather_rows_in_place(buf: Tensor, src: Tensor) -> Tensor:
    """`buf[src]` (M, ...) for src (M,) indices into buf's first rows, made inside buf (R >= M
    rows) with one spare row instead of a second stack: the first use of every source row is
    moved to its place by following the cycles of a permutation, then repeated uses are copied."""
    m, r = src.numel(), buf.shape[0]
    src_list = src.tolist()
    primary: dict[int, int] = {}  # source row -> the first destination that takes it
    for dst, s in enumerate(src_list):
        primary.setdefault(s, dst)
    perm = [-1] * r  # perm[dst] = the row whose content moves to dst
    for s, dst in primary.items():
        perm[dst] = s
    unused = iter(sorted(set(range(r)) - set(primary)))  # rows nobody needs fill the other places
    for dst in range(r):
        if perm[dst] < 0:
            perm[dst] = next(unused)
    done = [False] * r
    spare = torch.empty_like(buf[0])
    for start in range(r):  # new[dst] = old[perm[dst]], one cycle at a time
        if done[start] or perm[start] == start:
            done[start] = True
            continue
        spare.copy_(buf[start])
        dst = start
        while True:
            done[dst] = True
            s = perm[dst]
            if s == start:
                buf[dst].copy_(spare)
                break
            buf[dst].copy_(buf[s])
            dst = s
    for dst, s in enumerate(src_list):  # repeated sources: copies of the row placed first
        if primary[s] != dst:
            buf[dst].copy_(buf[primary[s]])
    return buf[:m]

