import contextlib
import io
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eomt.evaluation import InstanceEvaluator
from eomt.structures import InstanceResult, Target

from ._synthetic import random_instance

NUM_CLASSES = 3
KEYS = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]  # COCOeval.stats[0:6]


def _pairs() -> list[tuple[InstanceResult, Target]]:
    gen = torch.Generator().manual_seed(4)
    # 24 px images hold only small objects (< 32² px), 64 px ones also medium ones.
    pairs = [random_instance(gen, size, size, NUM_CLASSES) for size in (24, 64, 64, 96)]
    large = torch.zeros(2, 104, 104, dtype=torch.bool)  # a large object (> 96² px) and its crowd
    large[0, 2:102, 2:102], large[1, :2] = True, True
    found = torch.zeros(2, 104, 104, dtype=torch.bool)
    found[0, 5:104, 0:100], found[1, 0:2, 10:40] = True, True  # a good match, a detection on the crowd
    target = Target(large, torch.tensor([1, 1]), torch.tensor([False, True]))
    pairs.append((InstanceResult(found, torch.tensor([1, 1]), torch.tensor([0.7, 0.8])), target))
    pred, target = random_instance(gen, 32, 40, NUM_CLASSES)
    pairs.append((InstanceResult(pred.masks[:0], pred.labels[:0], pred.scores[:0]), target))  # nothing found
    return pairs


def _rle(mask: torch.Tensor) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # as in a JSON file


def _cocoeval_reference(pairs: list[tuple[InstanceResult, Target]]) -> COCOeval:
    """COCO-format ground truth and results built by hand, evaluated by pycocotools directly."""
    images, annotations, results = [], [], []
    for image_id, (pred, target) in enumerate(pairs, start=7):
        h, w = target.masks.shape[-2:]
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        for mask, label, crowd in zip(target.masks, target.labels, target.is_crowd):
            rle = _rle(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "segmentation": rle, "area": int(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": int(crowd),
            })
        for mask, label, score in zip(pred.masks, pred.labels, pred.scores):
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "segmentation": _rle(mask), "score": float(score)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(NUM_CLASSES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(results), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def test_matches_pycocotools_cocoeval_with_crowds() -> None:
    pairs = _pairs()
    assert all(bool(t.is_crowd.any()) for _, t in pairs)
    evaluator = InstanceEvaluator(NUM_CLASSES, class_names=["a", "b", "c"])
    evaluator.update([p for p, _ in pairs[:2]], [t for _, t in pairs[:2]])
    evaluator.update([p for p, _ in pairs[2:]], [t for _, t in pairs[2:]])
    result = evaluator.compute()

    reference = _cocoeval_reference(pairs)
    expected = [float(s) * 100 for s in reference.stats[:6]]
    assert min(expected) >= 0  # every area range has objects, every number is defined
    assert 0 < expected[0] < 100  # neither trivial nor empty
    assert [result[k] for k in KEYS] == pytest.approx(expected, abs=1e-9)

    precision = reference.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    for k, name in enumerate(["a", "b", "c"]):
        p = precision[:, :, k]
        assert result["per_class"][name] == pytest.approx(float(p[p > -1].mean()) * 100, abs=1e-9)


def test_crowd_flag_changes_the_result() -> None:
    # A detection on a crowd region is ignored, not a false positive: clearing the flag lowers AP.
    pairs = _pairs()[:2]
    crowd = InstanceEvaluator(NUM_CLASSES)
    crowd.update([p for p, _ in pairs], [t for _, t in pairs])
    no_crowd = InstanceEvaluator(NUM_CLASSES)
    cleared = [Target(t.masks, t.labels, torch.zeros_like(t.is_crowd)) for _, t in pairs]
    no_crowd.update([p for p, _ in pairs], cleared)
    assert crowd.compute()["ap"] != no_crowd.compute()["ap"]


def test_no_targets_give_nan_and_bad_sizes_raise() -> None:
    evaluator = InstanceEvaluator(2)
    assert math.isnan(evaluator.compute()["ap"])
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 2:5] = True
    evaluator.update([InstanceResult(masks, torch.tensor([0]), torch.tensor([0.9]))], [Target.empty(8, 8)])
    result = evaluator.compute()
    assert math.isnan(result["ap"]) and math.isnan(result["per_class"]["0"])
    one = InstanceResult(masks, torch.tensor([0]), torch.tensor([0.9]))
    with pytest.raises(ValueError, match=r"masks: found size \(8, 8\), expected the target's \(6, 8\)"):
        evaluator.update([one], [Target.empty(6, 8)])
    two_labels = InstanceResult(masks, torch.tensor([0, 1]), torch.tensor([0.9]))
    with pytest.raises(ValueError, match=r"InstanceResult: found masks of shape \(1, 8, 8\) and \[2, 1\]"):
        evaluator.update([two_labels], [Target.empty(8, 8)])
    bad_label = InstanceResult(masks, torch.tensor([5]), torch.tensor([0.9]))
    with pytest.raises(ValueError, match=r"InstanceResult.labels: found ids in \[5, 5\], expected ids in \[0, 2"):
        evaluator.update([bad_label], [Target.empty(8, 8)])
