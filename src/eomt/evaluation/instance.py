"""Mask AP with pycocotools' COCOeval (iouType "segm"), the reference COCO implementation.

Each update RLE-encodes the masks of its images; `compute()` gathers the per-image records of
every process (in rank order), numbers the images, builds the two COCO objects in memory and runs
COCOeval. Crowd targets enter with `iscrowd=1`, so detections on them are neither TP nor FP.
COCOeval keeps at most 100 detections per image for AP (the official post-processing emits 100).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from eomt.errors import InputError
from eomt.evaluation.checks import check_ids, check_pairs, check_same_shape, class_names_or_ids
from eomt.evaluation.distributed import all_gather_objects
from eomt.structures import InstanceResult, RLEMasks, Target

logger = logging.getLogger(__name__)

# COCOeval.stats positions of the reported numbers.
_STAT_INDEX = {"ap": 0, "ap50": 1, "ap75": 2, "ap_small": 3, "ap_medium": 4, "ap_large": 5}


def encode_masks(masks: Tensor | RLEMasks) -> list[dict[str, Any]]:
    """COCO RLEs of (N, H, W) binary masks, one dict {"size", "counts" (bytes)} per mask."""
    if isinstance(masks, RLEMasks):
        return masks.rles
    if masks.shape[0] == 0:
        return []
    array = masks.detach().bool().permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # (H, W, N)
    return mask_utils.encode(np.asfortranarray(array))  # pycocotools wants column-major


def _check(name: str, masks: Tensor, *per_segment: Tensor) -> None:
    if masks.dim() != 3 or any(t.numel() != masks.shape[0] for t in per_segment):
        raise InputError(
            f"{name}: found masks of shape {tuple(masks.shape)} and {[t.numel() for t in per_segment]} "
            "per-segment values, expected (N, H, W) masks and N values each"
        )


def _coco(images: list[dict[str, Any]], annotations: list[dict[str, Any]], num_classes: int) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _annotation(rle: dict[str, Any], image_id: int, label: int, ann_id: int) -> dict[str, Any]:
    # COCO category ids start at 1; area and bbox come from the RLE, as COCO.loadRes computes them.
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": mask_utils.toBbox(rle).tolist(),
        "iscrowd": 0,
    }


class InstanceEvaluator:
    """Accumulates RLE-encoded instance predictions and targets; `compute()` runs COCOeval on all
    processes' images. num_classes: C; class_names: C names for the per-class AP."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.class_names = class_names_or_ids(class_names, num_classes)
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.records: list[dict[str, Any]] = []

    def update(self, preds: Sequence[InstanceResult], targets: Sequence[Target]) -> None:
        """Add a batch of per-image predictions and their targets (same order, same sizes)."""
        check_pairs(preds, targets)
        for pred, target in zip(preds, targets):
            _check("InstanceResult", pred.masks, pred.labels, pred.scores)
            _check("Target", target.masks, target.labels, target.is_crowd)
            if pred.masks.shape[0]:  # no prediction, no size to compare
                check_same_shape("InstanceResult.masks", tuple(pred.masks.shape[-2:]),
                                 tuple(target.masks.shape[-2:]), what="size")
            for name, labels in (("InstanceResult.labels", pred.labels), ("Target.labels", target.labels)):
                check_ids(name, labels, self.num_classes, found="ids")
            height, width = target.masks.shape[-2:]
            self.records.append({
                "height": int(height),
                "width": int(width),
                "gt": encode_masks(target.masks),
                "gt_labels": target.labels.tolist(),
                "gt_crowd": target.is_crowd.bool().tolist(),
                "dt": encode_masks(pred.masks),
                "dt_labels": pred.labels.tolist(),
                "dt_scores": pred.scores.float().tolist(),
            })

    def compute(self) -> dict[str, Any]:
        """Mask AP, AP50, AP75, APs, APm, APl in percent, and AP per class ("per_class").

        A number COCOeval cannot define (no target in that area range or class) is NaN.
        """
        records = [r for part in all_gather_objects(self.records) for r in part]
        images, gts, dts = [], [], []
        for image_id, rec in enumerate(records, start=1):
            images.append({"id": image_id, "height": rec["height"], "width": rec["width"]})
            for rle, label, crowd in zip(rec["gt"], rec["gt_labels"], rec["gt_crowd"]):
                gts.append({**_annotation(rle, image_id, label, len(gts) + 1), "iscrowd": int(crowd)})
            for rle, label, score in zip(rec["dt"], rec["dt_labels"], rec["dt_scores"]):
                dts.append({**_annotation(rle, image_id, label, len(dts) + 1), "score": score})
        if not gts:
            undefined = {n: math.nan for n in self.class_names}
            return {**{k: math.nan for k in _STAT_INDEX}, "per_class": undefined}
        gt_coco, dt_coco = _coco(images, gts, self.num_classes), _coco(images, dts, self.num_classes)
        coco_eval = COCOeval(gt_coco, dt_coco, "segm")
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # COCOeval reports through print
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.debug("COCOeval:\n%s", log.getvalue())
        out: dict[str, Any] = {k: _percent(coco_eval.stats[i]) for k, i in _STAT_INDEX.items()}
        precision = torch.from_numpy(coco_eval.eval["precision"])  # (T, R, K, A, M); -1 = undefined
        per_class = precision[:, :, :, 0, -1]  # all areas, 100 detections: (T, R, K)
        defined = per_class > -1
        ap = (per_class * defined).sum((0, 1)) / defined.sum((0, 1)).clamp(min=1)  # (K,)
        out["per_class"] = {
            name: float(ap[c]) * 100 if bool(defined[..., c].any()) else math.nan
            for c, name in enumerate(self.class_names)
        }
        return out


def _percent(stat: float) -> float:
    return float(stat) * 100 if stat > -1 else math.nan
