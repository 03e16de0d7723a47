"""Label spaces of the datasets the paper uses (placeholder names until the full lists land)."""

from __future__ import annotations

_COUNTS = {("coco", "panoptic"): (133, list(range(80, 133))), ("coco", "instance"): (80, []),
           ("ade20k", "semantic"): (150, []), ("ade20k", "panoptic"): (150, []),
           ("cityscapes", "semantic"): (19, [])}


def label_space(dataset: str, task: str) -> tuple[list[str], list[int]]:
    """(class names, stuff class ids) of `dataset` for `task`."""
    n, stuff = _COUNTS[(dataset, task)]
    return [f"class_{i}" for i in range(n)], stuff
