"""Build a dataset from a format name, a root folder, a split and options (what configs and the CLI use).

Official archives (`root` holds the downloaded zips): coco_panoptic, coco_instance, ade20k_semantic,
ade20k_panoptic, cityscapes_semantic. A family name plus a task also works ("coco" + "panoptic").

Users' own data (paths relative to `root`; "{split}" is replaced by the split):
  coco_instance_json   annotations="annotations/instances_{split}.json", images="{split}"
  coco_panoptic_json   annotations="annotations/panoptic_{split}.json", masks="annotations/panoptic_{split}",
                       images="{split}"
  semantic_folder      images="images/{split}", labels="labels/{split}", classes="classes.txt",
                       ignore_index=255
  synthetic            no files: num_images, size, seed (default: one per split), max_things
  ytvis                annotations="{split}.json" (or a zip holding it), images="{split}" (folder or zip)
  synthetic_video      no files: num_videos, size, video_length, clip_length (None outside "train": whole
                       videos), seed, max_things, sampling, frame_range
"""

from __future__ import annotations

import difflib
import inspect
import zlib
from pathlib import Path
from typing import Any, Callable

from eomt.config import ConfigError

# format -> (tasks it serves, "module:class", default relative paths of its file options)
DATASET_FORMATS: dict[str, tuple[tuple[str, ...], str, dict[str, str]]] = {
    "coco_panoptic": (("panoptic",), "eomt.data.coco:COCOPanoptic", {}),
    "coco_instance": (("instance",), "eomt.data.coco:COCOInstance", {}),
    "ade20k_semantic": (("semantic",), "eomt.data.ade20k:ADE20KSemantic", {}),
    "ade20k_panoptic": (("panoptic",), "eomt.data.ade20k:ADE20KPanoptic", {}),
    "cityscapes_semantic": (("semantic",), "eomt.data.cityscapes:CityscapesSemantic", {}),
    "coco_instance_json": (("instance",), "eomt.data.user:CocoInstanceJson",
                           {"annotations": "annotations/instances_{split}.json", "images": "{split}"}),
    "coco_panoptic_json": (("panoptic",), "eomt.data.user:CocoPanopticJson",
                           {"annotations": "annotations/panoptic_{split}.json",
                            "masks": "annotations/panoptic_{split}", "images": "{split}"}),
    "semantic_folder": (("semantic",), "eomt.data.user:SemanticFolder",
                        {"images": "images/{split}", "labels": "labels/{split}", "classes": "classes.txt"}),
    "synthetic": (("panoptic", "instance", "semantic"), "eomt.data.synthetic:SyntheticScenes", {}),
    "ytvis": (("instance",), "eomt.data.ytvis:YouTubeVIS", {"annotations": "{split}.json", "images": "{split}"}),
    "synthetic_video": (("instance", "panoptic"), "eomt.data.video_synthetic:SyntheticVideos", {}),
}
_SYNTHETIC_SIZES = {"train": 512, "val": 64, "test": 64}


def _resolve_name(name: str, task: str | None) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASET_FORMATS and task and f"{key}_{task}" in DATASET_FORMATS:
        key = f"{key}_{task}"
    if key not in DATASET_FORMATS:
        close = difflib.get_close_matches(key, list(DATASET_FORMATS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"dataset: unknown format {name!r}{hint} Expected one of {', '.join(DATASET_FORMATS)}")
    return key


def _import(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


def _check_options(name: str, options: dict[str, Any], accepted: list[str]) -> None:
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"dataset {name}: unknown option {key!r}{hint} Expected one of {', '.join(accepted)}")


class _Transformed:
    """Applies `transform(image, target)` on top of a dataset that has none (synthetic scenes)."""

    def __init__(self, dataset: Any, transform: Callable[..., Any]) -> None:
        self.dataset, self.transform = dataset, transform
        self.class_names, self.stuff_classes = dataset.class_names, dataset.stuff_classes
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.transform(*self.dataset[index])


def build_dataset(name_or_format: str, root: str | Path = ".", split: str = "train", task: str | None = None,
                  **options: Any) -> Any:
    """The dataset `name_or_format` over `root` for `split`; `task` (if given) must be one it serves.

    Every dataset yields `(image uint8 (H, W, 3), Target)` (or `transform`'s output) and exposes
    `class_names`, `stuff_classes`, `num_classes`. Unknown names and options raise ConfigError.
    """
    name = _resolve_name(name_or_format, task)
    tasks, target, paths = DATASET_FORMATS[name]
    if task is not None and task not in tasks:
        raise ConfigError(f"dataset {name}: task {task!r} not supported; it serves {', '.join(tasks)}")
    cls = _import(target)
    params = [p for p in inspect.signature(cls).parameters if p not in ("root", "split", "self")]
    if name in ("synthetic", "synthetic_video"):
        return _build_synthetic(cls, name, split, task or tasks[0], params, dict(options))
    _check_options(name, options, params)
    if not paths:
        return cls(root, split, **options)
    for key, default in paths.items():
        value = str(options.get(key, default)).replace("{split}", split)
        options[key] = Path(root) / value  # absolute values stay absolute
    return cls(**options)


def _build_synthetic(cls: Any, name: str, split: str, task: str, params: list[str], options: dict[str, Any]) -> Any:
    transform = options.pop("transform", None)
    _check_options(name, options, [p for p in params if p != "task"] + ["transform"])
    options.setdefault("num_images" if name == "synthetic" else "num_videos", _SYNTHETIC_SIZES.get(split, 64))
    if name == "synthetic_video" and split != "train":
        options.setdefault("clip_length", None)  # evaluation sees whole videos
    options.setdefault("seed", zlib.crc32(split.encode()) % 2**31)  # train and val differ, reproducibly
    dataset = cls(task=task, **options)
    return _Transformed(dataset, transform) if transform is not None else dataset
