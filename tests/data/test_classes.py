"""Label spaces: sizes, uniqueness, and the id mappings' consistency with the official facts."""

from __future__ import annotations

import pytest

from eomt import classes as C
from eomt.config import preset


@pytest.mark.parametrize(
    ("dataset", "task", "num", "num_stuff"),
    [
        ("coco", "panoptic", 133, 53),
        ("coco", "instance", 80, 0),
        ("ade20k", "semantic", 150, 0),
        ("ade20k", "panoptic", 150, 50),
        ("cityscapes", "semantic", 19, 0),
        ("synthetic", "panoptic", 6, 2),
        ("synthetic", "instance", 4, 0),
        ("synthetic", "semantic", 6, 0),
    ],
)
def test_label_space_sizes(dataset: str, task: str, num: int, num_stuff: int) -> None:
    names, stuff = C.label_space(dataset, task)
    assert len(names) == num
    assert len(set(names)) == num, "class names must be unique"
    assert all(n and n == n.strip() for n in names)
    assert len(stuff) == num_stuff == len(set(stuff))
    assert all(0 <= s < num for s in stuff)
    assert stuff == sorted(stuff)


def test_label_space_returns_fresh_lists() -> None:
    names, stuff = C.label_space("coco", "panoptic")
    names.append("x")
    stuff.clear()
    assert len(C.label_space("coco", "panoptic")[0]) == 133
    assert len(C.label_space("coco", "panoptic")[1]) == 53


def test_unknown_label_space_names_the_pair_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"coco/semantic.*coco/panoptic"):
        C.label_space("coco", "semantic")


def test_coco_panoptic_mapping() -> None:
    m = C.COCO_PANOPTIC_CATEGORY_IDS
    assert len(m) == 133
    assert all(1 <= k <= 200 for k in m)
    assert sorted(m.values()) == list(range(133))
    # Contiguous ids follow the sorted category ids.
    assert [m[k] for k in sorted(m)] == list(range(133))
    # COCO things have category ids 1..90 and stuff 92..200: things first, then stuff.
    assert {v for k, v in m.items() if k > 90} == set(C.COCO_PANOPTIC_STUFF)
    assert C.COCO_PANOPTIC_STUFF == tuple(range(80, 133))
    # Facts from panopticapi's category list.
    names = C.COCO_PANOPTIC_NAMES
    assert names[m[1]] == "person" and m[1] == 0
    assert names[m[90]] == "toothbrush" and m[90] == 79
    assert names[m[92]] == "banner" and m[92] == 80
    assert names[m[200]] == "rug-merged" and m[200] == 132
    assert 12 not in m and 91 not in m  # unused category ids


def test_coco_instance_is_the_thing_part_of_panoptic() -> None:
    m, p = C.COCO_INSTANCE_CATEGORY_IDS, C.COCO_PANOPTIC_CATEGORY_IDS
    assert len(m) == 80 and sorted(m.values()) == list(range(80))
    assert m == {k: v for k, v in p.items() if k <= 90}
    assert C.COCO_INSTANCE_NAMES == C.COCO_PANOPTIC_NAMES[:80]


def test_ade20k_panoptic_things_and_stuff_partition_the_150_classes() -> None:
    inst, stuff = C.ADE20K_INSTANCE_MAPPING, set(C.ADE20K_PANOPTIC_STUFF)
    assert sorted(inst) == list(range(1, 101))  # instance PNG categories 1..100
    things = list(inst.values())
    assert len(set(things)) == 100
    assert things == sorted(things)  # instance categories keep the ADE-150 order
    assert stuff.isdisjoint(things)
    assert stuff | set(things) == set(range(150))
    names = C.ADE20K_NAMES
    assert names[0] == "wall" and names[2] == "sky" and names[149] == "flag"
    assert inst[1] == 7 and names[7] == "bed"
    assert inst[100] == 149
    assert names[12] == "person" and 12 in things
    assert 2 in stuff and 145 in stuff  # sky, shower (stuff in the official config)


def test_cityscapes_label_ids_to_train_ids() -> None:
    lut = C.CITYSCAPES_LABEL_TO_TRAIN_ID
    assert len(lut) == 34
    kept = [t for t in lut if t != 255]
    assert kept == list(range(19))  # each train id once, in label-id order
    assert lut[7] == 0 and C.CITYSCAPES_NAMES[0] == "road"
    assert lut[26] == 13 and C.CITYSCAPES_NAMES[13] == "car"
    assert lut[33] == 18 and C.CITYSCAPES_NAMES[18] == "bicycle"
    for ignored in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30):
        assert lut[ignored] == 255


def test_presets_carry_the_label_spaces() -> None:
    cfg = preset("ade20k_panoptic_eomt_large_640")
    assert cfg.num_classes == 150 and cfg.stuff_classes == C.ADE20K_PANOPTIC_STUFF
    assert cfg.class_names == C.ADE20K_NAMES
    cfg = preset("coco_panoptic_eomt_large_640")
    assert len(cfg.thing_classes) == 80 and cfg.class_names[0] == "person"
