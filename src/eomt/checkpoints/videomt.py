"""VidEoMT checkpoints: our own file, transformers `VideomtForUniversalSegmentation` folders, the
official release (tue-mps/videomt), and a video model started from any image EoMT checkpoint.

Our VidEoMT file is the image model's file (`native.save_model`: one safetensors file, the full
`ModelConfig` in its metadata) with two more tensors, `query_updater.weight` / `.bias`, beside the
image model's keys (the official names without the `backbone.` prefix of the detectron2 model),
and two more metadata entries that say it is a video model: `eomt_model` = "videomt" and
`videomt` = JSON of the video model's own options ({"norm_queries": bool}). `ModelConfig` has no
video field: a VidEoMT adds one layer and one option to an image model and nothing else.

Layouts read by `load_video_model`, told apart by content:
- our VidEoMT file (metadata above);
- a Lightning `.ckpt` of a video training run (`network.eomt.*`, `network.query_updater.*`; the
  config from its hyper-parameters);
- a transformers folder whose config.json has model_type "videomt": the EoMT key table of
  `checkpoints.hf` plus `query_updater.*`; `embeddings.mask_token` (a masked-modelling token that
  segmentation never uses) is dropped, and written as zeros (transformers' initial value);
- an official release (`{"model": state_dict}` or a bare state dict of the detectron2 model):
  `backbone.encoder.backbone.*` (the ViT: timm DINOv2 names, or transformers DINOv3 names with the
  embeddings as `patch_embed` and the layers as `blocks`), `backbone.{q, query_updater, class_head,
  mask_head, upscale, attn_mask_probs}`, `criterion.empty_weight`. The official "segmenter"
  (image) weights in that layout have no `query_updater`: it starts new; `OFFICIAL_OPTIONS` gives what
  the weights do not show (norm_queries, input size) for the releases that differ from the defaults;
- any image EoMT checkpoint `load_model` reads: a VidEoMT around it, `query_updater` new.
A new `query_updater` is PyTorch's default `nn.Linear`, as the official recipe starts it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from eomt.checkpoints import hf, native
from eomt.checkpoints.dinov2 import unwrap
from eomt.checkpoints.fit import load_into
from eomt.checkpoints.infer import infer_config, with_label_space
from eomt.checkpoints.io import CheckpointError, StateDict, as_state_dict, save_safetensors
from eomt.checkpoints.loader import load_model
from eomt.checkpoints.source import read_weights
from eomt.checkpoints.videomt_layouts import (LIGHTNING, OFFICIAL, OFFICIAL_VIT, UPDATER, clean_key,
                                              from_lightning_video, from_official_video, is_lightning_video)
from eomt.config import ModelConfig
from eomt.files import json_text, write_atomic
from eomt.models.video import VidEoMT

log = logging.getLogger(__name__)

KIND_KEY = "eomt_model"  # metadata entry naming the kind of model in our file
VIDEO_KIND = "videomt"
OPTIONS_KEY = "videomt"  # metadata entry: JSON of the video options
HF_MODEL_TYPE = "videomt"
HF_ARCHITECTURE = "VideomtForUniversalSegmentation"
# What the weights of an official release do not show, by its file name (tue-mps/videomt configs: the
# DINOv3 VIPSeg / VSPW models set NORM_QUERIES True and IMG_SIZE 1280; every other release uses the
# defaults, False and the size its position embedding or 640 gives).
OFFICIAL_OPTIONS: dict[str, dict[str, Any]] = {
    "vipsseg_dinov3_55.1_47.1.pth": {"norm_queries": True, "img_size": (1280, 1280)},
    "vspw_dinov3_94.4_64.0.pth": {"norm_queries": True, "img_size": (1280, 1280)},
}


def video_state_dict(model: VidEoMT) -> StateDict:
    """The file layout: the image model's keys plus `query_updater.weight` / `.bias` (views)."""
    sd = dict(model.eomt.state_dict())
    sd.update({UPDATER + k: v for k, v in model.query_updater.state_dict().items()})
    return sd


def save_video_model(model: VidEoMT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a VidEoMT to one safetensors file, atomically (layout and metadata: module docstring).

    `extra` must be JSON-serialisable (ValueError otherwise); `read_metadata(path)["extra"]` reads it.
    """
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"save_video_model extra: not JSON-serialisable ({e})") from None
    metadata = {
        "format": "pt", "eomt_format": native.FORMAT, "eomt_format_version": str(native.FORMAT_VERSION),
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True), "extra": extra_json,
        KIND_KEY: VIDEO_KIND, OPTIONS_KEY: json.dumps({"norm_queries": model.norm_queries}),
    }
    path = save_safetensors(video_state_dict(model), Path(path), metadata)
    log.info("saved VidEoMT %s (%s)", path, model.config.name or "custom config")
    return path


def is_video_metadata(metadata: dict[str, str]) -> bool:
    """True for the metadata of a file written by `save_video_model`."""
    return native.is_native(metadata) and metadata.get(KIND_KEY) == VIDEO_KIND


def is_video_source(source: str | Path) -> bool:
    """True for a local VidEoMT our loaders mark as such without reading its tensors: our file (its
    safetensors metadata), a transformers `VideomtForUniversalSegmentation` folder (its config.json)
    or a Lightning `.ckpt` of our video training (its key names, memory-mapped).
    Official release files are told apart only by `load_video_model` (they hold no marker)."""
    path = Path(source)
    if path.is_dir():
        return _hf_model_type(path) == HF_MODEL_TYPE
    if path.is_file() and path.suffix == ".ckpt":
        return is_lightning_video(path)
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return is_video_metadata(dict(f.metadata() or {}))
        except Exception:  # not readable as safetensors: the image loader names the problem
            return False
    return False


def load_video_model(
    source: str | Path,
    *,
    config: ModelConfig | None = None,
    norm_queries: bool | None = None,
    img_size: int | tuple[int, int] | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    trust_pickle: bool = False,
    new_updater: str = "init",
    **image_options: Any,
) -> VidEoMT:
    """A VidEoMT from a checkpoint file, folder or hub id (layouts: module docstring), in eval mode.

    `config` replaces the config the checkpoint carries or implies; `img_size` (int or (H, W))
    resamples a DINOv2 position embedding to that input size. `norm_queries` propagates the normed
    queries (the official DINOv3 VIPSeg / VSPW setting); None keeps the file's: our metadata, the
    `OFFICIAL_OPTIONS` of an official release by its file name, else False. An image checkpoint
    goes through `load_model(source, config=, img_size=, **image_options)` (preset=, num_classes=,
    backbone= ...); those options are refused for a video checkpoint (ValueError). Misfits raise
    `CheckpointError` naming the file (`strict=False`: logged and skipped). new_updater: what a
    propagation layer the checkpoint lacks starts as: "init" (PyTorch's default, as the official
    recipe starts training) or "zero" (no propagation: the image model frame by frame, its query
    index the track id; for evaluating an image model), said in a warning line.
    """
    if new_updater not in ("init", "zero"):
        raise ValueError(f"load_video_model: new_updater={new_updater!r}; expected 'init' or 'zero'")
    obj, meta, file = read_weights(source, trust_pickle)
    name = str(file)
    found = _read_video(obj, meta, file)
    if found is None:  # an image checkpoint: the whole image loader, then a fresh propagation layer
        image = load_model(source, config=config, img_size=img_size, map_location="cpu", strict=strict,
                           trust_pickle=trust_pickle, **image_options)
        model = VidEoMT.from_image(image, norm_queries=bool(norm_queries))
        _new_updater(model, new_updater, f"VidEoMT from the image model {name}")
        return model.to(map_location).eval()
    if image_options:
        raise ValueError(f"load_video_model: {', '.join(sorted(image_options))} apply to image checkpoints only; "
                         f"{name} is a VidEoMT checkpoint")
    kind, sd, stored_cfg, options = found
    size = _pair(img_size) or options.get("img_size")
    cfg = config or stored_cfg or with_label_space(infer_config(sd, name, img_size=size))
    if img_size is not None:
        cfg = cfg.replace(img_size=_pair(img_size))
    norm = options.get("norm_queries", False) if norm_queries is None else norm_queries
    model = VidEoMT(cfg, norm_queries=bool(norm))
    updater = {k[len(UPDATER):]: v for k, v in sd.items() if k.startswith(UPDATER)}
    image_sd = {k: v for k, v in sd.items() if not k.startswith(UPDATER)}
    stored_grid = stored_cfg.grid_size if stored_cfg else None
    load_into(model.eomt, image_sd, name=name, strict=strict, resample_pos_embed=img_size is not None,
              source_grid=stored_grid)
    if updater:
        _load_updater(model, updater, name, strict)
    else:
        _new_updater(model, new_updater, f"{name} holds no query_updater")
    log.info("loaded VidEoMT %s (%s): %s, %d classes, img_size %s, norm_queries %s%s", name, kind,
             cfg.name or "custom config", cfg.num_classes, tuple(cfg.img_size), model.norm_queries,
             "" if updater else "; query_updater new (image weights)")
    return model.to(map_location).eval()


def _read_video(
    obj: Any, meta: dict[str, str], file: Path
) -> tuple[str, StateDict, ModelConfig | None, dict[str, Any]] | None:
    """(kind, state dict in our layout, stored config, video options) of a video layout, else None."""
    name = str(file)
    if is_video_metadata(meta):
        cfg, _ = native.config_from_metadata(meta, name)
        try:
            options = json.loads(meta.get(OPTIONS_KEY) or "{}")
        except ValueError as e:
            raise CheckpointError(f"{name}: damaged VidEoMT metadata ({OPTIONS_KEY}: {e})") from None
        return "eomt VidEoMT checkpoint", dict(obj), cfg, options
    if native.is_native(meta):
        return None
    sd = as_state_dict(unwrap(obj), file)
    if any(k.startswith(LIGHTNING + UPDATER) for k in sd):  # our video training module's .ckpt
        return "eomt VidEoMT Lightning checkpoint", from_lightning_video(sd), native.config_from_lightning(obj, name), {}
    if any(clean_key(k).startswith(OFFICIAL + OFFICIAL_VIT) for k in sd):
        ours = from_official_video(sd)
        kind = "official VidEoMT release" if any(k.startswith(UPDATER) for k in ours) else "official VidEoMT segmenter"
        return kind, ours, None, OFFICIAL_OPTIONS.get(file.name, {})
    if hf.is_hf_layout(sd) and _hf_model_type(file.parent) == HF_MODEL_TYPE:
        d = json.loads((file.parent / "config.json").read_text())
        cfg = hf.config_from_hf({**d, "model_type": "eomt"}, str(file.parent / "config.json"))
        ours = hf.from_hf(sd, cfg.swiglu, name)
        ours.pop("embeddings.mask_token", None)  # masked-modelling token: unused for segmentation
        return "transformers VidEoMT", ours, cfg, {}
    return None


def _new_updater(model: VidEoMT, how: str, what: str) -> None:
    """Start the propagation layer as `how` says ("init" keeps PyTorch's default, "zero" zeroes it)."""
    if how == "zero":
        torch.nn.init.zeros_(model.query_updater.weight)
        torch.nn.init.zeros_(model.query_updater.bias)
        log.warning("%s: query propagation off (zeroed): the image model runs frame by frame, its query "
                    "index the track id", what)
    else:
        log.info("%s: query_updater new (PyTorch's default init)", what)


def _hf_model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _load_updater(model: VidEoMT, updater: StateDict, name: str, strict: bool) -> None:
    expected = model.query_updater.state_dict()
    bad = [f"query_updater.{k} expected {tuple(v.shape)} found {tuple(updater[k].shape) if k in updater else 'none'}"
           for k, v in expected.items() if k not in updater or updater[k].shape != v.shape]
    bad += [f"unexpected query_updater.{k}" for k in updater if k not in expected]
    if bad:
        message = f"{name}: the propagation layer does not fit the model: {', '.join(bad)}"
        if strict:
            raise CheckpointError(message)
        log.warning("%s; query_updater stays new (strict=False)", message)
        return
    model.query_updater.load_state_dict(updater)


def _pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def save_video_transformers(model: VidEoMT, folder: str | Path) -> Path:
    """Write `folder/config.json` + `folder/model.safetensors` for `VideomtForUniversalSegmentation`.

    transformers' VidEoMT has a DINOv2 backbone, a square input and propagates the queries before
    the final norm: another model raises `CheckpointError` naming the option (save it with
    `save_video_model`). transformers expects ImageNet-normalised pixels (our model normalises inside).
    """
    cfg = model.config
    if cfg.backbone != "dinov2":
        raise CheckpointError(f"model.backbone: transformers' VidEoMT has a DINOv2 backbone, found "
                              f"{cfg.backbone!r}; save this model with save_video_model")
    if model.norm_queries:
        raise CheckpointError("norm_queries: transformers' VidEoMT propagates the queries before the final norm, "
                              "found norm_queries=True; save this model with save_video_model")
    folder = Path(folder)
    config = hf.config_to_hf(cfg)  # EomtConfig fields: VideomtConfig has the same ones
    config.update(architectures=[HF_ARCHITECTURE], model_type=HF_MODEL_TYPE)
    weights = hf.to_hf(dict(model.eomt.state_dict()), cfg.swiglu)
    weights.update({UPDATER + k: v for k, v in model.query_updater.state_dict().items()})
    weights["embeddings.mask_token"] = torch.zeros(1, 1, cfg.embed_dim, dtype=model.eomt.q.weight.dtype)
    empty = torch.ones(cfg.num_classes + 1)
    empty[-1] = config["no_object_weight"]
    weights["criterion.empty_weight"] = empty  # the loss buffer, so that from_pretrained reports nothing missing
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(weights, folder / "model.safetensors", {"format": "pt"})
    write_atomic(folder / "config.json", json_text(config, indent=2, sort_keys=True))
    log.info("wrote transformers VidEoMT folder %s (%d tensors)", folder, len(weights))
    return folder
