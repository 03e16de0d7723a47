"""Typed configuration: frozen dataclasses, named presets, and strict overrides.

Config is data. A preset is a fully specified `ModelConfig`; YAML files and `key=value` overrides
only change fields of a preset, and an unknown key is an error that suggests the closest field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

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


class ConfigError(ValueError):
    """A configuration value or key that does not fit; the message names the field."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an EoMT network and interpret its outputs.

    The label space (class names, stuff ids) and the task live here too, so that a checkpoint that
    carries its `ModelConfig` is enough to predict.
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
            raise ConfigError(_unknown("model.task", self.task, TASKS))
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"model.class_names: {len(self.class_names)} names for num_classes={self.num_classes}"
            )
        bad = [s for s in self.stuff_classes if not 0 <= s < self.num_classes]
        if bad:
            raise ConfigError(f"model.stuff_classes: ids {bad} outside [0, {self.num_classes})")
        if self.category_ids and len(self.category_ids) != self.num_classes:
            raise ConfigError(
                f"model.category_ids: {len(self.category_ids)} ids for num_classes={self.num_classes}"
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ConfigError("model.category_ids: ids repeated; expected one distinct id per class")

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
        if self.swiglu:
            hidden = int(self.embed_dim * self.mlp_ratio * 2 / 3)
            return (hidden + 7) // 8 * 8
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def thing_classes(self) -> tuple[int, ...]:
        stuff = set(self.stuff_classes)
        return tuple(i for i in range(self.num_classes) if i not in stuff)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        d["class_names"] = list(self.class_names)
        d["stuff_classes"] = list(self.stuff_classes)
        d["category_ids"] = list(self.category_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        return from_dict(cls, d, "model")

    def replace(self, **changes: Any) -> "ModelConfig":
        return from_dict(type(self), {**self.to_dict(), **changes}, "model")


T = TypeVar("T")


def _unknown(key: str, value: Any, choices: Any) -> str:
    choices = [str(c) for c in choices]
    hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    msg = f"{key}: unknown value {value!r}"
    if hint:
        msg += f"; did you mean {hint[0]!r}?"
    return msg + f" (expected one of: {', '.join(choices)})"


def from_dict(cls: type[T], d: Mapping[str, Any], prefix: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion.

    Values are coerced to the field's declared type (lists to tuples, ints to floats) and a value
    of the wrong kind is an error that names `prefix.key`.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in fields:
            raise ConfigError(_unknown(f"{prefix}", key, fields).replace("unknown value", "unknown key"))
        kwargs[key] = _coerce(value, fields[key], f"{prefix}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, f: dataclasses.Field, key: str) -> Any:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if t.startswith("tuple"):
            if t == "tuple[int, int]" and isinstance(value, int) and not isinstance(value, bool):
                return (value, value)  # `model.img_size=640`: a square
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError
            inner = t[len("tuple[") : -1].split(",")[0].strip()
            conv = {"int": int, "float": float, "str": str}.get(inner, lambda v: v)
            return tuple(_strict(conv, v) for v in value)
        if t == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if t == "int":
            return _strict(int, value)
        if t == "float":
            return float(value)
        if t == "str":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # `train.precision=32` arrives as a YAML number
            if not isinstance(value, str):
                raise TypeError
            return value
        if t.startswith("str | None") or t.startswith("Optional[str]"):
            return None if value is None else str(value)
        if t.startswith("float | None"):
            return None if value is None else float(value)
        if t.startswith("int | None"):
            return None if value is None else _strict(int, value)
    except (TypeError, ValueError):
        example = " (write a list, e.g. [1, 2])" if t.startswith("tuple") else ""
        raise ConfigError(f"{key}: {value!r} is not a valid {t}{example}") from None
    return value


def _strict(conv: Any, v: Any) -> Any:
    if conv is int:
        if isinstance(v, bool):
            raise TypeError
        if isinstance(v, float) and not v.is_integer():
            raise ValueError
        if isinstance(v, str):
            return int(v)
        return int(v)
    return conv(v)


# ---------------------------------------------------------------------------------------------
# Presets: one per paper configuration (the names of the official hub repos, tue-mps/<name>).
# ---------------------------------------------------------------------------------------------


def _preset(name: str, size: str, img: int, task: str, dataset: str) -> ModelConfig:
    from eomt import classes

    names, stuff = classes.label_space(dataset, task)
    s = SIZES[size]
    return ModelConfig(
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        num_blocks=s["num_blocks"],
        swiglu=s["swiglu"],
        img_size=(img, img),
        num_queries=100 if task == "semantic" else 200,
        num_classes=len(names),
        task=task,
        class_names=tuple(names),
        stuff_classes=tuple(stuff),
        name=name,
    )


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

PRESET_NAMES: tuple[str, ...] = tuple(_PRESET_SPECS)


def preset(name: str) -> ModelConfig:
    """The `ModelConfig` of a named paper configuration, e.g. `coco_panoptic_eomt_large_640`.

    Short names such as `eomt_large_640` resolve to the COCO panoptic row of that size.
    """
    key = name.split("/")[-1]
    if key not in _PRESET_SPECS and f"coco_panoptic_{key}" in _PRESET_SPECS:
        key = f"coco_panoptic_{key}"
    if key not in _PRESET_SPECS:
        raise ConfigError(_unknown("preset", name, PRESET_NAMES))
    return _preset(key, *_PRESET_SPECS[key])


def tiny_config(**overrides: Any) -> ModelConfig:
    """A tiny EoMT for tests and the CPU demo (D=64, 4 blocks, 2 with queries)."""
    base = dict(
        embed_dim=64, depth=4, num_heads=2, num_blocks=2, img_size=(64, 64), num_queries=8,
        num_classes=5, name="tiny",
    )
    base.update(overrides)
    return from_dict(ModelConfig, base, "model")


# ---------------------------------------------------------------------------------------------
# Training experiments: data + schedule + engine settings, loaded from YAML with overrides.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to read and how to batch and augment it (paper A.2)."""

    dataset: str = "synthetic"  # a name known to eomt.data.registry.build_dataset
    root: str = ""  # folder with the archives / files
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 4  # per device; the paper's total is 16
    num_workers: int = 2
    scale_range: tuple[float, float] = (0.1, 2.0)  # large-scale jitter; semantic: (0.5, 2.0)
    color_jitter: bool = False
    options: tuple[tuple[str, Any], ...] = ()  # dataset-specific keyword arguments

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: {self.batch_size} must be >= 1")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale_range: {self.scale_range} must satisfy 0 < min <= max")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedules, loss constants and engine settings (official defaults, paper 4.1/A.2)."""

    epochs: int = 12
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 1e-4  # at the reference total batch `lr_reference_batch` (see lr_scaling)
    # How the LR follows the total batch (batch_size x devices x nodes): "none" (lr as given),
    # "linear" (lr * B / B_ref, Goyal et al. 2017) or "sqrt" (lr * sqrt(B / B_ref), the rule for
    # adaptive optimisers such as AdamW, Malladi et al. 2022). B_ref = 16, the paper's total batch.
    lr_scaling: str = "none"
    lr_reference_batch: int = 16
    weight_decay: float = 0.05
    llrd: float = 0.8
    llrd_l2_enabled: bool = True
    warmup_steps: tuple[int, int] = (500, 1000)  # heads alone, then the ViT
    # The same two warm-up stages as fractions of the total steps (overrides warmup_steps), so a
    # schedule scales with the data: e.g. (0.05, 0.1).
    warmup_fraction: tuple[float, ...] = ()
    freeze_backbone: bool = False  # train only the queries, the mask module and the heads
    poly_power: float = 0.9
    mask_annealing: bool = True
    # Per-block annealing windows as fractions of training ((start, end), ...); () = the official
    # staggered windows for num_blocks.
    anneal_windows: tuple[tuple[float, float], ...] = ()
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    grad_clip: float = 0.01
    precision: str = "bf16-mixed"  # or "16-mixed", "32-true"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory)
    accelerator: str = "auto"
    devices: str = "1"  # Lightning syntax: "1", "4", "0,1", "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    threads: int = 0  # torch intra-op threads of the training process; 0 = torch's default
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 10
    out_dir: str = "runs/eomt"
    data_check: bool = True  # check the train and val data before the first step (cached)
    init: str = ""  # DINOv2 backbone weights or an EoMT checkpoint to start from
    load_class_head: bool = True
    # Post-processing thresholds used by validation (official: 0.8 / 0.8).
    mask_threshold: float = 0.8
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(_unknown("train.precision", self.precision, PRECISIONS))
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise ConfigError(_unknown("train.lr_scaling", self.lr_scaling, ("none", "linear", "sqrt")))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.{f.name}: {value} is not a finite number")
        for key in ("lr", "grad_clip", "weight_decay", "no_object_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 0")
        if self.lr == 0:
            raise ConfigError("train.lr: 0 trains nothing; expected a learning rate > 0 (e.g. 1e-4)")
        for key in ("num_points", "log_every_n_steps", "num_nodes", "lr_reference_batch", "val_every_n_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 1")
        for key in ("checkpoint_every_n_steps", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 0 (0 = {_ZERO_MEANS[key]})")
        if any(w < 0 for w in self.warmup_steps):
            raise ConfigError(f"train.warmup_steps: {self.warmup_steps} must be >= 0")
        if self.warmup_fraction and (
            len(self.warmup_fraction) != 2 or not all(0 <= f <= 1 for f in self.warmup_fraction)
            or sum(self.warmup_fraction) > 1
        ):
            raise ConfigError(
                f"train.warmup_fraction: {self.warmup_fraction}; expected two fractions of the total steps "
                "(heads, then backbone) in [0, 1] that sum to <= 1, e.g. [0.05, 0.1]"
            )
        if not 0 <= self.oversample_ratio or not 0 <= self.importance_sample_ratio <= 1:
            raise ConfigError("train.importance_sample_ratio: must be in [0, 1] (oversample_ratio >= 0)")
        for start, end in self.anneal_windows:
            if not 0 <= start <= end <= 1:
                raise ConfigError(f"train.anneal_windows: ({start}, {end}) must satisfy 0 <= start <= end <= 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("train.epochs: must be >= 1 unless train.max_steps is set")
        parse_devices(self.devices)

    def warmup(self, total_steps: int) -> tuple[int, int]:
        """The two warm-up stages in optimizer steps (heads alone, then the ViT) for a run of
        `total_steps`: `warmup_fraction` of it when set, else `warmup_steps`."""
        if self.warmup_fraction:
            return tuple(int(round(f * total_steps)) for f in self.warmup_fraction)  # type: ignore[return-value]
        return tuple(self.warmup_steps)  # type: ignore[return-value]

    def scaled_lr(self, total_batch: int) -> float:
        """`lr` under `lr_scaling` for a total batch (per-device batch x devices x nodes)."""
        ratio = total_batch / self.lr_reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]


PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "32", "bf16-true")
_ZERO_MEANS = {"checkpoint_every_n_steps": "only at the end of each epoch and of training",
               "threads": "torch's default"}


def parse_devices(text: str) -> Any:
    """Lightning's device syntax: "auto", a count ("4") or a list of indices ("0,1"); else ConfigError."""
    text = str(text).strip()
    if text == "auto":
        return "auto"
    try:
        if "," in text:
            ids = [int(x) for x in text.split(",") if x.strip()]
            if not ids or min(ids) < 0:
                raise ValueError
            return ids
        count = int(text)
    except ValueError:
        raise ConfigError(
            f"train.devices: {text!r} is not a device count or list; expected e.g. 1, 4, \"0,1\" or auto"
        ) from None
    if count < 1 and count != -1:
        raise ConfigError(f"train.devices: {count} must be >= 1 (or -1 / auto for all)")
    return count


LABEL_KEYS = ("num_classes", "class_names", "stuff_classes", "category_ids")


@dataclass(frozen=True)
class ExperimentConfig:
    """A full training run: the network, its data and its recipe.

    `labels_set`: which of `model.num_classes / class_names / stuff_classes / category_ids` the
    config file and overrides set (a preset's label space does not count; None: only the class
    names, if any). `resolve_labels` takes every other label key from the dataset before training,
    evaluation or a data check; the keys the config does set must agree with the dataset.
    """

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    labels_set: tuple[str, ...] | None = None
    name_from_run: bool = False  # the config names no model: it is named after the run folder

    @property
    def labels_from_dataset(self) -> bool:
        """The config sets no label key: the whole label space is the dataset's."""
        return not self.labels_set if self.labels_set is not None else not self.model.class_names

    def resolve_labels(self, class_names: Any, stuff_classes: Any = (), category_ids: Any = (),
                       source: str = "the dataset") -> "ExperimentConfig":
        """This config with the label space of `source` (a dataset): names, count, stuff ids and
        the dataset's category ids. Raises ConfigError naming the key when the config sets a label
        key that disagrees with the dataset."""
        names = tuple(str(n) for n in class_names)
        stuff = tuple(int(c) for c in stuff_classes)
        ids = tuple(int(i) for i in category_ids) if category_ids else ()
        if ids == tuple(range(len(names))):
            ids = ()
        m = self.model
        explicit = set(self.labels_set if self.labels_set is not None else
                       (LABEL_KEYS if m.class_names else ()))
        if explicit:
            if m.num_classes != len(names):
                raise ConfigError(
                    f"model.num_classes: {m.num_classes} in the config, but {source} has {len(names)} classes; "
                    "remove the model's class keys (num_classes, class_names, stuff_classes) to take them from the data"
                )
            if m.class_names and tuple(m.class_names) != names:
                diff = next(i for i, (a, b) in enumerate(zip(m.class_names, names)) if a != b)
                raise ConfigError(
                    f"model.class_names: class {diff} is {m.class_names[diff]!r} in the config but "
                    f"{names[diff]!r} in {source}"
                )
            if m.category_ids and ids and tuple(m.category_ids) != ids:
                raise ConfigError(f"model.category_ids: {list(m.category_ids)} in the config, {list(ids)} in {source}")
            if "stuff_classes" in explicit and tuple(m.stuff_classes) != stuff:
                raise ConfigError(
                    f"model.stuff_classes: {list(m.stuff_classes)} in the config, {list(stuff)} in {source}"
                )
        # What the config leaves open comes from the data.
        model = m.replace(
            num_classes=len(names), class_names=names,
            stuff_classes=m.stuff_classes if "stuff_classes" in explicit else stuff,
            category_ids=m.category_ids if "category_ids" in explicit else ids,
        )
        if self.name_from_run:
            model = model.replace(name=_run_name(self.train.out_dir))
        return dataclasses.replace(self, model=model, labels_set=LABEL_KEYS, name_from_run=False)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self.data)
        data["options"] = dict(self.data.options)
        data["scale_range"] = list(self.data.scale_range)
        train = dataclasses.asdict(self.train)
        train["warmup_steps"] = list(self.train.warmup_steps)
        train["warmup_fraction"] = list(self.train.warmup_fraction)
        train["anneal_windows"] = [list(w) for w in self.train.anneal_windows]
        return {"model": self.model.to_dict(), "data": data, "train": train}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        unknown = set(d) - {"model", "data", "train"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(_unknown("config", key, ("model", "data", "train")).replace("value", "section"))
        model = dict(d.get("model", {}))
        base = preset(model.pop("preset")).to_dict() if "preset" in model else {}
        # Empty lists (`class_names: []`) leave the key to the dataset, as an absent key does. A
        # preset's label space is one unit: it is dropped as soon as the config sets any label key.
        labels_set = tuple(k for k in LABEL_KEYS if model.get(k) not in (None, [], ()))
        for key in LABEL_KEYS:
            if model.get(key) in (None, [], ()):
                model.pop(key, None)
                if labels_set:
                    base.pop(key, None)
        data = dict(d.get("data", {}))
        if "options" in data:
            opts = data["options"] or {}
            if not isinstance(opts, Mapping):
                raise ConfigError(f"data.options: expected a mapping, got {opts!r}")
            data["options"] = tuple(sorted(opts.items()))
        train = dict(d.get("train", {}))
        if "anneal_windows" in train:
            train["anneal_windows"] = tuple(tuple(float(v) for v in w) for w in train["anneal_windows"])
        if "devices" in train:
            train["devices"] = str(train["devices"])
        return cls(
            model=from_dict(ModelConfig, {**base, **model}, "model"),
            data=from_dict(DataConfig, data, "data"),
            train=from_dict(TrainConfig, train, "train"),
            labels_set=labels_set,
            name_from_run=not model.get("name"),
        )


def _run_name(out_dir: str) -> str:
    import os

    return os.path.basename(os.path.normpath(out_dir)) or "eomt"


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested config dict."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr=2e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr=2e-4")
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {item!r}: {parts[0]!r} is not a section")
        node = section
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return out


def load_experiment(source: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment and apply `key=value` overrides.

    `source` is a YAML file, a bundled config name (`coco/panoptic/eomt_large_640`) or a preset name
    (the bundled config that reproduces it); see `eomt.config_files.resolve_config`.
    """
    import yaml

    from eomt.config_files import resolve_config  # imports this module: resolved at call time

    path = resolve_config(source)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with model/data/train sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
