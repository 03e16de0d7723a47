import math

import pytest
import torch
from torchmetrics.detection import PanopticQuality

from eomt.evaluation import PanopticEvaluator
from eomt.structures import PanopticResult, Target

from ._synthetic import random_panoptic

NUM_CLASSES = 6
STUFF = [1, 4]  # interleaved with things, so torchmetrics' row order differs from class order


def _torchmetrics_reference(pairs: list) -> tuple[PanopticQuality, list[int]]:
    """torchmetrics set up as the official evaluation; returns the metric and its row of each class."""
    things = [c for c in range(NUM_CLASSES) if c not in STUFF]
    metric = PanopticQuality(things, [*STUFF, NUM_CLASSES], return_sq_and_rq=True, return_per_class=True)
    for _, _, pred_tm, tgt_tm in pairs:
        metric.update(pred_tm[None], tgt_tm[None])
    rows = [metric.cat_id_to_continuous_id[c] for c in range(NUM_CLASSES)]
    return metric, rows


def test_matches_torchmetrics_on_random_crowd_free_images() -> None:
    gen = torch.Generator().manual_seed(1)
    pairs = [random_panoptic(gen, 20, 24, NUM_CLASSES, STUFF) for _ in range(12)]
    evaluator = PanopticEvaluator(NUM_CLASSES, STUFF)
    evaluator.update([p[0] for p in pairs[:5]], [p[1] for p in pairs[:5]])
    evaluator.update([p[0] for p in pairs[5:]], [p[1] for p in pairs[5:]])
    result = evaluator.compute()

    metric, rows = _torchmetrics_reference(pairs)
    tp, fp, fn = (getattr(metric, n)[rows] for n in ("true_positives", "false_positives", "false_negatives"))
    per_class = metric.compute()[rows] * 100  # (C, 3) pq, sq, rq
    assert tp.sum() > 3 and fp.sum() > 3 and fn.sum() > 3  # the data exercises every outcome
    for c in range(NUM_CLASSES):
        got = result["per_class"][str(c)]
        assert (got["tp"], got["fp"], got["fn"]) == (int(tp[c]), int(fp[c]), int(fn[c]))
        # torchmetrics divides in float32
        assert [got["pq"], got["sq"], got["rq"]] == pytest.approx(per_class[c].tolist(), rel=1e-6, abs=1e-6)
    assert torch.allclose(evaluator.stats[3], metric.iou_sum[rows], rtol=0, atol=1e-6)  # its IoUs are float32

    present = (tp + fp + fn) > 0
    is_stuff = torch.tensor([c in STUFF for c in range(NUM_CLASSES)])
    for suffix, subset in (("", present), ("_things", present & ~is_stuff), ("_stuff", present & is_stuff)):
        for i, name in enumerate(("pq", "sq", "rq")):
            assert result[name + suffix] == pytest.approx(float(per_class[subset, i].mean()), rel=1e-6)


def test_reset_and_repeated_compute() -> None:
    gen = torch.Generator().manual_seed(2)
    pred, target, _, _ = random_panoptic(gen, 16, 16, NUM_CLASSES, STUFF)
    evaluator = PanopticEvaluator(NUM_CLASSES, STUFF)
    evaluator.update([pred], [target])
    first = evaluator.compute()
    assert evaluator.compute() == first
    evaluator.reset()
    assert math.isnan(evaluator.compute()["pq"])


def test_segment_ids_are_only_names() -> None:
    gen = torch.Generator().manual_seed(6)
    pairs = [random_panoptic(gen, 20, 24, NUM_CLASSES, STUFF)[:2] for _ in range(4)]
    renamed = []
    for pred, _ in pairs:  # huge sparse ids take the sort path instead of the histogram
        big = {s["id"]: 10**9 + 13 * s["id"] for s in pred.segments}
        seg = pred.segmentation.clone()
        for old, new in big.items():
            seg[pred.segmentation == old] = new
        renamed.append(PanopticResult(seg, [{**s, "id": big[s["id"]]} for s in pred.segments]))
    small, large = PanopticEvaluator(NUM_CLASSES, STUFF), PanopticEvaluator(NUM_CLASSES, STUFF)
    small.update([p for p, _ in pairs], [t for _, t in pairs])
    large.update(renamed, [t for _, t in pairs])
    assert small.compute() == large.compute()
    assert small.stats[0].sum() > 0


def _rect(h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    out = torch.zeros(h, w, dtype=torch.bool)
    out[rows, cols] = True
    return out


def _pred(h: int, w: int, segments: list[tuple[int, torch.Tensor]]) -> PanopticResult:
    seg = torch.zeros(h, w, dtype=torch.int64)
    for i, (_, mask) in enumerate(segments, start=1):
        seg[mask] = i
    return PanopticResult(seg, [{"id": i, "category_id": c} for i, (c, _) in enumerate(segments, start=1)])


def test_crowd_and_void_follow_the_coco_rules() -> None:
    person, car, sky = 0, 1, 2  # class 3 (a thing) never occurs
    h = w = 10
    r = lambda rows, cols: _rect(h, w, rows, cols)  # noqa: E731

    # Image 1: a person crowd, a person, sky; rows 8-9 are void.
    target1 = Target(
        torch.stack((r(slice(0, 5), slice(0, 5)), r(slice(0, 5), slice(5, 10)), r(slice(5, 8), slice(None)))),
        torch.tensor([person, person, sky]),
        torch.tensor([True, False, False]),
    )
    pred1 = _pred(h, w, [
        (person, r(slice(0, 5), slice(0, 5))),  # exactly the crowd: no match (crowds never match), not a FP
        (person, r(slice(0, 5), slice(5, 10)) | r(slice(8, 10), slice(5, 10))),  # person + 10 void px: IoU 1
        (car, r(slice(8, 10), slice(0, 5))),  # all void: not a FP
        (sky, r(slice(5, 8), slice(0, 7))),  # 21 of 30 sky px: IoU 0.7
        (car, r(slice(5, 8), slice(7, 10))),  # on sky: a car FP
    ])
    # Image 2: a person crowd, a small car, sky; the rest of rows 0-4 is void.
    target2 = Target(
        torch.stack(
            (r(slice(0, 5), slice(0, 5)), r(slice(0, 2), slice(8, 10)), r(slice(5, 10), slice(None)))
        ),
        torch.tensor([person, car, sky]),
        torch.tensor([True, False, False]),
    )
    pred2 = _pred(h, w, [
        # 24 px: 6 on the person crowd, 10 on void, 8 on sky. Neither alone is > 50 %, both are: not a FP.
        (person, r(slice(3, 5), slice(2, 10)) | r(slice(5, 6), slice(2, 10))),
        (car, r(slice(0, 3), slice(0, 5))),  # on a crowd of another class: a car FP
        (sky, r(slice(6, 10), slice(None))),  # 40 of 50 sky px: IoU 0.8
    ])  # the car target is missed: a FN

    evaluator = PanopticEvaluator(4, stuff_classes=[sky], class_names=["person", "car", "sky", "bus"])
    evaluator.update([pred1, pred2], [target1, target2])
    result = evaluator.compute()
    counts = {name: (v["tp"], v["fp"], v["fn"]) for name, v in result["per_class"].items()}
    assert counts == {"person": (1, 0, 0), "car": (0, 2, 1), "sky": (2, 0, 0), "bus": (0, 0, 0)}
    # person: IoU 1 (void left out of the prediction's area); sky: (0.7 + 0.8) / 2; car: 0.
    assert result["per_class"]["person"]["sq"] == pytest.approx(100.0)
    assert result["per_class"]["sky"]["sq"] == pytest.approx(75.0)
    assert result["pq"] == pytest.approx((100 + 0 + 75) / 3)  # bus never occurs: left out
    assert result["pq_things"] == pytest.approx(50.0)
    assert result["pq_stuff"] == pytest.approx(75.0)
    assert result["rq"] == pytest.approx((1 + 0 + 1) / 3 * 100)


def test_stuff_segments_of_one_class_are_merged() -> None:
    sky = 1
    left, right = _rect(4, 8, slice(None), slice(0, 4)), _rect(4, 8, slice(None), slice(4, 8))
    target = Target(torch.stack((left, right)), torch.tensor([sky, sky]), torch.zeros(2, dtype=torch.bool))
    pred = _pred(4, 8, [(sky, left | right)])  # one segment covering both halves: one TP, IoU 1
    evaluator = PanopticEvaluator(2, stuff_classes=[sky])
    evaluator.update([pred], [target])
    expected = {"pq": 100.0, "sq": 100.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0}
    assert evaluator.compute()["per_class"]["1"] == expected


def test_bad_inputs_raise_clear_errors() -> None:
    target = Target(_rect(4, 4, slice(0, 2), slice(None))[None], torch.tensor([0]), torch.tensor([False]))
    evaluator = PanopticEvaluator(2, stuff_classes=[1])
    unknown = PanopticResult(torch.full((4, 4), 5), [{"id": 1, "category_id": 0}])
    with pytest.raises(ValueError, match=r"segment ids \[5\] that are not in segments"):
        evaluator.update([unknown], [target])
    with pytest.raises(ValueError, match=r"found shape \(3, 4\), expected the target's \(4, 4\)"):
        evaluator.update([PanopticResult(torch.zeros(3, 4, dtype=torch.int64), [])], [target])
    with pytest.raises(ValueError, match=r"category_id in \[7, 7\], expected ids in \[0, 2\)"):
        bad = PanopticResult(torch.ones(4, 4, dtype=torch.int64), [{"id": 1, "category_id": 7}])
        evaluator.update([bad], [target])
    with pytest.raises(ValueError, match=r"segmentation: found id -1, expected ids >= 0"):
        evaluator.update([PanopticResult(torch.full((4, 4), -1), [])], [target])
    with pytest.raises(ValueError, match=r"stuff_classes: found ids in \[1, 3\]"):
        PanopticEvaluator(3, stuff_classes=[1, 3])
