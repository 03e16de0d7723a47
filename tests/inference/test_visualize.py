import numpy as np
import torch

from eomt.inference.visualize import (
    boundaries,
    class_colors,
    instance_colors,
    overlay_instances,
    overlay_panoptic,
    overlay_semantic,
)
from eomt.structures import InstanceResult, PanopticResult, SemanticResult


def _image(h: int = 40, w: int = 60) -> torch.Tensor:
    return torch.full((3, h, w), 100, dtype=torch.uint8)


def test_class_colours_are_deterministic_and_distinct() -> None:
    a = class_colors(range(150))
    assert a.shape == (150, 3) and a.dtype == np.uint8
    assert np.array_equal(a, class_colors(torch.arange(150)))
    assert np.array_equal(class_colors([7]), a[7:8])
    assert len({tuple(c) for c in a}) == 150


def test_instances_of_one_class_get_different_shades() -> None:
    cols = instance_colors([3, 3, 3, 1])
    assert len({tuple(c) for c in cols[:3]}) == 3
    assert np.array_equal(cols[3], instance_colors([1])[0])  # the first of a class: the class colour
    assert np.array_equal(cols[0], class_colors([3])[0])


def test_boundaries_mark_id_changes() -> None:
    ids = torch.zeros(4, 6, dtype=torch.long)
    ids[:, 3:] = 1
    edge = boundaries(ids)
    assert edge[:, 2].all() and edge.sum() == 4


def test_panoptic_overlay_blends_colours_and_adds_a_legend() -> None:
    seg = torch.zeros(40, 60, dtype=torch.long)
    seg[5:20, 5:25] = 1
    seg[25:, :] = 2
    res = PanopticResult(seg, [
        {"id": 1, "category_id": 0, "isthing": True, "score": 0.9, "area": 300},
        {"id": 2, "category_id": 2, "isthing": False, "score": 0.9, "area": 900},
    ])
    pic = np.asarray(overlay_panoptic(_image(), res, ["cat", "dog", "grass"], alpha=0.5))
    assert pic.shape[0] >= 40 and pic.shape[1] > 60  # legend panel on the right
    # Inside a segment (away from its boundary): the blend of grey 100 and the class colour.
    expected = np.round(0.5 * 100 + 0.5 * class_colors([2])[0].astype(float))
    assert np.array_equal(pic[30, 30], expected.astype(np.uint8))
    assert np.array_equal(pic[0, 50], [100, 100, 100])  # void stays unpainted
    assert np.array_equal(pic[19, 10], [255, 255, 255])  # boundary of segment 1
    # The legend shows the swatch of each class present.
    legend = pic[:, 60:].reshape(-1, 3)
    for c in class_colors([0, 2]):
        assert (legend == c).all(1).any()
    assert not (legend == class_colors([1])[0]).all(1).any()


def test_semantic_and_instance_overlays_keep_the_image_size_on_the_left() -> None:
    labels = torch.zeros(40, 60, dtype=torch.long)
    labels[:, 30:] = 4
    pic = np.asarray(overlay_semantic(_image(), SemanticResult(labels)))
    assert pic.shape[0] == 40 and pic.shape[1] > 60
    assert not np.array_equal(pic[10, 10], pic[10, 50])
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, :20] = True
    masks[1, 10:30] = True
    res = InstanceResult(masks, torch.tensor([1, 1]), torch.tensor([0.6, 0.9]))
    pic = np.asarray(overlay_instances(_image(), res, threshold=0.5))
    # Rows 10..29 belong to the better instance (index 1), drawn on top.
    c_best, c_other = instance_colors([1, 1])
    assert np.array_equal(pic[15, 30], np.round(0.45 * 100 + 0.55 * c_best.astype(float)).astype(np.uint8))
    assert np.array_equal(pic[5, 30], np.round(0.45 * 100 + 0.55 * c_other.astype(float)).astype(np.uint8))
    low = np.asarray(overlay_instances(_image(), res, threshold=0.95))
    assert np.array_equal(low[:40, :60], np.full((40, 60, 3), 100, np.uint8))  # nothing drawn
