"""`load_model`: any supported checkpoint -> a ready EoMT, with its config and label space.

Sources, detected from the content (not the file name):
- our own safetensors file (`save_model`): config in the metadata, rebuilt exactly;
- a Lightning `.ckpt` of our training module: `network.backbone.*`, config in hyper_parameters;
- an official release (`pytorch_model.bin` or `.ckpt`): `network.encoder.backbone.*`; config from
  the preset named, else inferred from the tensor shapes;
- a transformers folder (`save_pretrained`): config.json + model.safetensors / pytorch_model.bin;
- a bare state dict in our layout (`torch.save(model.state_dict())`): config inferred;
- a hub id `owner/name`, downloaded first (the preset is taken from the repo name when it is one).
DINOv2 and DINOv3 backbone weights are recognised too (`read_source`), for `init_from`; `load_model`
refuses them. An official DINOv3 release stores its backbone as deltas from Meta's weights: detected
(`official_dinov3.delta_evidence`) and rebuilt with `backbone=` (the base weights).
A config inferred from the shapes takes a square token grid, or the grid of `img_size=` when the
count is not square (a non-square model in a layout without a config reloads with its img_size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from eomt.checkpoints import dinov2, dinov3, hf, hf_dinov3, official, official_dinov3
from eomt.checkpoints.fit import load_into, token_grid
from eomt.checkpoints.infer import infer_config, preset_from_repo, with_label_space
from eomt.checkpoints.io import CheckpointError, StateDict, as_state_dict
from eomt.checkpoints.native import config_from_lightning, config_from_metadata, is_native
from eomt.checkpoints.source import read_weights
from eomt.config import ModelConfig
from eomt.config import preset as get_preset
from eomt.models.eomt import EoMT

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A checkpoint read into our key layout, with the config it carries (if any).

    `family` is "eomt" (any EoMT layout, converted to ours) or "dinov2" / "dinov3" (backbone
    weights, left in their own names for `dinov2.fit_dinov2` / `dinov3.fit_dinov3`). `deltas`: an
    official DINOv3 release whose backbone holds differences from its base; `evidence` says why.
    """

    name: str
    kind: str
    state_dict: StateDict
    config: ModelConfig | None = None
    family: str = "eomt"
    deltas: bool = False
    evidence: str = ""

    @property
    def num_classes(self) -> int | None:
        """Classes of the stored class head (its rows minus the no-object row), None without one."""
        w = self.state_dict.get("class_head.weight") if self.family == "eomt" else None
        return None if w is None else w.shape[0] - 1

    def grid(self, base: ModelConfig | None = None, wanted: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """The (h, w) token grid of the stored position embedding (see `fit.token_grid`).

        The checkpoint's own config decides first, then `base` (a config the caller says
        describes it), then a square count, then `wanted` (the grid asked for).
        """
        pos = self.state_dict.get("backbone.pos_embed")
        if pos is None or pos.ndim != 3:
            return None
        known = (self.config.grid_size if self.config else None, base.grid_size if base else None)
        return token_grid(pos.shape[1], known=known, wanted=wanted)


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
    backbone: str | Path | Mapping[str, torch.Tensor] | None = None,
) -> EoMT:
    """Build an EoMT from a checkpoint file, folder or hub id (see the module docstring).

    The config is, in order: `config`, the named `preset`, the one stored in the checkpoint, or one
    inferred from the shapes (label space from the matching paper preset). `num_classes=N` (N
    different from the checkpoint's) or `load_class_head=False` loads all but the class head,
    which is freshly initialised with N+1 outputs. `img_size` (int or (H, W)) is the model's input
    size: the position embedding is resampled bicubically from the stored grid when they differ.
    The stored grid comes from the checkpoint's config, else `config`/`preset`, else it is square,
    else it is the grid of `img_size` (so a non-square checkpoint without a config loads with
    `img_size=` its training size). Anything that does not fit raises `CheckpointError` listing it
    (with `strict=False` it is logged and skipped). Returns the model in eval mode on `map_location`.
    `backbone` (file, folder, hub id or state dict of DINOv3 weights) is the base an official
    DINOv3 delta file needs; a delta file without it raises `CheckpointError` naming the base, and
    with an absolute file it is not used (a warning), so no base is ever added twice.
    """
    if preset is not None and config is not None:
        raise ValueError("load_model: pass preset= or config=, not both")
    src = read_source(source, trust_pickle)
    if src.family in ("dinov2", "dinov3"):
        raise CheckpointError(
            f"{src.name}: {src.kind} without EoMT heads; to start training from them use "
            "train.init= or init_from(model, ...) (load_dinov2_backbone for DINOv2 alone)"
        )
    base_event = _apply_base(src, backbone, trust_pickle)
    size = _pair(img_size)
    hint = preset_from_repo(str(source)) or official_dinov3.preset_hint(str(source))  # named like a preset
    cfg = _choose_config(src, preset, config, hint, size)
    grid = src.grid(cfg if (config or preset) else None, _grid_of(size, cfg.patch_size))
    found_classes = src.num_classes
    if num_classes is not None and num_classes != cfg.num_classes:
        cfg = cfg.replace(num_classes=num_classes, class_names=(), stuff_classes=())
    if size is not None:
        cfg = cfg.replace(img_size=size)
    head = load_class_head and not (num_classes is not None and found_classes not in (None, num_classes))
    model = EoMT(cfg)
    report = load_into(
        model, src.state_dict, name=src.name, strict=strict, load_class_head=head,
        resample_pos_embed=size is not None, source_grid=grid,
    )
    events = [base_event] if base_event else []
    events += [f"resampled {r}" for r in report.resampled]
    if report.skipped:
        events.append(f"class head not loaded (fresh, {cfg.num_classes + 1} outputs)")
    log.info(
        "loaded %s (%s): %s, %d classes, img_size %s, attn_mask_probs %s%s",
        src.name, src.kind, cfg.name or "custom config", cfg.num_classes, tuple(cfg.img_size),
        [round(p, 4) for p in model.attn_mask_probs.tolist()], "".join(f"; {e}" for e in events),
    )
    return model.to(map_location).eval()


def _apply_base(src: Source, base: str | Path | Mapping[str, torch.Tensor] | None, trust_pickle: bool) -> str:
    """Rebuild an official DINOv3 delta file's backbone in place; the event for the log line."""
    if src.deltas:
        if base is None:
            raise official_dinov3.missing_base_error(src.state_dict, src.name, src.evidence)
        base_name, base_sd = official_dinov3.read_base(base, trust_pickle)
        src.state_dict = official_dinov3.add_base(src.state_dict, base_sd, src.name, base_name)
        src.deltas = False
        return f"backbone deltas + base {base_name} ({src.evidence})"
    if base is not None:
        # A warning, not an error: the file is usable as it is, and adding the base would corrupt it.
        what = f"absolute weights ({src.evidence})" if src.evidence else src.kind
        log.warning("%s holds %s: backbone= is not used (no base is added)", src.name, what)
    return f"absolute backbone ({src.evidence})" if src.evidence else ""


def _pair(img_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if img_size is None:
        return None
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def _grid_of(size: tuple[int, int] | None, patch: int) -> tuple[int, int] | None:
    return None if size is None else (size[0] // patch, size[1] // patch)


def read_source(source: str | Path, trust_pickle: bool = False) -> Source:
    """Read a checkpoint file, folder or hub id and tell its layout (`Source.kind`) apart.

    Any EoMT layout is converted to ours; DINOv2 backbone weights come back as `family="dinov2"`.
    Raises `CheckpointError` naming the file for anything unreadable or of no known layout.
    """
    obj, meta, file = read_weights(source, trust_pickle)  # a folder's weight file, a hub snapshot's
    if is_native(meta):
        if meta.get("eomt_model", "eomt") != "eomt":  # `checkpoints.videomt` writes "videomt"
            raise CheckpointError(f"{file}: a VidEoMT (video) model; load it with "
                                  "eomt.checkpoints.load_video_model")
        cfg, _ = config_from_metadata(meta, str(file))
        return Source(str(file), "eomt checkpoint", obj, cfg)
    return _classify(as_state_dict(dinov2.unwrap(obj), file), str(file), folder=file.parent, ckpt=obj)


def _classify(sd: StateDict, name: str, folder: Path, ckpt: Any) -> Source:
    """Tell the key layout apart and convert to ours."""
    if any(k.startswith("network.query_updater.") for k in sd):  # a video training run's .ckpt
        raise CheckpointError(f"{name}: a VidEoMT (video) training checkpoint; load it with "
                              "eomt.checkpoints.load_video_model")
    if official_dinov3.is_official_dinov3(sd):
        ours = official_dinov3.from_official_dinov3(sd, name)
        deltas, evidence = official_dinov3.delta_evidence(ours)
        cfg = config_from_lightning(ckpt, name) or official.read_sidecar(Path(name))
        kind = "official DINOv3 EoMT, backbone " + ("deltas" if deltas else "absolute")
        return Source(name, kind, ours, cfg, deltas=deltas, evidence=evidence)
    layout = dinov3.dinov3_layout(sd)  # before transformers EoMT and DINOv2: names overlap
    if layout is not None:
        return Source(name, f"DINOv3 weights, {layout} layout", sd, family="dinov3")
    if official.is_official_layout(sd):
        ours = official.from_official(sd, name)
        cfg = config_from_lightning(ckpt, name)
        if cfg is not None:
            return Source(name, "eomt Lightning checkpoint", ours, cfg)
        cfg = official.read_sidecar(Path(name))  # written by save_official: the label space
        if cfg is not None:
            return Source(name, f"official layout, config from {official.sidecar_path(Path(name)).name}", ours, cfg)
        released = any(k.startswith(official.PREFIX + official.BACKBONE) for k in sd)
        layout = "official EoMT release" if released else "EoMT Lightning state dict"
        return Source(name, layout + " (network.* keys)", ours)
    if hf.is_hf_layout(sd):
        cfg = hf.read_hf_config(folder)
        if cfg.backbone == "dinov3":
            return Source(name, "transformers EoMT-DINOv3", hf_dinov3.from_hf(sd), cfg)
        return Source(name, "transformers EoMT", hf.from_hf(sd, cfg.swiglu, name), cfg)
    if dinov2.looks_like_dinov2(sd):  # before ours: a DINOv2 teacher's keys start with backbone. too
        return Source(name, "DINOv2 weights", sd, family="dinov2")
    if "backbone.patch_embed.proj.weight" in sd or official_dinov3.is_dinov3_eomt(sd):
        return Source(name, "eomt state dict", sd)
    sample = ", ".join(list(sd)[:3])
    raise CheckpointError(
        f"{name}: no known checkpoint layout: expected EoMT weights (ours, official network.*, transformers, "
        f"or a bare state dict with backbone.patch_embed.proj.weight) or DINOv2 backbone weights "
        f"(patch_embed.proj.weight, blocks.N.*); found {len(sd)} tensors with keys such as {sample}"
    )


def _choose_config(
    src: Source, preset: str | None, config: ModelConfig | None, hint: str | None, size: tuple[int, int] | None
) -> ModelConfig:
    if config is not None:
        return config
    if preset is not None:
        return get_preset(preset)
    if src.config is not None:
        return src.config
    if official_dinov3.is_dinov3_eomt(src.state_dict):
        cfg = official_dinov3.infer_dinov3_config(src.state_dict, src.name, size, hint)
        return cfg if cfg.name else with_label_space(cfg, hint)
    return with_label_space(infer_config(src.state_dict, src.name, img_size=size), hint)
