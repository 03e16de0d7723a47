"""Plain data passed between the stages: ground-truth targets and per-task results.

Every dataset yields `(image uint8 (H, W, 3), Target)`; the post-processing returns one of the
`*Result` types per image; the evaluators consume results and targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = 255


@dataclass
class Target:
    """Ground truth of one image as per-segment binary masks.

    masks: (N, H, W) bool; labels: (N,) int64 class ids in [0, C); is_crowd: (N,) bool.
    """

    masks: Tensor
    labels: Tensor
    is_crowd: Tensor

    @classmethod
    def empty(cls, height: int, width: int) -> "Target":
        return cls(
            torch.zeros(0, height, width, dtype=torch.bool),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.bool),
        )

    def __len__(self) -> int:
        return int(self.labels.numel())

    def to_semantic(self, ignore_index: int = IGNORE_INDEX) -> Tensor:
        """(H, W) int64 label map; pixels covered by no (non-crowd) mask get `ignore_index`."""
        h, w = self.masks.shape[-2:]
        out = torch.full((h, w), ignore_index, dtype=torch.int64, device=self.masks.device)
        keep = ~self.is_crowd
        masks, labels = self.masks[keep], self.labels[keep]
        if masks.numel():
            covered = masks.any(0)
            idx = masks.to(torch.uint8).argmax(0)  # (H, W) index of the first mask covering a pixel
            out = torch.where(covered, labels[idx], out)
        return out


@dataclass
class PanopticResult:
    """Panoptic prediction of one image in the COCO panoptic convention.

    segmentation: (H, W) int64 segment ids, 0 = no segment (void).
    segments: one dict per segment id: {"id", "category_id" (0-based class), "isthing", "score",
    "area"}.
    """

    segmentation: Tensor
    segments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InstanceResult:
    """Instance prediction of one image: masks (N, H, W) bool, labels (N,) int64, scores (N,)."""

    masks: Tensor
    labels: Tensor
    scores: Tensor


@dataclass
class SemanticResult:
    """Semantic prediction of one image: labels (H, W) int64; scores (C, H, W) when kept."""

    labels: Tensor
    scores: Tensor | None = None
