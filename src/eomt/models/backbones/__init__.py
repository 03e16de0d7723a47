"""The backbone seam: what EoMT needs from a ViT, and the registry that builds one from the config.

EoMT runs a backbone as embed -> blocks -> norm and joins its queries in front of the tokens
before block L - L2 (`num_blocks`). A backbone implements `Backbone`:

- `embed(images)`: normalised images (B, 3, H, W) -> tokens (B, P + N, D) laid out
  [prefix tokens (P = `num_prefix_tokens`: cls, registers) | patches (N = h * w, row-major)],
  and the token grid (h, w). Patches are always the last N tokens; whatever EoMT adds (queries)
  goes in front, so a block finds the patches at x[:, -N:] whatever came before them.
- `block_inputs(grid)`: per-forward position inputs handed to every block as keyword arguments,
  computed once per forward ({} for a learned position embedding; e.g. rope cos / sin for a RoPE
  backbone, which rotates the trailing N tokens only).
- `blocks`: each called as `block(x, attn_mask, **block_inputs)`, x (B, T, D); attn_mask boolean
  (B, 1, T, T) or (B, heads, T, T), True where attention is allowed, or None (plain attention).
- `norm`: the final norm, also applied to the intermediate predictions of masked attention.
- `dtype`: the weights' dtype (the images are cast to it); `patch_size`, `grid_size` (the
  stored (h, w) of the position parameters).

Backbones are chosen by name (`ModelConfig.backbone`, a key of `BACKBONES`; "dinov2" by default,
and for every config stored before the field existed); the parameters of a backbone live
under `backbone.` in the model's state dict, in the family's own (official/timm) names.
"""

from __future__ import annotations

import difflib
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from eomt.config import ConfigError, ModelConfig
from eomt.models.backbones.dinov2 import DINOv2
from eomt.models.backbones.dinov3 import DINOv3

@runtime_checkable
class Backbone(Protocol):
    """What EoMT needs from a ViT backbone (see the module docstring for the token layout)."""

    num_prefix_tokens: int
    patch_size: int
    grid_size: tuple[int, int]
    blocks: nn.ModuleList
    norm: nn.Module

    @property
    def dtype(self) -> torch.dtype: ...

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]: ...

    def block_inputs(self, grid: tuple[int, int]) -> dict[str, Tensor]: ...


# Backbone families by name: each builds an `nn.Module` implementing `Backbone` from a ModelConfig.
BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {"dinov2": DINOv2, "dinov3": DINOv3}


def build_backbone(config: ModelConfig) -> nn.Module:
    """The backbone `config.backbone` names, built from the config.

    Raises `ConfigError` (a ValueError) for a name not in `BACKBONES`, with the closest one.
    """
    name = config.backbone
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.backbone: unknown backbone {name!r} (known: {', '.join(BACKBONES)}){hint}")
    return BACKBONES[name](config)


__all__ = ["BACKBONES", "Backbone", "DINOv2", "DINOv3", "build_backbone"]
