import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from eomt.evaluation import SemanticEvaluator
from eomt.structures import SemanticResult, Target

from ._synthetic import random_semantic

NUM_CLASSES = 6  # the last class never occurs: it counts as IoU 0 in the mean, as in the official code


def _pairs(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [random_semantic(gen, 14, 18, NUM_CLASSES) for _ in range(n)]


def test_matches_torchmetrics_jaccard_and_accuracy() -> None:
    pairs = _pairs()
    evaluator = SemanticEvaluator(NUM_CLASSES)
    jaccard = MulticlassJaccardIndex(NUM_CLASSES, ignore_index=255, average=None)
    accuracy = MulticlassAccuracy(NUM_CLASSES, ignore_index=255, average="micro")
    for pred, target in pairs:
        evaluator.update([pred], [target])
        jaccard.update(pred[None], target[None])
        accuracy.update(pred[None], target[None])
    result = evaluator.compute()

    per_class = jaccard.compute() * 100
    assert any(bool((t == 255).any()) for _, t in pairs)
    assert per_class[-1] == 0 and per_class[:-1].min() > 0
    got = [result["per_class"][str(c)] for c in range(NUM_CLASSES)]
    assert got == pytest.approx(per_class.tolist(), rel=1e-6)
    assert result["miou"] == pytest.approx(float(per_class.mean()), rel=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(float(accuracy.compute()) * 100, rel=1e-6)


def test_targets_and_results_as_structures_give_the_same_numbers() -> None:
    pairs = _pairs(2)
    plain = SemanticEvaluator(NUM_CLASSES)
    plain.update([p for p, _ in pairs], [t for _, t in pairs])

    structured = SemanticEvaluator(NUM_CLASSES)
    targets = []
    for _, t in pairs:
        classes = t.unique()
        classes = classes[classes != 255]
        masks = t[None] == classes[:, None, None]  # (K, H, W) one mask per class present
        crowd = torch.zeros(1, *t.shape, dtype=torch.bool)
        crowd[0, :2] = True  # a crowd segment over the first rows: those pixels become ignored
        masks[:, :2] = False
        is_crowd = torch.arange(len(classes) + 1) == len(classes)
        targets.append(Target(torch.cat((masks, crowd)), torch.cat((classes, classes[:1])), is_crowd))
    structured.update([SemanticResult(p) for p, _ in pairs], targets)

    cropped = SemanticEvaluator(NUM_CLASSES)
    cropped.update([p[2:] for p, _ in pairs], [t[2:] for _, t in pairs])
    assert structured.compute() == cropped.compute()
    assert structured.compute() != plain.compute()  # the crowd rows really were ignored


def test_reset_and_errors() -> None:
    evaluator = SemanticEvaluator(3, class_names=["a", "b", "c"])
    evaluator.update([torch.tensor([[0, 1]])], [torch.tensor([[0, 2]])])
    assert evaluator.compute()["per_class"] == {"a": 100.0, "b": 0.0, "c": 0.0}
    evaluator.reset()
    assert evaluator.compute()["miou"] == 0.0
    with pytest.raises(ValueError, match=r"prediction: found class ids in \[0, 3\], expected ids in \[0, 3"):
        evaluator.update([torch.tensor([[0, 3]])], [torch.tensor([[0, 1]])])
    with pytest.raises(ValueError, match=r"semantic target: found class ids in \[0, 7\]"):
        evaluator.update([torch.tensor([[0, 1]])], [torch.tensor([[0, 7]])])
    with pytest.raises(ValueError, match=r"found shape \(1, 3\), expected the target's \(1, 2\)"):
        evaluator.update([torch.tensor([[0, 1, 1]])], [torch.tensor([[0, 1]])])
    with pytest.raises(ValueError, match="class_names: found 2 names, expected 3"):
        SemanticEvaluator(3, class_names=["a", "b"])
