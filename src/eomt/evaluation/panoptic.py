"""Panoptic quality (PQ, SQ, RQ) with the COCO panoptic rules, as the official EoMT evaluation.

Per image, every predicted segment is compared with every target segment through one joint
histogram of (prediction id, target id) pixel pairs. The rules (panopticapi, and the official
EoMT re-implementation of torchmetrics' `PanopticQuality.update`):

- void = pixels covered by no target segment; a prediction's void pixels are left out of its
  area in the IoU: `IoU = |P∩T| / (|P| - |P∩void| + |T| - |P∩T|)`;
- a match needs the same category and IoU > 0.5 (which makes it unique); crowd targets never match;
- an unmatched non-crowd target is a false negative; an unmatched crowd target is nothing;
- an unmatched prediction is a false positive unless more than half of it lies on void plus crowd
  targets of its own category.

Segments of one stuff category are merged into one segment per image, in the prediction and in
the target (torchmetrics resets stuff instance ids, so the official numbers do the same). Pixels
the prediction leaves unassigned belong to no predicted segment: they neither shrink a target's
area nor excuse a false negative (the official code gives them a dummy extra stuff class).

Unlike the official code, a target segment's crowd flag is read from that segment: torchmetrics
zeroes stuff instance ids, so the official update read every stuff target's flag from segment 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from eomt.errors import InputError
from eomt.evaluation.checks import check_ids, check_pairs, check_same_shape, class_names_or_ids
from eomt.evaluation.distributed import all_reduce_sum
from eomt.structures import PanopticResult, Target

_TP, _FP, _FN, _IOU = range(4)  # rows of the per-class statistics tensor


def _group_segments(labels: Tensor, merge: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Group segments: those flagged in `merge` join all others of their label, the rest stay alone.

    labels, merge: (N,). Returns the group of each segment (N,), each group's label (G,) and each
    group's source segment (G,), equal to N for merged groups.
    """
    n = labels.numel()
    alone = torch.arange(n, device=labels.device)
    key = labels * (n + 1) + torch.where(merge, torch.full_like(alone, n), alone)
    uniq, group = torch.unique(key, return_inverse=True)
    return group, uniq // (n + 1), uniq % (n + 1)


def _first_cover(masks: Tensor) -> Tensor:
    """(H, W) int64 index of the first of the (N, H, W) masks covering each pixel, N where none.

    An element-wise max over mask-weighted ranks; argmax over the mask axis is ~6x slower on CPU.
    """
    n = masks.shape[0]
    dtype = torch.uint8 if n < 2**8 else torch.int16 if n < 2**15 else torch.int32
    rank = torch.arange(n, 0, -1, device=masks.device).to(dtype)  # first mask ranks highest
    best = (masks.to(dtype) * rank[:, None, None]).amax(0)  # (H, W); 0 = uncovered
    return n - best.long()


def _compact_ids(seg: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct values of a non-negative id map and each pixel's index among them.

    Like `torch.unique(return_inverse=True)`, but through a histogram when ids are small.
    """
    if seg.numel() and int(seg.min()) < 0:
        raise InputError(f"PanopticResult.segmentation: found id {int(seg.min())}, expected ids >= 0")
    max_id = int(seg.max()) if seg.numel() else 0
    if max_id > 4 * seg.numel():  # sparse huge ids: a sort is cheaper than the histogram
        return torch.unique(seg, return_inverse=True)
    uniq = torch.bincount(seg.flatten(), minlength=max_id + 1).nonzero().squeeze(1)
    lut = torch.zeros(max_id + 1, dtype=torch.long, device=seg.device)
    lut[uniq] = torch.arange(uniq.numel(), device=seg.device)
    return uniq, lut[seg]


def _target_map(target: Target, is_stuff: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(H, W) target group ids (0 = void), per-group labels (G,) and crowd flags (G,)."""
    masks, labels = target.masks.bool(), target.labels.long()
    crowd = target.is_crowd.bool()
    num_classes = is_stuff.numel()
    check_ids("Target.labels", labels, num_classes)
    if masks.shape[0] != labels.numel() or crowd.numel() != labels.numel():
        raise InputError(
            f"Target: found {masks.shape[0]} masks, {labels.numel()} labels and {crowd.numel()} "
            "crowd flags, expected one of each per segment"
        )
    if labels.numel() == 0:
        empty = labels.new_zeros(0)
        return torch.zeros(masks.shape[-2:], dtype=torch.long, device=masks.device), empty, empty.bool()
    group, group_labels, source = _group_segments(labels, is_stuff[labels] & ~crowd)
    group_crowd = (source < labels.numel()) & crowd[source.clamp(max=labels.numel() - 1)]
    # Panoptic targets are disjoint; should masks overlap, the first one wins (as Target.to_semantic).
    first = _first_cover(masks)  # (H, W), N where uncovered
    pixel_group = torch.where(first < labels.numel(), group[first.clamp(max=labels.numel() - 1)] + 1, 0)
    return pixel_group, group_labels, group_crowd


def _pred_map(pred: PanopticResult, is_stuff: Tensor) -> tuple[Tensor, Tensor]:
    """(H, W) predicted group ids (0 = void) and per-group labels (P,)."""
    seg = pred.segmentation.long()
    device = seg.device
    ids = torch.tensor([int(s["id"]) for s in pred.segments], dtype=torch.long, device=device)
    cats = torch.tensor([int(s["category_id"]) for s in pred.segments], dtype=torch.long, device=device)
    num_classes = is_stuff.numel()
    if ids.numel() and bool((ids == 0).any()):
        raise InputError("PanopticResult.segments: found a segment with id 0, expected ids > 0 (0 is void)")
    check_ids("PanopticResult.segments", cats, num_classes, found="category_id")
    uniq, inverse = _compact_ids(seg)  # ids present in the map
    sorted_ids, order = ids.sort()
    pos = torch.searchsorted(sorted_ids, uniq).clamp(max=max(ids.numel() - 1, 0))
    known = (sorted_ids[pos] == uniq) if ids.numel() else torch.zeros_like(uniq, dtype=torch.bool)
    unknown = ~known & (uniq != 0)
    if bool(unknown.any()):
        raise InputError(
            f"PanopticResult.segmentation: found segment ids {uniq[unknown].tolist()} that are not in "
            "segments, expected every non-zero id to have a segments entry"
        )
    present = uniq[known]  # non-void ids that cover at least one pixel
    present_cats = cats[order[pos[known]]]
    if present.numel() == 0:
        return torch.zeros_like(seg), cats.new_zeros(0)
    group, group_labels, _ = _group_segments(present_cats, is_stuff[present_cats])
    lut = torch.zeros(uniq.numel(), dtype=torch.long, device=device)  # uniq index -> group id + 1
    lut[known] = group + 1
    return lut[inverse], group_labels


def panoptic_image_stats(pred: PanopticResult, target: Target, is_stuff: Tensor) -> Tensor:
    """Per-class (4, C) float64 [TP, FP, FN, IoU sum] of one image under the COCO panoptic rules.

    is_stuff: (C,) bool, True for stuff classes.
    """
    tgt_map, tgt_labels, tgt_crowd = _target_map(target, is_stuff.to(target.labels.device))
    pred_map, pred_labels = _pred_map(pred, is_stuff.to(pred.segmentation.device))
    check_same_shape("PanopticResult.segmentation", tuple(pred_map.shape), tuple(tgt_map.shape))
    pred_map, pred_labels = pred_map.to(tgt_map.device), pred_labels.to(tgt_map.device)
    num_classes = is_stuff.numel()
    n_pred, n_tgt = pred_labels.numel(), tgt_labels.numel()

    # One joint histogram gives every pairwise intersection; row / column 0 is void.
    pair_id = (pred_map * (n_tgt + 1) + tgt_map).flatten()  # (H*W,)
    inter = torch.bincount(pair_id, minlength=(n_pred + 1) * (n_tgt + 1))
    inter = inter.reshape(n_pred + 1, n_tgt + 1).double()  # (P+1, G+1)
    pred_area, tgt_area = inter.sum(1)[1:], inter.sum(0)[1:]  # (P,), (G,)
    pred_on_void = inter[1:, 0]  # (P,) prediction pixels where no target segment lies
    pair = inter[1:, 1:]  # (P, G)

    union = pred_area[:, None] - pred_on_void[:, None] + tgt_area[None, :] - pair
    iou = pair / union.clamp(min=1.0)
    same = pred_labels[:, None] == tgt_labels[None, :]
    match = same & ~tgt_crowd[None, :] & (iou > 0.5)  # IoU > 0.5 makes matches one-to-one
    pred_matched, tgt_matched = match.any(1), match.any(0)

    # Only pixels count: a target segment with no pixel left is no false negative (torchmetrics).
    fn = ~tgt_matched & ~tgt_crowd & (tgt_area > 0)
    excused = pred_on_void + (pair * (same & tgt_crowd[None, :])).sum(1)  # (P,) void + own crowd
    fp = ~pred_matched & (excused / pred_area.clamp(min=1.0) <= 0.5)

    stats = torch.zeros(4, num_classes, dtype=torch.float64, device=tgt_map.device)
    stats[_TP] = torch.bincount(tgt_labels[tgt_matched], minlength=num_classes).double()
    stats[_FP] = torch.bincount(pred_labels[fp], minlength=num_classes).double()
    stats[_FN] = torch.bincount(tgt_labels[fn], minlength=num_classes).double()
    stats[_IOU] = torch.bincount(tgt_labels, weights=(iou * match).sum(0), minlength=num_classes)
    return stats


class PanopticEvaluator:
    """Accumulates panoptic quality over images; `compute()` reduces over processes first.

    num_classes: C; stuff_classes: ids of the stuff classes (the others are things);
    class_names: C names for the per-class results (default: the ids as strings).
    """

    def __init__(
        self,
        num_classes: int,
        stuff_classes: Sequence[int],
        class_names: Sequence[str] | None = None,
    ) -> None:
        stuff = torch.as_tensor(list(stuff_classes), dtype=torch.long)
        check_ids("stuff_classes", stuff, num_classes, found="ids")
        self.class_names = class_names_or_ids(class_names, num_classes)
        self.num_classes = num_classes
        self.is_stuff = torch.zeros(num_classes, dtype=torch.bool)
        self.is_stuff[stuff] = True
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.stats = torch.zeros(4, self.num_classes, dtype=torch.float64)  # TP, FP, FN, IoU sum

    def update(self, preds: Sequence[PanopticResult], targets: Sequence[Target]) -> None:
        """Add a batch of per-image predictions and their targets (same order, same sizes)."""
        check_pairs(preds, targets)
        for pred, target in zip(preds, targets):
            self.stats += panoptic_image_stats(pred, target, self.is_stuff).cpu()

    def compute(self) -> dict[str, Any]:
        """PQ, SQ, RQ in percent over all / things / stuff classes, and per class.

        Means run over the classes with at least one TP, FP or FN (panopticapi); a set with no
        such class gives NaN. "per_class" maps each name to its pq, sq, rq (percent) and tp/fp/fn.
        """
        tp, fp, fn, iou_sum = all_reduce_sum(self.stats)
        sq = torch.where(tp > 0, iou_sum / tp.clamp(min=1.0), 0.0)
        denom = tp + 0.5 * fp + 0.5 * fn
        rq = torch.where(denom > 0, tp / denom.clamp(min=1e-12), 0.0)
        pq = sq * rq
        present = (tp + fp + fn) > 0
        out: dict[str, Any] = {}
        subsets = {"": present, "_things": present & ~self.is_stuff, "_stuff": present & self.is_stuff}
        for suffix, subset in subsets.items():
            for name, values in (("pq", pq), ("sq", sq), ("rq", rq)):
                out[name + suffix] = float(values[subset].mean()) * 100 if bool(subset.any()) else math.nan
        out["per_class"] = {
            name: {
                "pq": float(pq[c]) * 100,
                "sq": float(sq[c]) * 100,
                "rq": float(rq[c]) * 100,
                "tp": int(tp[c]),
                "fp": int(fp[c]),
                "fn": int(fn[c]),
            }
            for c, name in enumerate(self.class_names)
        }
        return out
