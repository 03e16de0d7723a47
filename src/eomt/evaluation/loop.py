"""The one evaluation loop: batches -> predictions -> evaluator updates -> metrics.

Validation during training, `eomt eval` (through validation) and the demo all feed their batches
through `evaluate_batch`; `evaluate` runs that step over a whole data set for one or more
(predictor, evaluator) pairs and reports progress as done/total batches with rate and ETA.
The loop knows nothing of the network: a task's `predict` maps a list of (3, H, W) uint8 images
to one result per image (e.g. `Predictor.predict_tensors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from eomt.evaluation.base import Evaluator
from eomt.structures import Target

Predict = Callable[[list[Tensor]], Sequence[Any]]
Batch = tuple[list[Tensor], list[Target]]

# done/total batches, elapsed < ETA, rate (DESIGN.md: what a user sees).
PROGRESS_FORMAT = "{desc} {n_fmt}/{total_fmt} batches {bar} {elapsed}<{remaining}, {rate_noinv_fmt}"


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One measurement in a loop: how to predict, what to accumulate, and which targets it sees.

    name: the key of its metrics in `evaluate`'s result; targets: maps a batch's targets to the
    ones this evaluator compares with (default: all of them), e.g. `thing_targets` for mask AP
    of a panoptic model.
    """

    name: str
    predict: Predict
    evaluator: Evaluator
    targets: Callable[[list[Target]], list[Target]] | None = None


def evaluate_batch(predict: Predict, evaluator: Evaluator, images: list[Tensor], targets: Sequence[Any]) -> None:
    """The per-batch step: predict the images, add the results and their targets to `evaluator`.

    images: B (3, H, W) uint8 tensors; targets: B `Target`s (or (H, W) label maps for the semantic
    evaluator) in image pixels, moved to the CPU, where the evaluators keep their state.
    """
    results = predict(images)
    evaluator.update(results, [_to_cpu(t) for t in targets])


def evaluate(
    batches: Iterable[Batch],
    tasks: Sequence[EvalTask],
    *,
    total: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Reset every task's evaluator, run `evaluate_batch` for each task on each batch (tasks in
    order within a batch), and return each task's `compute()` under its name.

    total: the number of batches, for the progress bar (default: `len(batches)` where defined);
    progress: show a transient bar on stderr.
    """
    from tqdm import tqdm

    for task in tasks:
        task.evaluator.reset()
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    bar = tqdm(total=total, desc="eval", bar_format=PROGRESS_FORMAT, disable=not progress, leave=False)
    with bar:
        for images, targets in batches:
            for task in tasks:
                chosen = task.targets(targets) if task.targets is not None else targets
                evaluate_batch(task.predict, task.evaluator, images, chosen)
            bar.update(1)
    return {task.name: task.evaluator.compute() for task in tasks}


def dataset_batches(dataset: Any, batch_size: int, to_image: Callable[[Any], Tensor]) -> Iterator[Batch]:
    """Consecutive batches of a map-style dataset of (image, Target) pairs, in index order.

    to_image: turns a dataset image (e.g. an (H, W, 3) uint8 array) into a (3, H, W) uint8 tensor.
    """
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield [to_image(image) for image, _ in items], [target for _, target in items]


def num_batches(dataset: Any, batch_size: int) -> int:
    """How many batches `dataset_batches` yields."""
    return -(-len(dataset) // batch_size)


def thing_targets(stuff_classes: Sequence[int]) -> Callable[[list[Target]], list[Target]]:
    """A target view with the stuff segments removed: what mask AP compares instance predictions
    of a panoptic model with."""
    stuff = torch.tensor(list(stuff_classes), dtype=torch.int64)

    def view(targets: list[Target]) -> list[Target]:
        keep = [~torch.isin(t.labels, stuff.to(t.labels.device)) for t in targets]
        return [Target(t.masks[k], t.labels[k], t.is_crowd[k]) for t, k in zip(targets, keep)]

    return view


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a `compute()` result (per-class tables left out), as floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _to_cpu(t: Target | Tensor) -> Target | Tensor:
    if isinstance(t, Tensor):  # a semantic label map
        return t.cpu()
    return Target(t.masks.cpu(), t.labels.cpu(), t.is_crowd.cpu())
