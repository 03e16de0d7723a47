"""Synthetic scenes: determinism, targets consistent across tasks, masks that match the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eomt.classes import label_space
from eomt.data.synthetic import SyntheticScenes

NUM_THINGS = 4


def _equal(a: tuple, b: tuple) -> bool:
    return (
        np.array_equal(a[0], b[0])
        and torch.equal(a[1].masks, b[1].masks)
        and torch.equal(a[1].labels, b[1].labels)
    )


def test_deterministic_by_seed_and_index() -> None:
    ds = SyntheticScenes(6, size=48, seed=3)
    assert _equal(ds[2], ds[2])
    assert _equal(ds[2], SyntheticScenes(20, size=48, seed=3)[2])  # independent of the length
    assert _equal(ds[-1], ds[5])
    assert not np.array_equal(ds[2][0], ds[3][0])
    assert not np.array_equal(ds[2][0], SyntheticScenes(6, size=48, seed=4)[2][0])


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_types_shapes_and_label_space(task: str) -> None:
    ds = SyntheticScenes(4, size=(40, 56), seed=1, task=task)
    names, stuff = label_space("synthetic", task)
    assert ds.class_names == names and ds.stuff_classes == stuff and ds.num_classes == len(names)
    items = list(ds)  # iteration stops at the end through IndexError
    assert len(items) == len(ds) == 4
    for image, t in items:
        assert image.dtype == np.uint8 and image.shape == (40, 56, 3)
        assert t.masks.dtype == torch.bool and t.masks.shape[1:] == (40, 56)
        assert t.labels.dtype == torch.int64 and len(t.labels) == len(t.masks) == len(t.is_crowd)
        assert not t.is_crowd.any()
        assert ((t.labels >= 0) & (t.labels < ds.num_classes)).all()
        assert t.masks.flatten(1).any(1).all(), "no empty masks"


def test_panoptic_masks_partition_the_image() -> None:
    ds = SyntheticScenes(16, size=64, seed=0, max_things=4)
    for _, t in ds:
        assert (t.masks.sum(0) == 1).all(), "disjoint and covering"
        is_stuff = t.labels >= NUM_THINGS
        # Things first, then at most one mask per stuff class.
        assert not is_stuff[: int((~is_stuff).sum())].any()
        stuff = t.labels[is_stuff].tolist()
        assert len(stuff) == len(set(stuff)) and set(stuff) <= set(ds.stuff_classes)
        assert 1 <= int((~is_stuff).sum()) <= 4


def test_every_thing_class_appears_and_max_things_holds() -> None:
    seen = set()
    for _, t in SyntheticScenes(24, size=48, seed=7):
        seen |= set(t.labels.tolist())
    assert set(range(NUM_THINGS)) <= seen
    for _, t in SyntheticScenes(8, size=48, seed=7, max_things=1):
        assert int((t.labels < NUM_THINGS).sum()) == 1


def test_instance_and_semantic_agree_with_panoptic() -> None:
    pan = SyntheticScenes(6, size=48, seed=5, task="panoptic")
    ins = SyntheticScenes(6, size=48, seed=5, task="instance")
    sem = SyntheticScenes(6, size=48, seed=5, task="semantic")
    for i in range(6):
        (img_p, p), (img_i, t_i), (img_s, s) = pan[i], ins[i], sem[i]
        assert np.array_equal(img_p, img_i) and np.array_equal(img_p, img_s)
        things = p.labels < NUM_THINGS
        assert torch.equal(t_i.masks, p.masks[things]) and torch.equal(t_i.labels, p.labels[things])
        assert s.labels.tolist() == sorted(set(p.labels.tolist()))
        for mask, label in zip(s.masks, s.labels):
            assert torch.equal(mask, p.masks[p.labels == label].any(0))


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_thing_masks_cover_only_their_visible_pixels() -> None:
    """Inside a thing mask the pixels are the thing's fill colour: occluded parts are not in it."""
    checked = 0
    for image, t in SyntheticScenes(24, size=96, seed=11, max_things=4):
        for mask, label in zip(t.masks.numpy(), t.labels.tolist()):
            if label >= NUM_THINGS:
                continue
            inner = _erode(mask, 3)  # away from the outline and anti-aliasing-free edges
            if inner.sum() < 20:
                continue
            px = image[inner].astype(np.int64)  # (P, 3)
            fill = np.median(px, 0)
            close = (np.abs(px - fill) <= 15).all(1)  # sensor noise is sigma 3
            assert close.mean() > 0.97
            checked += 1
    assert checked >= 24


def test_overlaps_happen() -> None:
    """Some thing masks touch another thing's mask: later things do occlude earlier ones."""
    touching = 0
    for _, t in SyntheticScenes(32, size=64, seed=2):
        things = t.masks[t.labels < NUM_THINGS].numpy()
        grown = np.stack([~_erode(~m, 1) for m in things]) if len(things) else things
        for a in range(len(things)):
            for b in range(len(things)):
                touching += int(a != b and (grown[a] & things[b]).any())
    assert touching > 0


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="task='depth'"):
        SyntheticScenes(2, task="depth")
    with pytest.raises(ValueError, match="size"):
        SyntheticScenes(2, size=(8, 8))
    with pytest.raises(ValueError, match="max_things"):
        SyntheticScenes(2, max_things=0)
    with pytest.raises(IndexError):
        SyntheticScenes(2)[2]
