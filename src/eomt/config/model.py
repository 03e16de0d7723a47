"""The network's config: `ModelConfig`, its `LabelSpace` and the backbone sizes.

The paper's presets (fully specified `ModelConfig`s) are in `eomt.config.presets`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from eomt.config.parse import ConfigError, from_dict, unknown

TASKS = ("panoptic", "instance", "semantic")

# Backbone sizes (timm `vit_*_patch14_reg4_dinov2` architectures, patch 16 for EoMT).
# L2 = number of final blocks that also process the queries (paper A.1).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=64, depth=4, num_heads=2, num_blocks=2, swiglu=False),  # tests/demo only
    "small": dict(embed_dim=384, depth=12, num_heads=6, num_blocks=3, swiglu=False),
    "base": dict(embed_dim=768, depth=12, num_heads=12, num_blocks=3, swiglu=False),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, num_blocks=4, swiglu=False),
    "giant": dict(embed_dim=1536, depth=40, num_heads=24, num_blocks=5, swiglu=True),
}


@dataclass(frozen=True)
class LabelSpace:
    """The classes a network predicts: their names, which are stuff, and the dataset's own ids.

    names: one per class, in class-index order (0-based); `num_classes` is their count.
    stuff: class indices (0-based) that are stuff; the others are things.
    category_ids: the dataset's category id of each class (e.g. COCO's 1..200 with gaps), with which
        results files (COCO JSON) are written; () means 0..C-1.
    Raises ConfigError (naming the `model.*` key it is serialised under) when the parts disagree.
    """

    names: tuple[str, ...]
    stuff: tuple[int, ...] = ()
    category_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "stuff", tuple(int(c) for c in self.stuff))
        ids = tuple(int(i) for i in self.category_ids)
        object.__setattr__(self, "category_ids", () if ids == tuple(range(len(self.names))) else ids)
        check_labels(len(self.names), self.names, self.stuff, self.category_ids)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def things(self) -> tuple[int, ...]:
        """Class indices that are things (not stuff)."""
        stuff = set(self.stuff)
        return tuple(i for i in range(self.num_classes) if i not in stuff)

    @classmethod
    def of(cls, source: Any) -> "LabelSpace | None":
        """The label space a dataset (or anything with `class_names`, `stuff_classes` and
        `category_ids` attributes) declares; None when it names no classes."""
        names = list(getattr(source, "class_names", []) or [])
        if not names:
            return None
        return cls(tuple(names), tuple(getattr(source, "stuff_classes", ()) or ()),
                   tuple(getattr(source, "category_ids", ()) or ()))


def check_labels(num_classes: int, names: Sequence[str], stuff: Sequence[int], ids: Sequence[int]) -> None:
    """The label-space rules, with messages naming the `model.*` keys: one name and one distinct
    category id per class (either may be absent), stuff ids within [0, num_classes)."""
    if names and len(names) != num_classes:
        raise ConfigError(f"model.class_names: {len(names)} names for num_classes={num_classes}")
    bad = [s for s in stuff if not 0 <= s < num_classes]
    if bad:
        raise ConfigError(f"model.stuff_classes: ids {bad} outside [0, {num_classes})")
    if ids and len(ids) != num_classes:
        raise ConfigError(f"model.category_ids: {len(ids)} ids for num_classes={num_classes}")
    if len(set(ids)) != len(ids):
        raise ConfigError("model.category_ids: ids repeated; expected one distinct id per class")


# The keys under which a ModelConfig serialises its label space (flat, readable in every checkpoint).
LABEL_KEYS = ("num_classes", "class_names", "stuff_classes", "category_ids")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an EoMT network and interpret its outputs.

    The label space (class names, stuff ids, dataset ids; `labels`) and the task live here too, so
    that a checkpoint that carries its `ModelConfig` is enough to predict. They are stored as flat
    fields (`LABEL_KEYS`), the keys every checkpoint has been written with.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    swiglu: bool = False  # SwiGLU MLP (giant); hidden = 2/3 * mlp_ratio * D rounded up to 8
    patch_size: int = 16
    img_size: tuple[int, int] = (640, 640)  # (H, W) the position embedding is stored at
    num_register_tokens: int = 4
    num_queries: int = 200  # K
    num_blocks: int = 4  # L2
    num_classes: int = 133  # C, without the no-object class
    layerscale_init: float = 1e-5
    layer_norm_eps: float = 1e-6
    task: str = "panoptic"
    class_names: tuple[str, ...] = ()
    stuff_classes: tuple[int, ...] = ()  # class ids (0-based) that are stuff; the rest are things
    # The dataset's own category id of each class (e.g. COCO's 1..200 with gaps); () = 0..C-1.
    # Results files (COCO JSON) are written with these ids.
    category_ids: tuple[int, ...] = ()
    name: str = ""
    # The ViT family (`eomt.models.backbones.BACKBONES`); configs stored without it are DINOv2.
    backbone: str = "dinov2"
    # DINOv3 RoPE (backbone "dinov3" only): the frequency base, and the largest factor r of the
    # training-time log-uniform coordinate rescale in [1/r, r] (r <= 1: off; eval never rescales).
    rope_theta: float = 100.0
    rope_rescale: float = 2.0
    # DINOv3 gated MLP, down(gelu(gate(x)) * up(x)) of width D * mlp_ratio (transformers'
    # `use_gated_mlp`); DINOv2's gated MLP is `swiglu`.
    gated_mlp: bool = False

    def __post_init__(self) -> None:
        h, w = self.img_size
        if self.patch_size <= 0 or h % self.patch_size or w % self.patch_size:
            raise ConfigError(
                f"model.img_size: {tuple(self.img_size)} must be a multiple of the patch size "
                f"{self.patch_size} on both sides"
            )
        for key in ("num_queries", "num_classes", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: {getattr(self, key)} must be >= 1")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model.embed_dim: {self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if not 1 <= self.num_blocks <= self.depth:
            raise ConfigError(f"model.num_blocks: {self.num_blocks} must be in [1, depth={self.depth}]")
        if self.task not in TASKS:
            raise ConfigError(unknown("model.task", self.task, TASKS))
        if (self.swiglu and self.backbone == "dinov3") or (self.gated_mlp and self.backbone != "dinov3"):
            raise ConfigError(
                f"model.{'swiglu' if self.swiglu else 'gated_mlp'}: not a {self.backbone} option "
                "(the DINOv2 gated MLP is swiglu, the DINOv3 one gated_mlp)"
            )
        check_labels(self.num_classes, self.class_names, self.stuff_classes, self.category_ids)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (H/p, W/p) at the stored input size."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_upscale(self) -> int:
        """Number of 2x upscale blocks: patch 16 -> 2 (mask logits at H/4), as in the official code."""
        return max(1, int(math.log2(self.patch_size)) - 2)

    @property
    def mlp_hidden(self) -> int:
        """MLP width: D * mlp_ratio; DINOv2's SwiGLU takes 2/3 of it rounded up to 8 (timm), while
        DINOv3 (both MLPs) keeps D * mlp_ratio (transformers' `intermediate_size`)."""
        if self.backbone == "dinov3":
            return round(self.embed_dim * self.mlp_ratio)
        if self.swiglu:
            hidden = int(self.embed_dim * self.mlp_ratio * 2 / 3)
            return (hidden + 7) // 8 * 8
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def thing_classes(self) -> tuple[int, ...]:
        stuff = set(self.stuff_classes)
        return tuple(i for i in range(self.num_classes) if i not in stuff)

    @property
    def labels(self) -> LabelSpace | None:
        """The label space as one value; None when the classes are unnamed (only `num_classes`)."""
        if not self.class_names:
            return None
        return LabelSpace(self.class_names, self.stuff_classes, self.category_ids)

    def with_labels(self, labels: LabelSpace) -> "ModelConfig":
        """This config predicting `labels` (count, names, stuff ids and dataset ids replaced)."""
        return self.replace(num_classes=labels.num_classes, class_names=labels.names,
                            stuff_classes=labels.stuff, category_ids=labels.category_ids)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        return from_dict(cls, d, "model")

    def replace(self, **changes: Any) -> "ModelConfig":
        return from_dict(type(self), {**self.to_dict(), **changes}, "model")
