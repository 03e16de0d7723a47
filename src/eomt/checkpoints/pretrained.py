"""`load_pretrained`: what `EoMT.from_pretrained`, `Predictor` and `eomt export` load a model with.

A checkpoint source (file, folder, hub id) goes to `load_model`. A preset name
(`coco_panoptic_eomt_small_640`, short `eomt_small_640`, or a DINOv3 row such as
`coco_panoptic_eomt_small_640_dinov3`) that is not a local path gives a
randomly initialised model of that configuration instead, in eval mode with mask annealing
finished (as a trained model: it predicts and exports), with a one-line warning; `num_classes`,
`img_size` and `map_location` apply to it too. `EoMT.from_config` gives the training start instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from eomt.checkpoints.loader import load_model
from eomt.config import PRESET_ALIASES, PRESET_NAMES
from eomt.models.eomt import EoMT

log = logging.getLogger(__name__)


def is_preset_name(source: str | Path) -> bool:
    """True for a preset name (full, without its `coco_panoptic_` prefix, or a hub spelling of
    `PRESET_ALIASES`; DINOv2 and DINOv3 rows) that is no local path."""
    name = PRESET_ALIASES.get(str(source), str(source))
    known = name in PRESET_NAMES or f"coco_panoptic_{name}" in PRESET_NAMES
    return "/" not in name and known and not Path(name).exists()


def load_pretrained(source: str | Path, **kwargs: Any) -> EoMT:
    """An EoMT from a checkpoint source (`load_model`, same keywords) or a preset name (random weights)."""
    if not is_preset_name(source):
        return load_model(source, **kwargs)
    name = str(source)
    overrides: dict[str, Any] = {}
    if kwargs.get("num_classes") is not None:
        overrides.update(num_classes=int(kwargs["num_classes"]), class_names=(), stuff_classes=())
    if kwargs.get("img_size") is not None:
        size = kwargs["img_size"]
        overrides["img_size"] = (size, size) if isinstance(size, int) else tuple(size)
    log.warning("%s is a preset name: the model has its configuration and random weights", name)
    model = EoMT.from_config(name, **overrides)
    model.set_attn_mask_probs([0.0] * model.config.num_blocks)  # an inference model: annealed
    return model.to(kwargs.get("map_location", "cpu")).eval()
