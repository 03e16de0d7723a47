"""A training experiment: data + network + recipe, loaded from YAML with `key=value` overrides.

`load_experiment` is the boundary where user files enter: a YAML file (or a bundled config, or a
preset's config), overrides applied, renamed keys read with one deprecation warning, every value
checked (`eomt.config.parse`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from eomt.config.model import LABEL_KEYS, LabelSpace, ModelConfig
from eomt.config.presets import preset
from eomt.config.parse import ConfigError, from_dict, parse_value, unknown
from eomt.config.train import TrainConfig
from eomt.config_files import resolve_config

log = logging.getLogger(__name__)

SECTIONS = ("model", "data", "train")
# Keys renamed since configs were first written: old -> new, within the section. The old key stays
# readable (a saved run or checkpoint keeps loading); a user's file or override gets one warning.
RENAMED: dict[str, dict[str, str]] = {"train": {"mask_threshold": "score_threshold"}}


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
    # 0: images (EoMT). T >= 1: clips of T frames, which train a VidEoMT (official recipe: 5).
    clip_length: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: {self.batch_size} must be >= 1")
        if self.clip_length < 0:
            raise ConfigError(f"data.clip_length: {self.clip_length} must be >= 0 (0 = images, T = clips of T frames)")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale_range: {self.scale_range} must satisfy 0 < min <= max")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


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

    def resolve_labels(self, labels: LabelSpace, source: str = "the dataset") -> "ExperimentConfig":
        """This config with the label space `labels` of `source` (a dataset) wherever the config
        leaves it open. Raises ConfigError naming the key when the config sets a label key that
        disagrees with the dataset."""
        names, stuff, ids = labels.names, labels.stuff, labels.category_ids
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
        model = m.with_labels(LabelSpace(
            names,
            m.stuff_classes if "stuff_classes" in explicit else stuff,
            m.category_ids if "category_ids" in explicit else ids,
        ))
        if self.name_from_run:
            model = model.replace(name=_run_name(self.train.out_dir))
        return dataclasses.replace(self, model=model, labels_set=LABEL_KEYS, name_from_run=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": _plain(self.data), "train": _plain(self.train)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        unknown_sections = set(d) - set(SECTIONS)
        if unknown_sections:
            raise ConfigError(unknown("config", sorted(unknown_sections)[0], SECTIONS, what="section"))
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
        return cls(
            model=from_dict(ModelConfig, {**base, **model}, "model"),
            data=from_dict(DataConfig, data, "data"),
            train=from_dict(TrainConfig, _renamed(d.get("train", {}), "train"), "train"),
            labels_set=labels_set,
            name_from_run=not model.get("name"),
        )


def _plain(config: Any) -> dict[str, Any]:
    """A section as plain YAML data: tuples as lists, `options` pairs as a mapping."""
    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    d = {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if "options" in d:
        d["options"] = dict(config.options)
    return d


def _renamed(section: Mapping[str, Any], name: str) -> dict[str, Any]:
    """`section` with renamed keys under their new names (`RENAMED`); both spellings is an error."""
    out = dict(section)
    for old, new in RENAMED.get(name, {}).items():
        if old in out:
            if new in out:
                raise ConfigError(f"{name}.{old}: renamed to {name}.{new}; set only {name}.{new}")
            out[new] = out.pop(old)
    return out


def deprecated_keys(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(old, new) dotted names of the renamed keys `raw` (a nested config dict) still uses."""
    return [(f"{section}.{old}", f"{section}.{new}") for section, renames in RENAMED.items()
            for old, new in renames.items() if isinstance(raw.get(section), Mapping) and old in raw[section]]


def _run_name(out_dir: str) -> str:
    return os.path.basename(os.path.normpath(out_dir)) or "eomt"


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
        node[parts[-1]] = parse_value(value)
    return out


def load_experiment(source: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment and apply `key=value` overrides.

    `source` is a YAML file, a bundled config name (`coco/panoptic/eomt_large_640`) or a preset name
    (the bundled config that reproduces it); see `eomt.config_files.resolve_config`. A renamed key
    (`RENAMED`) is read under its new name, with one warning naming both.
    """
    import yaml


    path = resolve_config(source)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with model/data/train sections")
    raw = apply_overrides(raw, overrides or [])
    for old, new in deprecated_keys(raw):
        log.warning("%s: %s is deprecated; it is read as %s, its new name", source, old, new)
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
