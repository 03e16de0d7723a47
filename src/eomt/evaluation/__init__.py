"""Evaluators (panoptic quality, mean IoU, mask AP) and the one evaluation loop.

Each evaluator has `reset()`, `update(preds, targets)` and `compute() -> dict` (the `Evaluator`
protocol); `compute()` first reduces the state over torch.distributed processes, so one and
several processes give the same numbers. All reported numbers are percentages.
`build_evaluator(model_config, task)` picks one; `evaluate` / `evaluate_batch` (loop.py) feed it.
"""

from eomt.evaluation.base import Evaluator, build_evaluator
from eomt.evaluation.instance import InstanceEvaluator
from eomt.evaluation.loop import EvalTask, evaluate, evaluate_batch
from eomt.evaluation.panoptic import PanopticEvaluator
from eomt.evaluation.semantic import SemanticEvaluator

__all__ = [
    "EvalTask",
    "Evaluator",
    "InstanceEvaluator",
    "PanopticEvaluator",
    "SemanticEvaluator",
    "build_evaluator",
    "evaluate",
    "evaluate_batch",
]
