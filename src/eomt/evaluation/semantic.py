"""Mean IoU from a confusion matrix, as the official EoMT semantic evaluation.

The official code uses torchmetrics' `MulticlassJaccardIndex(average=None, ignore_index=255)`
and takes the plain mean of the per-class IoUs. With torchmetrics' `zero_division=0`, a class
absent from both predictions and targets has IoU 0 and still counts in the mean; this evaluator
keeps that rule so its numbers equal the official ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from eomt.evaluation.checks import check_ids, check_pairs, check_same_shape, class_names_or_ids
from eomt.evaluation.distributed import all_reduce_sum
from eomt.structures import IGNORE_INDEX, SemanticResult, Target


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """(C, C) int64 pixel counts, rows = target class, columns = predicted class.

    pred, target: (H, W) integer maps; target pixels equal to `ignore_index` are skipped.
    """
    check_same_shape("semantic prediction", tuple(pred.shape), tuple(target.shape))
    valid = target != ignore_index
    pred, target = pred[valid].long(), target[valid].long()  # (V,) pixels that count
    for name, labels in (("prediction", pred), ("target", target)):
        check_ids(f"semantic {name}", labels, num_classes, note=f" or {ignore_index} (ignore) in the target")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # (C, C)


class SemanticEvaluator:
    """Accumulates a confusion matrix over images; `compute()` reduces over processes first.

    num_classes: C; ignore_index: the target value that is skipped; class_names: C names for the
    per-class results (default: the ids as strings).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.class_names = class_names_or_ids(class_names, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(
        self,
        preds: Sequence[Tensor] | Sequence[SemanticResult],
        targets: Sequence[Tensor] | Sequence[Target],
    ) -> None:
        """Add a batch: predictions as (H, W) label maps or SemanticResult; targets as (H, W)
        label maps (ignore_index for unlabelled pixels) or Target (rebuilt by `to_semantic`)."""
        check_pairs(preds, targets)
        for pred, target in zip(preds, targets):
            pred_map = pred.labels if isinstance(pred, SemanticResult) else pred
            tgt_map = target.to_semantic(self.ignore_index) if isinstance(target, Target) else target
            cm = confusion_matrix(pred_map.to(tgt_map.device), tgt_map, self.num_classes, self.ignore_index)
            self.confmat += cm.cpu()

    def compute(self) -> dict[str, Any]:
        """mIoU and pixel accuracy in percent, and the IoU of each class ("per_class", percent).

        mIoU is the mean over all C classes; a class never seen in predictions or targets has IoU 0.
        """
        cm = all_reduce_sum(self.confmat).double()
        inter = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1.0), 0.0)  # (C,)
        total = cm.sum()
        return {
            "miou": float(iou.mean()) * 100,
            "pixel_accuracy": float(inter.sum() / total) * 100 if total > 0 else float("nan"),
            "per_class": {name: float(iou[c]) * 100 for c, name in enumerate(self.class_names)},
        }
