"""The paper's presets: one fully specified `ModelConfig` per official configuration.

Named as the official hub repositories (`tue-mps/<name>`): the DINOv2 rows of the paper's tables
(`DINOV2_PRESET_NAMES`) and the DINOv3 rows of the official model zoo (`DINOV3_PRESET_NAMES`, names
ending in `_dinov3`); `PRESET_NAMES` holds both. YAML files and overrides only change fields of a
preset. `tiny_config` is the tiny network of the tests and the demo.
"""

from __future__ import annotations

from typing import Any

from eomt.config.model import SIZES, LabelSpace, ModelConfig
from eomt.config.parse import ConfigError, from_dict, unknown


def _preset(name: str, size: str, img: int, task: str, dataset: str, **fields: Any) -> ModelConfig:
    """Preset `name`: `SIZES[size]` at img x img, `task` on `dataset`'s labels, plus `fields`."""
    from eomt import classes

    names, stuff = classes.label_space(dataset, task)
    s = SIZES[size]
    model = ModelConfig(
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        num_blocks=s["num_blocks"],
        swiglu=s["swiglu"],
        img_size=(img, img),
        num_queries=100 if task == "semantic" else 200,
        num_classes=len(names),
        task=task,
        name=name,
        **fields,
    )
    return model.with_labels(LabelSpace(tuple(names), tuple(stuff)))


_PRESET_SPECS: dict[str, tuple[str, int, str, str]] = {
    "coco_panoptic_eomt_small_640": ("small", 640, "panoptic", "coco"),
    "coco_panoptic_eomt_base_640": ("base", 640, "panoptic", "coco"),
    "coco_panoptic_eomt_large_640": ("large", 640, "panoptic", "coco"),
    "coco_panoptic_eomt_large_1280": ("large", 1280, "panoptic", "coco"),
    "coco_panoptic_eomt_giant_640": ("giant", 640, "panoptic", "coco"),
    "coco_panoptic_eomt_giant_1280": ("giant", 1280, "panoptic", "coco"),
    "coco_instance_eomt_large_640": ("large", 640, "instance", "coco"),
    "coco_instance_eomt_large_1280": ("large", 1280, "instance", "coco"),
    "ade20k_panoptic_eomt_large_640": ("large", 640, "panoptic", "ade20k"),
    "ade20k_panoptic_eomt_large_1280": ("large", 1280, "panoptic", "ade20k"),
    "ade20k_panoptic_eomt_giant_640": ("giant", 640, "panoptic", "ade20k"),
    "ade20k_panoptic_eomt_giant_1280": ("giant", 1280, "panoptic", "ade20k"),
    "ade20k_semantic_eomt_large_512": ("large", 512, "semantic", "ade20k"),
    "cityscapes_semantic_eomt_large_1024": ("large", 1024, "semantic", "cityscapes"),
}

# The DINOv2 rows (the paper's tables).
DINOV2_PRESET_NAMES: tuple[str, ...] = tuple(_PRESET_SPECS)

# DINOv3 rows of the official model zoo (`model_zoo/dinov3.md`, hub `tue-mps/<name>`): DINOv2's sizes,
# K and L2 on the DINOv3 ViT (`DINOV3_FIELDS`). The 1280 rows are 1280x1280 (the official 1280 configs
# set no `img_size`, so they run at 640 unless it is overridden).
_DINOV3_SPECS: dict[str, tuple[str, int, str, str]] = {f"{row}_dinov3": _PRESET_SPECS[row] for row in (
    "coco_panoptic_eomt_small_640", "coco_panoptic_eomt_base_640", "coco_panoptic_eomt_large_640",
    "coco_panoptic_eomt_large_1280", "coco_instance_eomt_large_640", "coco_instance_eomt_large_1280",
    "ade20k_semantic_eomt_large_512",
)}
DINOV3_FIELDS: dict[str, Any] = dict(backbone="dinov3", layer_norm_eps=1e-5)  # patch 16, 4 registers: defaults
DINOV3_PRESET_NAMES: tuple[str, ...] = tuple(_DINOV3_SPECS)
# Every preset: the DINOv2 rows, then the DINOv3 ones.
PRESET_NAMES: tuple[str, ...] = DINOV2_PRESET_NAMES + DINOV3_PRESET_NAMES
# Official hub ids spelled differently from their preset.
PRESET_ALIASES: dict[str, str] = {"ade_semantic_eomt_large_512_dinov3": "ade20k_semantic_eomt_large_512_dinov3"}


def preset(name: str) -> ModelConfig:
    """The `ModelConfig` of a named paper configuration, e.g. `coco_panoptic_eomt_large_640`.

    Short names such as `eomt_large_640` resolve to the COCO panoptic row of that size; DINOv3
    rows end in `_dinov3` (`DINOV3_PRESET_NAMES`; hub spellings in `PRESET_ALIASES` resolve too).
    """
    key = name.split("/")[-1]
    key = PRESET_ALIASES.get(key, key)
    known = {**_PRESET_SPECS, **_DINOV3_SPECS}
    if key not in known and f"coco_panoptic_{key}" in known:
        key = f"coco_panoptic_{key}"
    if key not in known:
        raise ConfigError(unknown("preset", name, PRESET_NAMES))
    fields = DINOV3_FIELDS if key in _DINOV3_SPECS else {}
    return _preset(key, *known[key], **fields)


def tiny_config(**overrides: Any) -> ModelConfig:
    """A tiny EoMT for tests and the CPU demo (D=64, 4 blocks, 2 with queries)."""
    base = dict(
        embed_dim=64, depth=4, num_heads=2, num_blocks=2, img_size=(64, 64), num_queries=8,
        num_classes=5, name="tiny",
    )
    base.update(overrides)
    return from_dict(ModelConfig, base, "model")
