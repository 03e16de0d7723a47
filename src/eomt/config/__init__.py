"""Typed configuration: frozen dataclasses, named presets, and strict overrides.

Config is data. A preset is a fully specified `ModelConfig`; YAML files and `key=value` overrides
only change fields of a preset, and an unknown key is an error that suggests the closest field.

- `parse`: building a dataclass from plain data, coercing each value from the field's type hint;
- `model`: `ModelConfig`, its `LabelSpace`, backbone sizes;
- `presets`: the paper's configurations by name (DINOv2 and DINOv3 rows);
- `train`: `TrainConfig`, the recipe;
- `experiment`: `DataConfig`, `ExperimentConfig`, overrides, `load_experiment`;
- `precision`: the one table of numeric precisions and their names in each vocabulary.
"""

from __future__ import annotations

from eomt.config import precision
from eomt.config.experiment import (
    RENAMED,
    DataConfig,
    ExperimentConfig,
    apply_overrides,
    deprecated_keys,
    load_experiment,
)
from eomt.config.model import LABEL_KEYS, SIZES, TASKS, LabelSpace, ModelConfig, check_labels
from eomt.config.presets import (
    DINOV2_PRESET_NAMES,
    DINOV3_PRESET_NAMES,
    PRESET_ALIASES,
    PRESET_NAMES,
    preset,
    tiny_config,
)
from eomt.config.parse import ConfigError, coerce, from_dict, parse_value
from eomt.config.train import PRECISIONS, TrainConfig, parse_devices

__all__ = [
    "DINOV2_PRESET_NAMES", "DINOV3_PRESET_NAMES", "LABEL_KEYS", "PRECISIONS", "PRESET_ALIASES", "PRESET_NAMES", "RENAMED", "SIZES", "TASKS", "ConfigError", "DataConfig",
    "ExperimentConfig", "LabelSpace", "ModelConfig", "TrainConfig", "apply_overrides", "check_labels", "coerce",
    "deprecated_keys", "from_dict", "load_experiment", "parse_devices", "parse_value", "precision", "preset",
    "tiny_config",
]
