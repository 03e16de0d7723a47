"""Network outputs -> per-image results (panoptic, instance, semantic), as the official evaluation.

All work happens on the device of the logits, in float32, vectorised over queries, segments and
pixels; the only Python loops are over the images of a batch and, on the CPU, over blocks of
pixels that keep the per-pixel work in cache. Only the queries a result can use are
upsampled to full resolution (bilinear interpolation treats every query channel on its own, so
this changes nothing but the memory and time). On the CPU, panoptic segmentation decides most
pixels from bounds on the low-resolution logits and computes the rest exactly
(`eomt.inference.pixel_bounds`); the result is the same.

Large images: where the restored logits of all queries would pass `_DIRECT_BYTES`, they are
restored one query at a time (a single channel is interpolated with the same arithmetic as
inside a contiguous stack; channels-last or a few channels together may differ in the last bit)
and reduced into per-pixel state as they come: the panoptic winner so far, the instance masks,
the semantic best class. Peak memory is then the per-pixel state plus one query's logits, not
queries x pixels floats.

Differences from the transformers port, on purpose:
- panoptic: a segment is kept when `area(new) / area(orig) >= overlap_threshold` (official code:
  skip when `<`, the ratio in float64); transformers keeps it only when its float32 ratio is `>`.
  They differ only on an exact tie, and at the default 0.8 not even there (float32(0.8) > 0.8);
  at e.g. 0.7 transformers drops a tie that the official code keeps.
- panoptic: segment ids start at 1 and unassigned pixels are 0 (COCO panoptic convention); the
  official code and transformers use -1 for unassigned pixels and ids from 0.
- instance: top-k over all (query, class) pairs, as the official evaluation; transformers takes one
  class per query and thresholds the score instead.
"""

from __future__ import annotations

import math
import threading
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor

from eomt.inference.pixel_bounds import plan_assignment
from eomt.inference.preprocess import ImageMeta, Windows, restore_geometry
from eomt.structures import InstanceResult, PanopticResult, RLEMasks, SemanticResult


_WORKSPACE_LIMIT = 512 << 20  # bytes a thread keeps for reuse
_DIRECT_BYTES = 256 << 20  # restored float logits up to this size are made in one piece
_MERGE_BLOCK = 1 << 20  # pixels per step of the segment merging
DENSE_MASK_BYTES = 256 << 20  # instance masks of mask_format="auto" are RLE above this size
MASK_FORMATS = ("auto", "dense", "rle")
_workspace = threading.local()


def _buffer(slot: int, shape: tuple[int, int, int, int], like: Tensor) -> Tensor | None:
    """A reused channels-last float32 buffer of `shape` on the CPU (None where not worth it).

    The restored logits are the largest tensors of the post-processing (queries x image pixels,
    114 MB for 93 queries at 480x640). Freshly allocated, such a block comes from the OS on every
    call and its first write page-faults through all of it, which costs more than the bilinear
    interpolation itself; a buffer kept per thread is written in place instead.
    """
    if like.device.type != "cpu":
        return None
    numel = math.prod(shape)
    if numel * 4 > _WORKSPACE_LIMIT:
        return None
    cache = getattr(_workspace, "buffers", None)
    if cache is None:
        cache = _workspace.buffers = {}
    flat = cache.get(slot)
    if flat is None or flat.numel() < numel:
        flat = cache[slot] = torch.empty(numel, dtype=torch.float32)
    b, c, h, w = shape
    return flat[:numel].view(b, h, w, c).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)


def release_buffers() -> None:
    """Free this thread's reused post-processing buffers (they are re-created on demand)."""
    _workspace.buffers = {}


def _bilinear(x: Tensor, size: tuple[int, int], scales: tuple[float, float] | None, slot: int,
              reuse: bool) -> Tensor:
    """`F.interpolate(x, size, mode="bilinear")` (with `scales` as its scale factors when given),
    written into a reused buffer when `reuse`."""
    out = _buffer(slot, (x.shape[0], x.shape[1], *size), x) if reuse else None
    if out is None:
        if scales is None:
            return F.interpolate(x, size=size, mode="bilinear")
        return F.interpolate(x, scale_factor=scales, mode="bilinear", recompute_scale_factor=False)
    sh, sw = scales if scales is not None else (None, None)
    return torch._C._nn.upsample_bilinear2d(x, size, False, sh, sw, out=out)


def restore_logits(
    mask_logits: Tensor, meta: ImageMeta, reuse_buffers: bool = False, channels_last: bool = True
) -> Tensor:
    """Mask logits of one padded input (Q, h4, w4) -> logits at the original image size (Q, H, W).

    Upsample to the network input size, crop the unpadded (scaled) region, resize to the original.
    Only the rows and columns the crop keeps are interpolated: the input is cut to the source
    pixels they read (one beyond, so no border clamping changes), with the same scale factor, so
    the values are those of the full upsampling. The result has channels-last strides (queries
    innermost), which makes the per-pixel reductions over queries contiguous.

    `reuse_buffers=True` writes the result into a buffer this thread reuses on the next call
    (the caller must be done with it by then); the post-processing functions below do so.
    `channels_last=False` gives a contiguous (Q, H, W) result instead, whose every query channel is
    interpolated on its own (the same values whichever queries are restored together).
    """
    rows, cols, size, scales = restore_geometry(mask_logits.shape[1:], meta)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = mask_logits[None, :, :rows, :cols].float().contiguous(memory_format=layout)
    x = _bilinear(x, size, scales, 0, reuse_buffers)
    sh, sw = meta.scaled_size
    x = x[..., :sh, :sw]  # (1, Q, sh, sw) drop the padding
    if meta.scaled_size == meta.original_size:  # resizing to the same size is the identity
        return x[0]
    return _bilinear(x, tuple(meta.original_size), None, 1, reuse_buffers)[0]


def panoptic(
    mask_logits: Tensor,
    class_logits: Tensor,
    metas: Sequence[ImageMeta],
    stuff_classes: Sequence[int] = (),
    threshold: float = 0.8,
    mask_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
) -> list[PanopticResult]:
    """Panoptic segmentation from mask logits (B, Q, h, w) and class logits (B, Q, C+1).

    Queries whose best class (no-object included) is a real class with probability > `threshold`
    compete per pixel by `score_q * sigmoid(mask_q)`. Query k becomes a segment when its won
    region `new`, its own mask `orig = sigmoid >= mask_threshold` and `new & orig` are non-empty
    and `|new| / |orig| >= overlap_threshold`; its pixels are `new & orig`. Stuff queries of one
    class merge into one segment (the first query's id and score); things get an id each.
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
            results.append(PanopticResult(torch.zeros(h, w, dtype=torch.long, device=device), []))
            continue
        low, kept_scores = mask_logits[i, idx], scores[i, idx]
        if _is_large(idx.numel(), (h, w)):  # one query at a time into per-pixel state
            assignment = _assign_pixels_chunked(low, meta, kept_scores, mask_threshold)
        else:
            # On accelerators the direct path is a few large kernels; the bounds pay off on the CPU.
            plan = plan_assignment(low, meta, kept_scores, mask_threshold) if device.type == "cpu" else None
            logits = restore_logits(low, meta, reuse_buffers=True)  # (K, H, W)
            if plan is None:
                assignment = _assign_pixels(logits, kept_scores, mask_threshold, from_logits=True)
            else:
                assignment = plan.resolve(logits)
        results.append(_merge_segments(*assignment, kept_scores, classes[i, idx], is_stuff_class, overlap_threshold, (h, w)))
    return results


def _column_sum(x: Tensor) -> Tensor:
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


def _count_true(mask: Tensor) -> Tensor:
    """Trues per column of a boolean (P, K) mask, int64 (K,)."""
    return _column_sum(mask)


def _pixel_blocks(x: Tensor, block: int) -> Iterator[tuple[int, Tensor]]:
    """(start, (b, K) block) over the pixels of a (K, H, W) tensor, in pixel order.

    Blocks are views when the tensor is channels-last (queries innermost), as the restored logits
    are; on the CPU they are cache-sized, on other devices one block covers the image.
    """
    flat = x.permute(1, 2, 0).reshape(-1, x.shape[0])  # (P, K)
    if x.device.type != "cpu":
        block = flat.shape[0]
    for start in range(0, flat.shape[0], block):
        yield start, flat[start : start + block]


def _masks_and_scores(logits: Tensor, block: int = 4096) -> tuple[Tensor, Tensor]:
    """Binary masks `logits > 0` as a contiguous (U, H, W) bool tensor, and per query the mean
    sigmoid inside its mask (0 for an empty mask), from (U, H, W) logits.

    The pixels go through in blocks (see `_pixel_blocks`): each block is thresholded once,
    transposed into the mask rows and summed, in float64 across blocks.
    """
    u, h, w = logits.shape
    masks = torch.empty(u, h * w, dtype=torch.bool, device=logits.device)
    total = torch.zeros(u, dtype=torch.float64, device=logits.device)
    count = torch.zeros(u, dtype=torch.int64, device=logits.device)
    for start, x in _pixel_blocks(logits, block):
        pos = x > 0
        masks[:, start : start + x.shape[0]] = pos.t()
        prob = x.sigmoid().masked_fill_(~pos, 0.0)  # (b, U) sigmoid inside the mask, 0 outside
        total += _column_sum(prob)
        count += _count_true(pos)
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
    for q, logits in _restored_one_by_one(low, meta):
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
    for q, logits in _restored_one_by_one(low, meta):
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


def _assign_pixels(
    masks: Tensor, scores: Tensor, mask_threshold: float, from_logits: bool, block: int = 4096
) -> tuple[Tensor, Tensor, Tensor]:
    """Per pixel: the winning query, whether the pixel is inside the winner's own mask; per query
    the area of its own mask. masks: (K, H, W) probabilities (or logits with `from_logits`).

    Returns mask_ids (H*W,) int64, inside (H*W,) bool and orig_area (K,) int64. The pixels go
    through in blocks (see `_pixel_blocks`), so the probabilities, weighted scores and thresholded
    masks of a block stay in cache instead of being written out as (K, H, W) tensors.
    """
    k, h, w = masks.shape
    mask_ids = torch.empty(h * w, dtype=torch.long, device=masks.device)
    inside = torch.empty(h * w, dtype=torch.bool, device=masks.device)
    orig_area = torch.zeros(k, dtype=torch.int64, device=masks.device)
    for start, prob in _pixel_blocks(masks, block):
        if from_logits:
            prob = prob.sigmoid()
        ids = (prob * scores).max(1).indices  # (b,) the first maximum wins ties, as argmax
        orig = prob >= mask_threshold  # (b, K)
        orig_area += _count_true(orig)
        mask_ids[start : start + ids.shape[0]] = ids
        inside[start : start + ids.shape[0]] = orig.gather(1, ids[:, None])[:, 0]
    return mask_ids, inside, orig_area


def use_rle(mask_format: str, count: int, size: Sequence[int]) -> bool:
    """Whether `count` instance masks of an (H, W) = `size` image are made as `RLEMasks`."""
    if mask_format == "auto":
        return count * size[0] * size[1] > DENSE_MASK_BYTES
    return mask_format == "rle"


def _is_large(channels: int, size: Sequence[int]) -> bool:
    """Whether `channels` float maps of `size` (H, W) are too large to make in one piece."""
    return channels * size[0] * size[1] * 4 > _DIRECT_BYTES


def _restored_one_by_one(low: Tensor, meta: ImageMeta) -> Iterator[tuple[int, Tensor]]:
    """(query, logits (H*W,)) one query at a time, restored to the original size (contiguous,
    the caller's to change)."""
    for q in range(low.shape[0]):
        yield q, restore_logits(low[q : q + 1], meta, channels_last=False).view(-1)


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
    for j, logits in _restored_one_by_one(low, meta):
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
    return PanopticResult(segmentation, segments)


def instance(
    mask_logits: Tensor,
    class_logits: Tensor,
    metas: Sequence[ImageMeta],
    top_k: int = 100,
    threshold: float = 0.0,
    mask_format: str = "auto",
) -> list[InstanceResult]:
    """Instance segmentation from mask logits (B, Q, h, w) and class logits (B, Q, C+1).

    The `top_k` best (query, class) pairs over the flattened Q x C class probabilities (no-object
    excluded; one query may give several instances); mask = logits > 0 at the original size;
    score = class probability x mean sigmoid inside the mask. Instances scoring below `threshold`
    are dropped (0 keeps all, as the evaluation does). Sorted by decreasing score.

    mask_format: "dense": masks as an (N, H, W) bool tensor; "rle": as `RLEMasks` (COCO
    run-length encodings, made one query at a time, so memory stays at one query's pixels);
    "auto" (default): dense unless the stack of `top_k` masks would pass `DENSE_MASK_BYTES`
    (256 MB: 40 masks of a 6000x4000 photo, 270 of 1280x720), then RLE.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format: unknown value {mask_format!r} (expected one of: {', '.join(MASK_FORMATS)})")
    probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, C)
    num_classes = probs.shape[-1]
    k = min(top_k, probs.shape[1] * num_classes)
    top_scores, top_idx = probs.flatten(1).topk(k, dim=1)  # (B, k)
    results = []
    for i, meta in enumerate(metas):
        queries = top_idx[i] // num_classes
        labels = top_idx[i] % num_classes
        # Upsample each distinct query once, then index the instances into it.
        uniq, inverse = torch.unique(queries, return_inverse=True)
        if use_rle(mask_format, k, meta.original_size):
            rles, mask_scores = _rles_and_scores(mask_logits[i, uniq], meta)
            scores = top_scores[i] * mask_scores[inverse]
            keep = scores >= threshold
            order = scores[keep].argsort(descending=True)
            sel = keep.nonzero()[:, 0][order]
            masks = RLEMasks([rles[r] for r in inverse[sel].tolist()], meta.original_size, mask_logits.device)
            results.append(InstanceResult(masks, labels[sel], scores[sel]))
            continue
        if not _is_large(uniq.numel(), meta.original_size):
            logits = restore_logits(mask_logits[i, uniq], meta, reuse_buffers=True)  # (U, H, W)
            binary, mask_scores = _masks_and_scores(logits)  # (U, H, W) contiguous masks, (U,)
        else:
            # Room for every instance: the masks are then put in instance order in place.
            binary, mask_scores = _masks_and_scores_chunked(mask_logits[i, uniq], meta, rows=k)
        scores = top_scores[i] * mask_scores[inverse]
        keep = scores >= threshold
        order = scores[keep].argsort(descending=True)
        sel = keep.nonzero()[:, 0][order]
        rows = inverse[sel]
        if binary.shape[0] > len(uniq):
            binary = _gather_rows_in_place(binary, rows)
        elif not torch.equal(rows, torch.arange(len(uniq), device=rows.device)):
            binary = binary[rows]  # a copy; skipped when the instances are the queries in order
        results.append(InstanceResult(binary, labels[sel], scores[sel]))
    return results


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
        nh, nw = meta.scaled_size
        canvas = crop_scores.new_zeros(crop_scores.shape[1], nh, nw)  # (C, nh, nw)
        h, w = meta.original_size
        if h > w:  # crops stacked along the height
            canvas.index_add_(1, pos, crop_scores.permute(1, 0, 2, 3).flatten(1, 2))  # (C, n*S, S)
            counts = torch.bincount(pos, minlength=nh)[None, :, None]
        else:
            canvas.index_add_(2, pos, crop_scores.permute(1, 2, 0, 3).flatten(2, 3))  # (C, S, n*S)
            counts = torch.bincount(pos, minlength=nw)[None, None, :]
        canvas = canvas / counts.clamp(min=1)  # average where crops overlap
        if not return_scores and _is_large(canvas.shape[0], (h, w)):
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
