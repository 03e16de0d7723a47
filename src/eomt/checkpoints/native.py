"""The project's own checkpoint: one safetensors file whose metadata carries the full `ModelConfig`.

Metadata keys: `eomt_format` (marker), `eomt_format_version`, `model_config` (JSON of
`ModelConfig.to_dict()`), `extra` (JSON of the caller's dict, e.g. training step and metrics).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from eomt.checkpoints.io import CheckpointError, save_safetensors
from eomt.config import ConfigError, ModelConfig
from eomt.models.eomt import EoMT

log = logging.getLogger(__name__)

FORMAT = "eomt-checkpoint"
FORMAT_VERSION = 1


def save_model(model: EoMT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's weights and config to one safetensors file, atomically.

    `extra` must be JSON-serialisable; read it back with `read_metadata(path)["extra"]`.
    """
    path = Path(path)
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"save_model extra: not JSON-serialisable ({e})") from None
    metadata = {
        "format": "pt",
        "eomt_format": FORMAT,
        "eomt_format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "extra": extra_json,
    }
    save_safetensors(model.state_dict(), path, metadata)
    log.info("saved %s (%s)", path, model.config.name or "custom config")
    return path


def is_native(metadata: dict[str, str]) -> bool:
    """True when safetensors metadata carries our format marker."""
    return metadata.get("eomt_format") == FORMAT


def config_from_metadata(metadata: dict[str, str], name: str) -> tuple[ModelConfig, dict[str, Any]]:
    """(`ModelConfig`, extra dict) stored by `save_model`."""
    version = int(metadata.get("eomt_format_version", "0") or 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: checkpoint format version {version} is newer than this eomt ({FORMAT_VERSION}); upgrade eomt"
        )
    try:
        cfg = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{name}: damaged eomt checkpoint metadata ({e})") from None
    return cfg, extra


def read_metadata(path: str | Path) -> dict[str, Any]:
    """{"config": ModelConfig, "extra": dict, "format_version": int} of a `save_model` file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if not is_native(meta):
        raise CheckpointError(f"{path}: not an eomt checkpoint (no eomt_format marker)")
    cfg, extra = config_from_metadata(meta, str(path))
    return {"config": cfg, "extra": extra, "format_version": int(meta["eomt_format_version"])}


def config_from_lightning(ckpt: Any, name: str) -> ModelConfig | None:
    """The `ModelConfig` our LightningModule stores in `hyper_parameters["model_config"]`, if any."""
    if not isinstance(ckpt, dict):
        return None
    hparams = ckpt.get("hyper_parameters")
    value = hparams.get("model_config") if isinstance(hparams, dict) else None
    if value is None:
        return None
    if isinstance(value, ModelConfig):
        return value
    try:
        return ModelConfig.from_dict(value)
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{name}: hyper_parameters.model_config is not a valid config ({e})") from None
