"""Tiny datasets written in the official archive layouts and in the user formats, plus what they hold.

Every writer returns `expected`: image base name -> list of (label, is_crowd, (H, W) bool mask),
computed here from the arrays it wrote (the class-id facts used are the official mappings').
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

H, W = 12, 16
Segments = list[tuple[int, bool, np.ndarray]]

# Official mapping facts used to build expectations (COCO panoptic / instance category -> class).
COCO_PANOPTIC_FACTS = {1: 0, 3: 2, 90: 79, 92: 80, 200: 132}
COCO_INSTANCE_FACTS = {1: 0, 3: 2, 90: 79}
ADE_INSTANCE_FACTS = {1: 7, 13: 27, 100: 149}  # instance PNG category -> ADE-150 class
ADE_STUFF_FACTS = (0, 2, 145)  # some of the 50 panoptic stuff classes
CITYSCAPES_FACTS = {7: 0, 26: 13, 33: 18}  # label id -> train id; 0 and 4 are ignored ids


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def rgb(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip with folder entries for every parent, as archivers write them."""
    folders = sorted({"/".join(m.split("/")[:i]) + "/" for m in members for i in range(1, m.count("/") + 1)})
    with zipfile.ZipFile(path, "w") as zf:
        for folder in folders:
            zf.writestr(folder, b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def segments_of(ids: np.ndarray, table: dict[int, tuple[int, bool]]) -> Segments:
    """One (label, crowd, mask) per id of `table` present in `ids`."""
    return [(lab, crowd, ids == i) for i, (lab, crowd) in table.items() if (ids == i).any()]


def assert_same_segments(target: Any, expected: Segments) -> None:
    """Target (masks, labels, is_crowd) equals `expected` up to segment order."""
    got = sorted((int(l), bool(c), m.numpy().tobytes()) for m, l, c in zip(target.masks, target.labels, target.is_crowd))
    want = sorted((int(l), bool(c), np.asarray(m, dtype=bool).tobytes()) for l, c, m in expected)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert got == want
    assert target.masks.dtype == torch.bool and target.labels.dtype == torch.int64
    assert target.is_crowd.dtype == torch.bool


def panoptic_png(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def panoptic_sample(rng: np.random.Generator, cats: list[int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(H, W) id map with void (0) and one segment per category, plus its segments_info."""
    seg_ids = rng.permutation(np.unique(rng.integers(1, 2**24, size=len(cats) + 4)))[: len(cats)]
    ids = rng.choice(np.concatenate([[0], seg_ids]), size=(H, W))
    info = [{"id": int(s), "category_id": c, "iscrowd": int(rng.integers(0, 2)), "area": int((ids == s).sum())}
            for s, c in zip(seg_ids, cats)]
    return ids, info


def write_coco_panoptic(root: Path, split: str = "val", seed: int = 0) -> dict[str, Segments]:
    """{split}2017.zip + panoptic_annotations_trainval2017.zip (JSON + nested PNG zip)."""
    rng = np.random.default_rng(seed)
    names = ["000000000785.jpg", "000000000139.jpg", "000000000632.jpg", "000000000724.jpg"]  # last: no annotation
    images, annotations, pngs, expected = [], [], {}, {}
    for k, name in enumerate(names):
        images.append({"id": k + 10, "file_name": name, "height": H, "width": W})
        if k == 3:
            continue
        ids, info = panoptic_sample(rng, list(rng.choice(list(COCO_PANOPTIC_FACTS), 3, replace=False)))
        info = [dict(s, category_id=int(s["category_id"])) for s in info]
        png = name.replace(".jpg", ".png")
        annotations.append({"image_id": k + 10, "file_name": png, "segments_info": info})
        pngs[f"panoptic_{split}2017/{png}"] = encode(panoptic_png(ids))
        expected[name] = segments_of(ids, {s["id"]: (COCO_PANOPTIC_FACTS[s["category_id"]], bool(s["iscrowd"]))
                                           for s in info})
    js = {"images": images, "annotations": annotations,
          "categories": [{"id": c, "name": f"c{c}", "isthing": int(c <= 90)} for c in COCO_PANOPTIC_FACTS]}
    write_zip(root / f"{split}2017.zip", {f"{split}2017/{n}": encode(rgb(rng), "JPEG") for n in names})
    write_zip(root / "panoptic_annotations_trainval2017.zip", {
        f"annotations/panoptic_{split}2017.json": json.dumps(js).encode(),
        f"annotations/panoptic_{split}2017.zip": zip_bytes(pngs),
    })
    return expected


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths starting with zeros) of a bool mask."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def instance_annotations(rng: np.random.Generator, image_id: int, first_id: int, cats: list[int]
                         ) -> tuple[list[dict[str, Any]], list[tuple[int, bool, np.ndarray]]]:
    """Per image: a polygon, a two-polygon object, an uncompressed-RLE crowd and a compressed RLE."""
    polys = [[[1, 1, 9, 1, 9, 7, 1, 7]], [[2, 8, 6, 8, 4, 11], [10, 2, 15, 2, 15, 6, 10, 6]]]
    crowd_mask, rle_mask = rng.random((H, W)) < 0.3, rng.random((H, W)) < 0.5
    compressed = mask_utils.encode(np.asfortranarray(rle_mask.astype(np.uint8)))
    segs: list[Any] = polys + [uncompressed_rle(crowd_mask), {"size": [H, W], "counts": compressed["counts"].decode()}]
    anns, expected = [], []
    for j, (seg, cat) in enumerate(zip(segs, cats)):
        crowd = j == 2
        anns.append({"id": first_id + j, "image_id": image_id, "category_id": cat, "iscrowd": int(crowd),
                     "segmentation": seg})
        if isinstance(seg, list):  # polygons: pycocotools' rasterisation is the reference
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, H, W))).astype(bool)
        else:
            mask = crowd_mask if crowd else rle_mask
        expected.append((cat, crowd, mask))
    return anns, expected


def coco_instance_json(rng: np.random.Generator, names: list[str], cat_map: dict[int, int]
                       ) -> tuple[dict[str, Any], dict[str, Segments]]:
    """Instance JSON over `names` (the last has no annotation) and its expected segments."""
    images, anns, expected = [], [], {}
    for k, name in enumerate(names):
        images.append({"id": k + 1, "file_name": name, "height": H, "width": W})
        if k == len(names) - 1:
            continue
        cats = [int(c) for c in rng.choice(list(cat_map), 4)]
        a, exp = instance_annotations(rng, k + 1, 100 * (k + 1), cats)
        anns += a
        expected[name] = [(cat_map[c], crowd, m) for c, crowd, m in exp]
    js = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in sorted(cat_map)]}
    return js, expected


def write_coco_instance(root: Path, split: str = "val", seed: int = 0) -> dict[str, Segments]:
    """{split}2017.zip + annotations_trainval2017.zip (annotations/instances_{split}2017.json)."""
    rng = np.random.default_rng(seed)
    names = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]
    js, expected = coco_instance_json(rng, names, COCO_INSTANCE_FACTS)
    write_zip(root / f"{split}2017.zip", {f"{split}2017/{n}": encode(rgb(rng), "JPEG") for n in names})
    write_zip(root / "annotations_trainval2017.zip", {f"annotations/instances_{split}2017.json": json.dumps(js).encode()})
    return expected


def write_ade20k(root: Path, split: str = "validation", seed: int = 0) -> tuple[dict[str, Segments], dict[str, Segments]]:
    """ADEChallengeData2016.zip + annotations_instance.zip; returns (semantic, panoptic) expectations.

    Four images: two normal, one with a constant label PNG (skipped), one without a label (skipped).
    """
    rng = np.random.default_rng(seed)
    prefix = "ADE_val" if split == "validation" else "ADE_train"
    stems = [f"{prefix}_{i:08d}" for i in (2, 1, 3, 4)]
    members, instances, semantic, panoptic = {}, {}, {}, {}
    for k, stem in enumerate(stems):
        members[f"ADEChallengeData2016/images/{split}/{stem}.jpg"] = encode(rgb(rng), "JPEG")
        if k == 3:
            continue
        values = np.array([0, 1, 3, 8, 146, 150]) if k < 2 else np.array([5])
        sem = rng.choice(values, size=(H, W)).astype(np.uint8)
        inst = np.zeros((H, W, 3), np.uint8)
        for n, (cat, box) in enumerate(zip(ADE_INSTANCE_FACTS, [(0, 4, 0, 5), (5, 12, 3, 9), (2, 6, 10, 16)])):
            inst[box[0]:box[1], box[2]:box[3]] = (cat, n + 1, 0)
        members[f"ADEChallengeData2016/annotations/{split}/{stem}.png"] = encode(sem)
        instances[f"annotations_instance/{split}/{stem}.png"] = encode(inst)
        if k == 2:
            continue
        semantic[f"{stem}.jpg"] = [(int(v) - 1, False, sem == v) for v in np.unique(sem) if v >= 1]
        stuff = [(int(v) - 1, False, sem == v) for v in np.unique(sem) if int(v) - 1 in ADE_STUFF_FACTS]
        things = [(ADE_INSTANCE_FACTS[c], False, inst[..., 1] == n + 1) for n, c in enumerate(ADE_INSTANCE_FACTS)]
        panoptic[f"{stem}.jpg"] = stuff + things
    members["ADEChallengeData2016/objectInfo150.txt"] = b"Idx\tRatio\tTrain\tVal\tName\n"
    write_zip(root / "ADEChallengeData2016.zip", members)
    write_zip(root / "annotations_instance.zip", instances)
    return semantic, panoptic


def write_cityscapes(root: Path, split: str = "val", seed: int = 0) -> dict[str, Segments]:
    """leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip (labelIds plus the other gtFine files)."""
    rng = np.random.default_rng(seed)
    frames = [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019"),
              ("frankfurt", "frankfurt_000000_000576")]
    images, labels, expected = {"README": b"", "license.txt": b""}, {"README": b""}, {}
    for city, stem in frames:
        images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = encode(rgb(rng))
        ids = rng.choice([0, 4, 7, 26, 33], size=(H, W)).astype(np.uint8)
        base = f"gtFine/{split}/{city}/{stem}_gtFine_"
        labels[base + "labelIds.png"] = encode(ids)
        labels[base + "instanceIds.png"] = encode(ids.astype(np.uint16) * 1000)
        labels[base + "color.png"] = encode(rgb(rng))
        labels[base + "polygons.json"] = b"{}"
        expected[f"{stem}_leftImg8bit.png"] = [(t, False, ids == i) for i, t in CITYSCAPES_FACTS.items() if (ids == i).any()]
    write_zip(root / "leftImg8bit_trainvaltest.zip", images)
    write_zip(root / "gtFine_trainvaltest.zip", labels)
    return expected


def write_semantic_folder(root: Path, seed: int = 0, names: tuple[str, ...] = ("sky", "road", "car")
                          ) -> tuple[dict[str, np.ndarray], dict[str, Segments]]:
    """images/*.png + labels/*.png (values index classes.txt, 255 = ignore); returns (images, expected)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    pixels, expected = {}, {}
    for stem in ("img10", "img2", "img1"):
        image = rgb(rng)
        label = rng.choice([0, 2, 255], size=(H, W)).astype(np.uint8)
        (root / "images" / f"{stem}.png").write_bytes(encode(image))
        (root / "labels" / f"{stem}.png").write_bytes(encode(label))
        pixels[stem] = image
        expected[stem] = [(int(v), False, label == v) for v in np.unique(label) if v != 255]
    return pixels, expected


def write_user_coco(root: Path, seed: int = 0) -> tuple[dict[str, Segments], dict[str, Segments]]:
    """A user COCO instance JSON and a panoptic JSON + PNGs over one image folder.

    Category ids are arbitrary (7, 3, 42): contiguous ids follow sorted category ids (3, 7, 42).
    Returns (instance expectations, panoptic expectations).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    names = ["b.jpg", "a.jpg", "c.jpg"]
    for n in names:
        (root / "images" / n).write_bytes(encode(rgb(rng), "JPEG"))
    cat_map = {3: 0, 7: 1, 42: 2}
    js, inst_expected = coco_instance_json(rng, names, cat_map)
    js["categories"] = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 42, "name": "grass"}]
    (root / "instances.json").write_text(json.dumps(js))
    annotations, pan_expected = [], {}
    for k, name in enumerate(names[:2]):
        ids, info = panoptic_sample(rng, [7, 42, 3])
        png = name.replace(".jpg", ".png")
        (root / "panoptic" / png).write_bytes(encode(panoptic_png(ids)))
        annotations.append({"image_id": k + 1, "file_name": png, "segments_info": info})
        pan_expected[name] = segments_of(ids, {s["id"]: (cat_map[s["category_id"]], bool(s["iscrowd"])) for s in info})
    pan = {"images": js["images"], "annotations": annotations,
           "categories": [{"id": 42, "name": "grass", "isthing": 0}, {"id": 7, "name": "dog", "isthing": 1},
                          {"id": 3, "name": "cat", "isthing": 1}]}
    (root / "panoptic.json").write_text(json.dumps(pan))
    return inst_expected, pan_expected
