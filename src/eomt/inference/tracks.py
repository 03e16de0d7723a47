"""Track ids for the segments of a video's frames, from an image model's per-frame results.

An image EoMT knows nothing of time: its query k is not the same object from frame to frame. The
segments of consecutive frames are linked by their masks instead (`MaskLinker`), with these rules:

- a segment continues a track of the *same class* whose last mask it overlaps with IoU >= `min_iou`
  (0.3 by default: an object that moves a third of its width between kept frames still matches);
  each track takes at most one segment of a frame, the pairing of largest total IoU (Hungarian);
- a track not seen for more than `patience` kept frames ends; a segment that continues no track
  starts a new one. So an object hidden for a few frames keeps its id if it comes back where it
  left; one that comes back later, or elsewhere, gets a new id. Ids count up from 1, never reused;
- IoU is measured on masks subsampled to about `LINK_SIZE` pixels on the longer side (a cheap
  stand-in for full resolution; segments are linked, not measured).

A VidEoMT carries its objects in its queries (query k of every frame is one object), so its track
id is the query index and no linking is needed; `eomt.inference.video` uses this linker for image
models only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from eomt.structures import InstanceResult, PanopticResult, RLEMasks, SemanticResult

LINK_SIZE = 160


def segment_masks(result: PanopticResult | InstanceResult, step: int) -> tuple[Tensor, Tensor]:
    """The masks (N, h, w) bool, subsampled by `step`, and class ids (N,) of a frame's segments, in
    the order of `result.segments` (panoptic) or of the instances."""
    if isinstance(result, PanopticResult):
        seg = result.segmentation[::step, ::step].cpu()  # (h, w)
        ids = torch.tensor([s["id"] for s in result.segments], dtype=seg.dtype)
        labels = torch.tensor([s["category_id"] for s in result.segments], dtype=torch.long)
        return seg[None] == ids[:, None, None], labels  # (N, h, w)
    masks = result.masks
    if isinstance(masks, RLEMasks):
        masks = masks.to_dense()
    return masks[:, ::step, ::step].cpu(), result.labels.cpu().long()


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (N, M) of bool masks a (N, h, w) and b (M, h, w); 0 where both are empty."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()  # (N, P), (M, P)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / union.clamp(min=1)


@dataclass
class MaskLinker:
    """Links the segments of successive frames into tracks (rules: module docstring)."""

    min_iou: float = 0.3
    patience: int = 10
    next_id: int = 1
    frame: int = 0
    _masks: Tensor | None = None  # (T, h, w) bool: each live track's last mask
    _labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    _ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    _seen: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def update(self, result: PanopticResult | InstanceResult | SemanticResult,
               keep: Tensor | None = None) -> list[int | None]:
        """Track ids of one frame's segments (panoptic) or instances (None for those not in `keep`,
        a bool (N,) mask); semantic results: the class index of each class present, sorted."""
        if isinstance(result, SemanticResult):
            self.frame += 1
            return torch.unique(result.labels).tolist()
        h, w = (result.segmentation if isinstance(result, PanopticResult) else result.masks).shape[-2:]
        step = max(1, round(max(h, w) / LINK_SIZE))
        masks, labels = segment_masks(result, step)
        chosen = torch.arange(len(labels)) if keep is None else keep.cpu().nonzero()[:, 0]
        masks, labels = masks[chosen], labels[chosen]
        if self._masks is None or self._masks.shape[-2:] != masks.shape[-2:]:
            # A first frame, or a new size: no track continues.
            self._masks, self._labels, self._ids, self._seen = masks[:0], labels[:0], labels[:0], labels[:0]
        track = torch.full((len(labels),), -1, dtype=torch.long)
        if len(labels) and len(self._ids):
            iou = mask_iou(masks, self._masks)  # (N, T)
            iou = torch.where(labels[:, None] == self._labels[None, :], iou, torch.zeros(()))
            rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
            good = (iou[rows, cols] >= self.min_iou).numpy()
            track[torch.as_tensor(rows[good], dtype=torch.long)] = torch.as_tensor(cols[good], dtype=torch.long)
        matched = track >= 0
        new = int((~matched).sum())
        ids = torch.empty(len(labels), dtype=torch.long)
        ids[matched] = self._ids[track[matched]]
        ids[~matched] = torch.arange(self.next_id, self.next_id + new)
        self.next_id += new
        # The live tracks: those matched now take this frame's mask; unmatched ones keep theirs.
        stale = torch.ones(len(self._ids), dtype=torch.bool)
        stale[track[matched]] = False
        alive = stale & (self.frame - self._seen <= self.patience)
        self._masks = torch.cat([self._masks[alive], masks])
        self._labels = torch.cat([self._labels[alive], labels])
        self._ids = torch.cat([self._ids[alive], ids])
        self._seen = torch.cat([self._seen[alive], torch.full((len(ids),), self.frame)])
        self.frame += 1
        out: list[int | None] = [None] * (len(chosen) if keep is None else len(keep))
        for i, t in zip(chosen.tolist(), ids.tolist()):
            out[i] = t
        return out


def track_colors(track_ids: list[int] | Tensor) -> np.ndarray:
    """One stable colour (N, 3) uint8 per track id: the golden-ratio hues of
    `visualize.class_colors`, indexed by track id (the same id is the same colour in every frame)."""
    from eomt.inference.visualize import class_colors

    return class_colors(torch.as_tensor(track_ids, dtype=torch.long))
