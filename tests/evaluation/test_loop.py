"""The evaluator seam: `build_evaluator`, the shared checks, and the one evaluation loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from eomt.errors import EomtError, InputError, OptionError
from eomt.evaluation import (
    EvalTask,
    Evaluator,
    InstanceEvaluator,
    PanopticEvaluator,
    SemanticEvaluator,
    build_evaluator,
    evaluate,
    evaluate_batch,
)
from eomt.evaluation.loop import dataset_batches, num_batches, scalar_metrics, thing_targets
from eomt.structures import Target
from tests.evaluation._synthetic import random_panoptic, random_semantic

LABELS = SimpleNamespace(task="panoptic", num_classes=4, stuff_classes=(2, 3), class_names=("a", "b", "c", "d"))


def test_build_evaluator_picks_one_per_task_and_names_a_bad_task() -> None:
    assert isinstance(build_evaluator(LABELS), PanopticEvaluator)
    assert isinstance(build_evaluator(LABELS, "semantic"), SemanticEvaluator)
    instance = build_evaluator(LABELS, "instance")
    assert isinstance(instance, InstanceEvaluator) and instance.class_names == ["a", "b", "c", "d"]
    unnamed = build_evaluator(SimpleNamespace(**{**vars(LABELS), "class_names": ()}), "semantic")
    assert unnamed.class_names == ["0", "1", "2", "3"]  # empty names: the ids
    for ev in (build_evaluator(LABELS, t) for t in ("panoptic", "semantic", "instance")):
        assert isinstance(ev, Evaluator)
    with pytest.raises(OptionError, match="task: found 'depth', expected one of panoptic, semantic, instance"):
        build_evaluator(LABELS, "depth")


def test_shared_checks_raise_the_family_and_stay_value_errors() -> None:
    for make in (lambda: SemanticEvaluator(3, class_names=["a"]), lambda: InstanceEvaluator(3, ["a"]),
                 lambda: PanopticEvaluator(3, [2], ["a"])):
        with pytest.raises(InputError, match="class_names: found 1 names, expected 3") as info:
            make()
        assert isinstance(info.value, ValueError) and isinstance(info.value, EomtError)
    with pytest.raises(InputError, match="update: found 1 predictions and 0 targets"):
        SemanticEvaluator(3).update([torch.zeros(2, 2, dtype=torch.long)], [])


def test_the_loop_equals_direct_updates_and_views_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    pairs = [random_panoptic(gen, 24, 32, 4, [2, 3])[:2] for _ in range(5)]
    direct = PanopticEvaluator(4, [2, 3])
    direct.update([p for p, _ in pairs], [t for _, t in pairs])
    # Each image is a constant: its value is the index of its prediction.
    dataset = [(torch.full((3, 2, 2), i), t) for i, (_, t) in enumerate(pairs)]
    predict = lambda images: [pairs[int(im[0, 0, 0])][0] for im in images]  # noqa: E731
    seen: list[int] = []

    def view(targets: list[Target]) -> list[Target]:
        seen.append(len(targets))
        return targets

    evaluator = PanopticEvaluator(4, [2, 3])
    evaluator.update([pairs[0][0]], [pairs[0][1]])  # the loop resets first
    batches = dataset_batches(dataset, 2, lambda image: image)
    assert num_batches(dataset, 2) == 3
    metrics = evaluate(batches, [EvalTask("pq", predict, evaluator, view)], total=3)
    assert metrics["pq"]["pq"] == pytest.approx(direct.compute()["pq"]) and seen == [2, 2, 1]
    assert "per_class" not in scalar_metrics(metrics["pq"]) and "pq_things" in scalar_metrics(metrics["pq"])


def test_evaluate_batch_moves_targets_to_the_cpu_and_thing_targets_drop_stuff() -> None:
    gen = torch.Generator().manual_seed(1)
    pred, target = random_semantic(gen, 8, 8, 3)
    evaluator = SemanticEvaluator(3)
    evaluate_batch(lambda images: [pred], evaluator, [torch.zeros(3, 8, 8)], [target])
    assert evaluator.compute()["miou"] >= 0
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    target3 = Target(masks, torch.tensor([0, 2, 1]), torch.tensor([False, True, False]))
    (things,) = thing_targets([2])([target3])
    assert things.labels.tolist() == [0, 1] and things.is_crowd.tolist() == [False, False]
    assert things.masks.shape == (2, 4, 4)
    assert math.isnan(InstanceEvaluator(3).compute()["ap"])
