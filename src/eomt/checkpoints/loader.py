"""`load_model`: any supported checkpoint -> a ready EoMT, with its config and label space.

Sources, detected from the content (not the file name):
- our own safetensors file (`save_model`): config in the metadata, rebuilt exactly;
- a Lightning `.ckpt` of our training module: `network.backbone.*`, config in hyper_parameters;
- an official release (`pytorch_model.bin` or `.ckpt`): `network.encoder.backbone.*`; config from
  the preset named, else inferred from the tensor shapes;
- a transformers folder (`save_pretrained`): config.json + model.safetensors / pytorch_model.bin;
- a bare state dict in our layout (`torch.save(model.state_dict())`): config inferred;
- a hub id `owner/name`, downloaded first (the preset is taken from the repo name when it is one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eomt.checkpoints import hf, official
from eomt.checkpoints.fit import load_into
from eomt.checkpoints.hub import download, looks_like_hub_id
from eomt.checkpoints.infer import infer_config, preset_from_repo, with_label_space
from eomt.checkpoints.io import (
    CheckpointError,
    StateDict,
    as_state_dict,
    find_weight_file,
    read_sharded,
    read_tensor_file,
)
from eomt.checkpoints.native import config_from_lightning, config_from_metadata, is_native
from eomt.config import ModelConfig
from eomt.config import preset as get_preset
from eomt.models.eomt import EoMT

log = logging.getLogger(__name__)


@dataclass
class _Source:
    """A checkpoint read into our key layout, with the config it carries (if any)."""

    name: str
    kind: str
    state_dict: StateDict
    config: ModelConfig | None = None


def load_model(
    source: str | Path,
    *,
    preset: str | None = None,
    config: ModelConfig | None = None,
    num_classes: int | None = None,
    load_class_head: bool = True,
    img_size: int | tuple[int, int] | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    trust_pickle: bool = False,
) -> EoMT:
    """Build an EoMT from a checkpoint file, folder or hub id (see the module docstring).

    The config is, in order: `config`, the named `preset`, the one stored in the checkpoint, or one
    inferred from the shapes (label space from the matching paper preset). `num_classes=N` (N
    different from the checkpoint's) or `load_class_head=False` loads all but the class head,
    which is freshly initialised with N+1 outputs. `img_size` (int or (H, W)) resamples the
    position embedding bicubically; without it the checkpoint's grid defines the input size.
    Anything that does not fit raises `CheckpointError` listing it (with `strict=False` it is
    logged and skipped). Returns the model in eval mode on `map_location`.
    """
    if preset is not None and config is not None:
        raise ValueError("load_model: pass preset= or config=, not both")
    src = _read(source, trust_pickle)
    hint = preset_from_repo(str(source))  # hub repo or folder named like a preset
    cfg = _choose_config(src, preset, config, hint)
    found_classes = _checkpoint_classes(src.state_dict)
    if num_classes is not None and num_classes != cfg.num_classes:
        cfg = cfg.replace(num_classes=num_classes, class_names=(), stuff_classes=())
    if img_size is not None:
        cfg = cfg.replace(img_size=(img_size, img_size) if isinstance(img_size, int) else tuple(img_size))
    head = load_class_head and not (num_classes is not None and found_classes not in (None, num_classes))
    model = EoMT(cfg)
    load_into(
        model, src.state_dict, name=src.name, strict=strict, load_class_head=head,
        resample_pos_embed=img_size is not None, source_grid=_source_grid(src),
    )
    log.info(
        "loaded %s (%s): %s, %d classes, img_size %s, attn_mask_probs %s",
        src.name, src.kind, cfg.name or "custom config", cfg.num_classes, tuple(cfg.img_size),
        [round(p, 4) for p in model.attn_mask_probs.tolist()],
    )
    return model.to(map_location).eval()


def _read(source: str | Path, trust_pickle: bool) -> _Source:
    path = Path(source)
    if not path.exists():
        if not looks_like_hub_id(str(source)):
            raise CheckpointError(f"{source}: no such file or folder (and not an owner/name hub id)")
        path = download(str(source))
    if path.is_dir():
        file = find_weight_file(path)
        if not file.name.endswith(".index.json"):
            return _read(file, trust_pickle)  # single file: same rules as when named directly
        return _classify(read_sharded(file, trust_pickle), str(file), folder=path, ckpt=None)
    obj, meta = read_tensor_file(path, trust_pickle)
    if is_native(meta):
        cfg, _ = config_from_metadata(meta, str(path))
        return _Source(str(path), "eomt checkpoint", obj, cfg)
    return _classify(as_state_dict(obj, path), str(path), folder=path.parent, ckpt=obj)


def _classify(sd: StateDict, name: str, folder: Path, ckpt: Any) -> _Source:
    """Tell the key layout apart and convert to ours."""
    if official.is_official_layout(sd):
        ours = official.from_official(sd, name)
        cfg = config_from_lightning(ckpt, name)
        if cfg is not None:
            return _Source(name, "eomt Lightning checkpoint", ours, cfg)
        released = any(k.startswith(official.PREFIX + official.BACKBONE) for k in sd)
        layout = "official EoMT release" if released else "EoMT Lightning state dict"
        return _Source(name, layout + " (network.* keys)", ours)
    if hf.is_hf_layout(sd):
        cfg = hf.read_hf_config(folder)
        return _Source(name, "transformers EoMT", hf.from_hf(sd, cfg.swiglu, name), cfg)
    if "backbone.patch_embed.proj.weight" in sd:
        return _Source(name, "eomt state dict", sd)
    if any(k.endswith("patch_embed.proj.weight") for k in sd) and not any("class_head" in k for k in sd):
        raise CheckpointError(
            f"{name}: DINOv2 backbone weights without EoMT heads; use load_dinov2_backbone(model, ...) "
            "to start training from them"
        )
    sample = ", ".join(list(sd)[:3])
    raise CheckpointError(f"{name}: not an EoMT checkpoint (keys such as {sample} match no known layout)")


def _choose_config(src: _Source, preset: str | None, config: ModelConfig | None, hint: str | None) -> ModelConfig:
    if config is not None:
        return config
    if preset is not None:
        return get_preset(preset)
    if src.config is not None:
        return src.config
    return with_label_space(infer_config(src.state_dict, src.name), hint)


def _checkpoint_classes(sd: StateDict) -> int | None:
    w = sd.get("class_head.weight")
    return None if w is None else w.shape[0] - 1


def _source_grid(src: _Source) -> tuple[int, int] | None:
    """The (h, w) token grid of the stored position embedding when the checkpoint says it."""
    if src.config is None:
        return None  # square, inferred from the token count
    return src.config.grid_size
