"""Evaluators: panoptic quality, mean IoU and mask AP.

Each has `reset()`, `update(preds, targets)` and `compute() -> dict`; `compute()` first reduces
the state over torch.distributed processes, so one and several processes give the same numbers.
All reported numbers are percentages.
"""

from eomt.evaluation.instance import InstanceEvaluator
from eomt.evaluation.panoptic import PanopticEvaluator
from eomt.evaluation.semantic import SemanticEvaluator

__all__ = ["InstanceEvaluator", "PanopticEvaluator", "SemanticEvaluator"]
