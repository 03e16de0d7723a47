"""The evaluator contract and the one place that picks an evaluator for a model and a task.

An evaluator follows detectron2's reset / process / evaluate contract: `reset()` forgets what it
has seen, `update(preds, targets)` adds a batch of per-image results and their targets, and
`compute()` first reduces the state over torch.distributed processes, so one and several
processes give the same numbers (percentages, NaN where a number is undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from eomt.errors import OptionError

TASKS = ("panoptic", "semantic", "instance")


@runtime_checkable
class Evaluator(Protocol):
    """What the evaluation loop, validation and the demo need of an evaluator."""

    def reset(self) -> None:
        """Forget every image seen so far."""

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:
        """Add a batch: one result per image (the task's `*Result`) and its `Target`."""

    def compute(self) -> dict[str, Any]:
        """The metrics over every image of every process (state reduced across processes first)."""


def build_evaluator(model_config: Any, task: str | None = None) -> Evaluator:
    """The evaluator of `task` (default: `model_config.task`) for a model's label space.

    model_config: a `ModelConfig` (or anything with `task`, `num_classes`, `stuff_classes`,
    `class_names`); empty `class_names` means the ids as names. panoptic -> PQ, semantic -> mIoU,
    instance -> mask AP. Raises `OptionError` for another task name.
    """
    task = task or model_config.task
    names = list(model_config.class_names) or None
    if task == "panoptic":
        from eomt.evaluation.panoptic import PanopticEvaluator

        return PanopticEvaluator(model_config.num_classes, model_config.stuff_classes, names)
    if task == "instance":
        from eomt.evaluation.instance import InstanceEvaluator

        return InstanceEvaluator(model_config.num_classes, names)
    if task == "semantic":
        from eomt.evaluation.semantic import SemanticEvaluator

        return SemanticEvaluator(model_config.num_classes, class_names=names)
    raise OptionError(f"task: found {task!r}, expected one of {', '.join(TASKS)}")
