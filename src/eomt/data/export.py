"""Synthetic scenes written to disk in the users' formats: the own-data path with no download.

`export_synthetic(out, "coco_panoptic_json")` writes exactly the layout the registry's defaults
read, so `eomt data check custom/coco_panoptic data.root=out` and `eomt train ...` work unchanged:

  coco_panoptic_json  annotations/panoptic_{split}.json, annotations/panoptic_{split}/NNNNNN.png
                      (RGB id PNGs, id = R + 256 G + 256^2 B), {split}/NNNNNN.png
  coco_instance_json  annotations/instances_{split}.json (RLE masks), {split}/NNNNNN.png
  semantic_folder     images/{split}/NNNNNN.png, labels/{split}/NNNNNN.png (class index, 255 ignore),
                      classes.txt
  ytvis               {split}.json, {split}/JPEGImages/NNNNNN/NNNNN.jpg, clips/{split}_NNNNNN.mp4:
                      synthetic videos (`eomt.data.export_video`)

Image NNNNNN of a split is item NNNNNN of `SyntheticScenes(n, size, split_seed(seed, split), task)`.
The COCO formats carry the dataset's own category ids, deliberately not contiguous
(`DEFAULT_CATEGORY_IDS`: circle 11, square 12, triangle 17, cross 22, sky 31, ground 40), so that a
model must learn contiguous classes and write these ids back. A semantic folder has no ids: its
label value is the line of classes.txt (circle, square, triangle, cross, sky, ground).
Panoptic segment k of an image (targets' order: things in draw order, then sky, ground) has id
65793 (k + 1), grey k + 1 in all three channels, so a reader that drops a channel fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from eomt.classes import SYNTHETIC_NAMES, SYNTHETIC_THING_NAMES
from eomt.data.synthetic import SyntheticScenes
from eomt.errors import NotAFolderError, OptionError, OutputExistsError
from eomt.images import id_to_rgb

log = logging.getLogger(__name__)

# format -> (task, bundled config that reads it)
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "coco_panoptic_json": ("panoptic", "custom/coco_panoptic"),
    "coco_instance_json": ("instance", "custom/coco_instance"),
    "semantic_folder": ("semantic", "custom/semantic_folder"),
    "ytvis": ("instance", "ytvis/videomt_large_640"),
}
DEFAULT_CATEGORY_IDS: dict[str, int] = {
    "circle": 11, "square": 12, "triangle": 17, "cross": 22, "sky": 31, "ground": 40,
}
DEFAULT_SPLITS: dict[str, int] = {"train": 64, "val": 16}
IMAGE_FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "jpeg": ("JPEG", ".jpg")}
_SEGMENT_ID_STEP = 1 + 256 + 256**2  # segment k -> grey k + 1
_MAX_THINGS = 250  # keeps 65793 (k + 1) below 256^3 for every segment


def split_seed(seed: int, split: str) -> int:
    """The `SyntheticScenes` seed of a split: seed 0 gives the registry's `synthetic` default seeds."""
    return (int(seed) + zlib.crc32(split.encode())) % 2**31


def layout(format: str, splits: Mapping[str, int]) -> dict[str, str]:
    """What `export_synthetic` writes: path relative to the output folder -> what it holds.

    Folders end with '/'. Raises ValueError for a format it cannot write.
    """
    _task_of(format)
    out: dict[str, str] = {}
    for split, n in splits.items():
        if format == "coco_panoptic_json":
            out[f"annotations/panoptic_{split}.json"] = f"images, segments and categories of {n} images"
            out[f"annotations/panoptic_{split}/"] = f"{n} panoptic id PNGs"
            out[f"{split}/"] = f"{n} images"
        elif format == "coco_instance_json":
            out[f"annotations/instances_{split}.json"] = f"images, RLE masks and categories of {n} images"
            out[f"{split}/"] = f"{n} images"
        elif format == "ytvis":
            out[f"{split}.json"] = f"videos, tracks (RLE per frame) and categories of {n} videos"
            out[f"{split}/"] = f"JPEGImages/: the frames of {n} videos"
        else:
            out[f"images/{split}/"] = f"{n} images"
            out[f"labels/{split}/"] = f"{n} label PNGs"
    if format == "semantic_folder":
        out["classes.txt"] = f"{len(SYNTHETIC_NAMES)} class names, one per line"
    if format == "ytvis":
        out["clips/"] = "each video as an mp4, to try `eomt predict` on"
    return out


def export_synthetic(
    out_dir: str | os.PathLike[str],
    format: str,
    *,
    splits: Mapping[str, int] | None = None,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    category_ids: Mapping[str, int] | Sequence[int] | None = None,
    image_format: str = "png",
    max_things: int = 4,
    overwrite: bool = False,
    video_length: int = 12,
) -> Path:
    """Write synthetic scenes under `out_dir` in `format` (see the module docstring); returns the folder.

    splits: split name -> number of images (default train 64, val 16). size: int or (H, W) pixels.
    category_ids: the COCO formats' category id per class, a mapping name -> id or six ids in the
    order circle, square, triangle, cross, sky, ground (default `DEFAULT_CATEGORY_IDS`); not for
    semantic_folder. image_format: "png" (lossless, default) or "jpg". An existing non-empty
    `out_dir` is refused unless `overwrite`, which replaces the paths of `layout` and keeps the rest.
    ytvis writes videos of `video_length` frames (always JPEG, as the format's frames) and
    annotates the thing classes only (splits count videos).
    """
    task = _task_of(format)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    _check_splits(splits)
    if image_format.lower() not in IMAGE_FORMATS:
        raise OptionError(f"image_format={image_format!r}; expected one of {', '.join(IMAGE_FORMATS)}")
    pil_format, suffix = IMAGE_FORMATS[image_format.lower()]
    if not 1 <= max_things <= _MAX_THINGS:
        raise OptionError(f"max_things={max_things}; expected 1..{_MAX_THINGS}")
    if format == "semantic_folder" and category_ids is not None:
        raise OptionError("category_ids: semantic_folder has no category ids (a label value is the line "
                         "of classes.txt); pass category_ids only with a COCO format")
    ids = _category_ids(category_ids)
    out = _prepare(Path(out_dir), format, splits, overwrite)
    for split, n in splits.items():
        scenes = SyntheticScenes(n, size=size, seed=split_seed(seed, split), task=task, max_things=max_things)
        if format == "ytvis":
            from eomt.data.export_video import write_youtube_vis
            from eomt.data.video_synthetic import SyntheticVideos

            videos = SyntheticVideos(n, size=size, video_length=video_length, clip_length=None,
                                     seed=split_seed(seed, split), task="instance", max_things=max_things)
            write_youtube_vis(out, split, videos, ids[: len(SYNTHETIC_THING_NAMES)], _save_image, _write_json)
        elif format == "coco_panoptic_json":
            _write_panoptic(out, split, scenes, ids, pil_format, suffix)
        elif format == "coco_instance_json":
            _write_instance(out, split, scenes, ids, pil_format, suffix)
        else:
            _write_semantic(out, split, scenes, pil_format, suffix)
        log.debug("wrote %d %s images of split %s to %s", n, format, split, out)
    if format == "semantic_folder":
        (out / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_NAMES), encoding="utf-8")
    return out


def _task_of(format: str) -> str:
    if format not in EXPORT_FORMATS:
        raise OptionError(f"format {format!r}: synthetic data is written as one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[format][0]


def _check_splits(splits: Mapping[str, int]) -> None:
    if not splits:
        raise OptionError("splits: empty; expected e.g. {'train': 64, 'val': 16}")
    for split, n in splits.items():
        if not isinstance(split, str) or not split or split in (".", "..") or any(c in split for c in "/\\{}"):
            raise OptionError(f"splits: name {split!r}; expected a plain folder name such as 'train'")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptionError(f"splits[{split!r}] = {n!r}; expected a number of images >= 1")


def _category_ids(given: Mapping[str, int] | Sequence[int] | None) -> list[int]:
    """Category id of each synthetic class (SYNTHETIC_NAMES order), checked."""
    if given is None:
        return [DEFAULT_CATEGORY_IDS[name] for name in SYNTHETIC_NAMES]
    if isinstance(given, Mapping):
        unknown = sorted(set(given) - set(SYNTHETIC_NAMES))
        missing = [name for name in SYNTHETIC_NAMES if name not in given]
        if unknown or missing:
            found = (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else "")
            raise OptionError(f"category_ids: expected one id for each of {', '.join(SYNTHETIC_NAMES)}{found}")
        ids = [given[name] for name in SYNTHETIC_NAMES]
    else:
        ids = list(given)
        if len(ids) != len(SYNTHETIC_NAMES):
            raise OptionError(f"category_ids: {len(ids)} ids; expected {len(SYNTHETIC_NAMES)}, one for each of "
                             f"{', '.join(SYNTHETIC_NAMES)}")
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1 for i in ids):
        raise OptionError(f"category_ids: {ids}; expected positive integers")
    if len(set(ids)) != len(ids):
        raise OptionError(f"category_ids: {ids}; expected distinct ids")
    return [int(i) for i in ids]


def _prepare(out: Path, format: str, splits: Mapping[str, int], overwrite: bool) -> Path:
    """Create `out`; refuse a non-empty one unless `overwrite`, then clear the paths of the layout."""
    if out.exists() and not out.is_dir():
        raise NotAFolderError(f"{out}: exists and is not a folder; expected an empty or new folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out}: folder is not empty; choose an empty or new folder, "
                                  "or pass overwrite=True (--overwrite) to replace this dataset layout in it")
        for rel in layout(format, splits):
            path = out / rel.rstrip("/")
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_image(path: Path, image: np.ndarray, pil_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if pil_format == "JPEG" else {}
    Image.fromarray(image).save(path, format=pil_format, **options)


def _write_json(path: Path, data: Any) -> None:
    from eomt.files import write_json

    write_json(path, data, indent=None)


def _bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of a non-empty (H, W) bool mask, in whole pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _categories(ids: list[int], names: Sequence[str], with_isthing: bool) -> list[dict[str, Any]]:
    cats = []
    for cid, name in zip(ids, names):
        thing = name in SYNTHETIC_THING_NAMES
        cat: dict[str, Any] = {"id": cid, "name": name, "supercategory": "thing" if thing else "stuff"}
        if with_isthing:
            cat["isthing"] = int(thing)
        cats.append(cat)
    return cats


def _image_entry(index: int, name: str, scenes: SyntheticScenes) -> dict[str, Any]:
    h, w = scenes.size
    return {"id": index + 1, "file_name": name, "height": h, "width": w}


def _write_panoptic(out: Path, split: str, scenes: SyntheticScenes, ids: list[int], pil_format: str,
                    suffix: str) -> None:
    images, annotations = [], []
    for i in range(len(scenes)):
        image, target = scenes[i]
        name = f"{i:06d}"
        _save_image(out / split / f"{name}{suffix}", image, pil_format)
        id_map = np.zeros(scenes.size, dtype=np.int64)  # (H, W), 0 = void (never left here)
        segments = []
        for k, (mask, label) in enumerate(zip(target.masks.numpy(), target.labels.tolist())):
            segment_id = _SEGMENT_ID_STEP * (k + 1)
            id_map[mask] = segment_id
            segments.append({"id": segment_id, "category_id": ids[label], "iscrowd": 0,
                             "area": int(mask.sum()), "bbox": _bbox(mask)})
        rgb = id_to_rgb(id_map)  # (H, W, 3) uint8
        _save_image(out / "annotations" / f"panoptic_{split}" / f"{name}.png", rgb, "PNG")
        images.append(_image_entry(i, f"{name}{suffix}", scenes))
        annotations.append({"image_id": i + 1, "file_name": f"{name}.png", "segments_info": segments})
    _write_json(out / "annotations" / f"panoptic_{split}.json", {
        "info": {"description": f"eomt synthetic scenes, split {split}"},
        "images": images, "annotations": annotations,
        "categories": _categories(ids, SYNTHETIC_NAMES, with_isthing=True),
    })


def _write_instance(out: Path, split: str, scenes: SyntheticScenes, ids: list[int], pil_format: str,
                    suffix: str) -> None:
    images, annotations = [], []
    for i in range(len(scenes)):
        image, target = scenes[i]
        name = f"{i:06d}{suffix}"
        _save_image(out / split / name, image, pil_format)
        images.append(_image_entry(i, name, scenes))
        for mask, label in zip(target.masks.numpy(), target.labels.tolist()):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": ids[label],
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    things = len(SYNTHETIC_THING_NAMES)
    _write_json(out / "annotations" / f"instances_{split}.json", {
        "info": {"description": f"eomt synthetic scenes, split {split}"},
        "images": images, "annotations": annotations,
        "categories": _categories(ids[:things], SYNTHETIC_THING_NAMES, with_isthing=False),
    })


def _write_semantic(out: Path, split: str, scenes: SyntheticScenes, pil_format: str, suffix: str) -> None:
    for i in range(len(scenes)):
        image, target = scenes[i]
        name = f"{i:06d}"
        _save_image(out / "images" / split / f"{name}{suffix}", image, pil_format)
        label_map = np.full(scenes.size, 255, dtype=np.uint8)  # (H, W), 255 = ignore (never left here)
        for mask, label in zip(target.masks.numpy(), target.labels.tolist()):
            label_map[mask] = label
        _save_image(out / "labels" / split / f"{name}.png", label_map, "PNG")
