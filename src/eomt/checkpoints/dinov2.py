"""DINOv2 backbone weights (timm or torch-hub layout) into an EoMT model, for training.

timm (`vit_*_patch14_reg4_dinov2`, `no_embed_class=True`): `cls_token`, `reg_token`, `pos_embed`
(1, 37*37, D) for patches only, packed SwiGLU `mlp.fc1`/`mlp.fc2` for giant.
torch-hub (facebookresearch/dinov2): `cls_token`, `register_tokens`, `mask_token`, `pos_embed`
(1, 1 + 37*37, D) whose first entry belongs to the cls token, `mlp.w12`/`mlp.w3` for giant
(w12 packed like timm's fc1: silu(x1) * x2), blocks possibly chunked as `blocks.<chunk>.<i>.`.
Patch 14 kernels are resampled to the model's patch size with the FlexiViT pseudo-inverse, and the
position embedding is resized bicubically to the model's grid.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from eomt.checkpoints.fit import BackboneReport, fill_backbone, square_grid
from eomt.checkpoints.io import CheckpointError, StateDict, as_state_dict
from eomt.checkpoints.source import read_weights
from eomt.models.eomt import EoMT
from eomt.models.backbones.dinov2 import resize_pos_embed

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "teacher.backbone.", "student.backbone.", "encoder.backbone.", "backbone.")


def resample_patch_embed(weight: Tensor, new_size: tuple[int, int]) -> Tensor:
    """Resize conv kernels (O, I, h, w) -> (O, I, h', w') with the FlexiViT pseudo-inverse.

    With B the bicubic (antialiased) resize as a matrix (h'w' x hw), the new kernel is
    pinv(B^T) w: for any patch x, <resize(x), w'> = <x, B^T w'> = <x, w> whenever B^T has full row
    rank (upsampling), so the token of an upsampled patch equals the old token.
    """
    old = tuple(weight.shape[-2:])
    if old == tuple(new_size):
        return weight
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float64).reshape(n_old, 1, *old)  # one-hot kernels
    resized = F.interpolate(basis, size=new_size, mode="bicubic", antialias=True, align_corners=False)
    resize_mat = resized.reshape(n_old, -1).T  # (h'w', hw): column k = resize(e_k)
    pinv = torch.linalg.pinv(resize_mat.T)  # (h'w', hw)
    flat = weight.reshape(-1, n_old).double()  # (O*I, hw)
    out = flat @ pinv.T  # (O*I, h'w')
    return out.reshape(*weight.shape[:2], *new_size).to(weight.dtype)  # (O, I, h', w')


def load_dinov2_backbone(
    model: EoMT, source: str | Path | Mapping[str, Tensor], *, trust_pickle: bool = False
) -> BackboneReport:
    """Load DINOv2 weights (a file, folder, hub id or state dict) into `model.backbone`.

    Heads and queries keep their initialisation. Weights of another width or depth, or that match
    under `fit.MIN_MATCHED` of the backbone's tensors, raise a `CheckpointError` naming the shapes;
    other missing/unexpected keys are returned (and logged).
    """
    name, sd = _read(source, trust_pickle)
    report = fit_dinov2(model, sd, name)
    log.info("%s: DINOv2 %s layout, %d backbone tensors loaded%s", name, report.layout, report.loaded,
             f"; resampled {', '.join(report.resampled)}" if report.resampled else "")
    if report.missing:
        log.warning("%s: %d backbone tensors not in the weights (kept initialised): %s",
                    name, len(report.missing), ", ".join(report.missing[:4]))
    if report.unexpected:
        log.warning("%s: %d tensors ignored: %s", name, len(report.unexpected), ", ".join(report.unexpected[:4]))
    return report




def looks_like_dinov2(sd: Mapping[str, Tensor]) -> bool:
    """True for a ViT state dict with DINOv2 names (timm or torch-hub) and no EoMT heads."""
    keys = list(_strip_prefix(dict(sd)))
    return "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys) and not any(
        "class_head" in k for k in keys
    )


def unwrap(obj: Any) -> Any:
    """The weights inside a DINOv2 training checkpoint (`{"teacher": {...}}`, `{"model": {...}}`)."""
    for key in ("teacher", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and "state_dict" not in obj:
            obj = obj[key]
    return obj


def fit_dinov2(model: EoMT, source_sd: Mapping[str, Tensor], name: str) -> BackboneReport:
    """Copy DINOv2 weights (timm or torch-hub names) into `model.backbone`; log nothing.

    Raises `CheckpointError` (naming `name`) for another backbone family, another width or depth
    (the shapes / block counts), or when under `fit.MIN_MATCHED` of the backbone's tensors are found.
    """
    if model.config.backbone != "dinov2":
        raise CheckpointError(f"{name}: DINOv2 weights for a {model.config.backbone!r} backbone (model.backbone)")
    sd = _strip_prefix(dict(source_sd))
    hub_layout = "register_tokens" in sd or "mask_token" in sd or any(".mlp.w12." in k for k in sd)
    pos = sd.get("pos_embed")
    if pos is not None and square_grid(pos.shape[1]) is None and square_grid(pos.shape[1] - 1) is not None:
        hub_layout = True  # cls position included
    report = BackboneReport(layout="torch-hub" if hub_layout else "timm")
    if hub_layout:
        sd = _from_torch_hub(sd)
    sd = _adapt(sd, model, report, name)
    sample = ", ".join(list(source_sd)[:3])
    return fill_backbone(model, sd, report, "DINOv2", name, lambda found, expected: (
        f"{name}: DINOv2 weights expected (backbone tensors such as blocks.0.attn.qkv.weight), but only "
        f"{found} of the backbone's {expected} tensors were found (keys such as {sample})"))


def _read(source: str | Path | Mapping[str, Tensor], trust_pickle: bool) -> tuple[str, StateDict]:
    if isinstance(source, Mapping):
        return "DINOv2 state dict", dict(source)
    obj, _, file = read_weights(source, trust_pickle)
    return str(file), as_state_dict(unwrap(obj), file)


def _strip_prefix(sd: StateDict) -> StateDict:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _from_torch_hub(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if k == "mask_token":
            continue  # iBOT masking token, unused downstream
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)  # chunked blocks: blocks.<chunk>.<i>.
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out["reg_token" if k == "register_tokens" else k] = v
    pos = out.get("pos_embed")
    if pos is not None and square_grid(pos.shape[1]) is None and square_grid(pos.shape[1] - 1) is not None:
        # torch-hub adds pos_embed[:, 0] to the cls token; fold it in, keep patch positions only.
        if "cls_token" in out:
            out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def _adapt(sd: StateDict, model: EoMT, report: BackboneReport, name: str) -> StateDict:
    """Patch kernels to the model's patch size, position embedding to its grid."""
    p = model.config.patch_size
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4 and tuple(w.shape[-2:]) != (p, p):
        sd["patch_embed.proj.weight"] = resample_patch_embed(w, (p, p))
        report.resampled.append(f"patch_embed {tuple(w.shape[-2:])} -> {(p, p)}")
    pos = sd.get("pos_embed")
    grid = model.backbone.grid_size
    if pos is not None and pos.ndim == 3 and pos.shape[1] != grid[0] * grid[1]:
        old = square_grid(pos.shape[1])
        if old is None:
            raise CheckpointError(f"{name}: DINOv2 pos_embed of {pos.shape[1]} tokens is not a square grid")
        sd["pos_embed"] = resize_pos_embed(pos, old, grid)
        report.resampled.append(f"pos_embed {old} -> {grid}")
    return sd
