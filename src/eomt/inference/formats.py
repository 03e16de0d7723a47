"""Results -> COCO-style files: panoptic PNG + segments_info, instance RLE results, label PNGs.

- Panoptic PNG: segment id -> RGB with `id = R + 256 G + 256^2 B` (COCO panoptic format); 0 = void.
- Instances: the COCO results format, one dict per instance with an RLE mask
  (`pycocotools.mask.encode`), `bbox` [x, y, w, h] and `score`.
- Semantic: a label PNG of class indices (uint8, or uint16 beyond 256 classes).

`category_ids` maps 0-based class indices to dataset category ids (e.g. COCO's 1..90 with gaps);
without it the class index itself is written.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from eomt.images import id_to_rgb, rgb_to_id  # noqa: F401  (the panoptic colour rule, re-exported)
from eomt.structures import InstanceResult, PanopticResult, RLEMasks, SemanticResult


def _category(index: int, category_ids: Sequence[int] | None) -> int:
    return int(category_ids[index]) if category_ids is not None else int(index)


def segment_boxes(segmentation: Tensor, num_segments: int) -> Tensor:
    """Boxes [x, y, w, h] (num_segments, 4) of segment ids 1..n in an id map (H, W); 0 = void."""
    h, w = segmentation.shape
    device = segmentation.device
    n = num_segments + 1
    big = max(h, w)
    x0, y0 = torch.full((n,), big, device=device), torch.full((n,), big, device=device)
    x1, y1 = torch.full((n,), -1, device=device), torch.full((n,), -1, device=device)
    band = max(1, (1 << 20) // w)  # rows at a time: no image-sized index tensors
    for r in range(0, h, band):
        ids = segmentation[r : r + band].flatten()
        b = ids.numel() // w
        ys = torch.arange(r, r + b, device=device).repeat_interleave(w)  # row of every pixel
        xs = torch.arange(w, device=device).repeat(b)  # column of every pixel
        x0.scatter_reduce_(0, ids, xs, "amin")
        y0.scatter_reduce_(0, ids, ys, "amin")
        x1.scatter_reduce_(0, ids, xs, "amax")
        y1.scatter_reduce_(0, ids, ys, "amax")
    boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)[1:]  # (n-1, 4)
    return boxes.clamp(min=0)


def panoptic_to_coco(
    result: PanopticResult,
    image_id: int | str,
    file_name: str,
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A COCO panoptic annotation entry: {"image_id", "file_name", "segments_info": [...]}."""
    boxes = segment_boxes(result.segmentation, len(result.segments)).tolist()
    info = [
        {
            "id": int(s["id"]),
            "category_id": _category(s["category_id"], category_ids),
            "isthing": int(bool(s["isthing"])),
            "iscrowd": 0,
            "score": round(float(s["score"]), 6),
            "area": int(s["area"]),
            "bbox": boxes[s["id"] - 1],
        }
        for s in result.segments
    ]
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}


def instances_to_coco(
    result: InstanceResult,
    image_id: int | str,
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results entries (one per instance) with RLE masks for one image."""
    if len(result.labels) == 0:
        return []
    # One mask at a time: a column-major copy of one mask, not of all of them.
    masks = result.masks
    rles = masks.rles if isinstance(masks, RLEMasks) else [RLEMasks.encode_one(m) for m in masks]
    boxes = mask_utils.toBbox(rles).tolist()
    out = []
    for rle, box, label, score in zip(rles, boxes, result.labels.tolist(), result.scores.tolist()):
        out.append(
            {
                "image_id": image_id,
                "category_id": _category(label, category_ids),
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "bbox": [round(v, 2) for v in box],
                "score": round(float(score), 6),
            }
        )
    return out


def semantic_to_png_array(result: SemanticResult, num_classes: int) -> np.ndarray:
    """Label map (H, W) -> uint8 array (uint16 when there are more than 256 classes)."""
    labels = result.labels.cpu().numpy()
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)


def coco_categories(
    class_names: Sequence[str],
    stuff_classes: Sequence[int] = (),
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO `categories` entries {"id", "name", "isthing"} for a label space."""
    stuff = set(stuff_classes)
    return [
        {"id": _category(i, category_ids), "name": name, "isthing": int(i not in stuff)}
        for i, name in enumerate(class_names)
    ]
