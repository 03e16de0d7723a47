"""Rebuild a `ModelConfig` from tensor shapes, and match it to the paper presets.

A state dict fixes everything structural (width, depth, patch, registers, queries, classes, grid,
number of query blocks); the head count is not visible in any shape, so it comes from the DINOv2
size table (head dim 64). Class names, stuff ids and the task come from the paper preset whose
label space has the same class and query counts.
"""

from __future__ import annotations

import logging
import re

from eomt.checkpoints.fit import grid_examples, token_grid
from eomt.checkpoints.io import CheckpointError, StateDict
from eomt.checkpoints.official_dinov3 import infer_dinov3_config, is_dinov3_eomt
from eomt.config import PRESET_ALIASES, PRESET_NAMES, SIZES, ModelConfig, preset

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.")


def infer_config(sd: StateDict, name: str, img_size: tuple[int, int] | None = None) -> ModelConfig:
    """A generic `ModelConfig` that fits the shapes of `sd` (our key layout).

    The stored token grid is square when the position embedding's token count is a square;
    otherwise `img_size` (H, W) must name it (its patch grid has that count). A count that neither
    explains raises `CheckpointError` with image sizes that would. A DINOv3 state dict (RoPE: no
    position table, so no grid in the weights) goes to `official_dinov3.infer_dinov3_config`, whose
    input size is `img_size` or 640.
    """
    if is_dinov3_eomt(sd):
        return infer_dinov3_config(sd, name, img_size)
    needed = ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight", "q.weight",
              "class_head.weight", "backbone.blocks.0.mlp.fc1.weight", "backbone.blocks.0.mlp.fc2.weight")
    absent = [k for k in needed if k not in sd]
    if absent:
        raise CheckpointError(f"{name}: cannot infer the model from the weights, missing {', '.join(absent)}")
    d = sd["backbone.cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    patch = sd["backbone.patch_embed.proj.weight"].shape[-1]
    n = sd["backbone.pos_embed"].shape[1]
    wanted = (img_size[0] // patch, img_size[1] // patch) if img_size is not None else None
    grid = token_grid(n, wanted=wanted)
    if grid is None:
        given = f" nor the {wanted[0]}x{wanted[1]} grid of img_size={tuple(img_size)}" if wanted else ""
        raise CheckpointError(
            f"{name}: backbone.pos_embed has {n} tokens, not a square grid{given}; pass img_size=(H, W) "
            f"of the size it was trained at (one of {grid_examples(n, patch)}, ...) or config="
        )
    fc1 = sd["backbone.blocks.0.mlp.fc1.weight"].shape[0]
    hidden = sd["backbone.blocks.0.mlp.fc2.weight"].shape[1]
    swiglu = fc1 == 2 * hidden
    size = next((s for s in SIZES.values() if s["embed_dim"] == d and s["depth"] == depth), None)
    size = size or next((s for s in SIZES.values() if s["embed_dim"] == d), None)
    heads = size["num_heads"] if size else max(1, d // 64)
    probs = sd.get("attn_mask_probs")
    num_blocks = probs.numel() if probs is not None else (size["num_blocks"] if size else min(4, depth))
    reg = sd.get("backbone.reg_token")
    fields = dict(
        embed_dim=d, depth=depth, num_heads=heads, swiglu=swiglu, patch_size=patch,
        img_size=(grid[0] * patch, grid[1] * patch),
        num_register_tokens=reg.shape[1] if reg is not None else 0,
        num_queries=sd["q.weight"].shape[0], num_blocks=num_blocks,
        num_classes=sd["class_head.weight"].shape[0] - 1,
        mlp_ratio=_mlp_ratio(d, hidden, swiglu, name),
    )
    if size is None:
        log.warning("%s: embed dim %d matches no DINOv2 size; assuming %d heads", name, d, heads)
    return ModelConfig(**fields)


def _mlp_ratio(d: int, hidden: int, swiglu: bool, name: str) -> float:
    if not swiglu:
        return hidden / d
    # SwiGLU hidden = round_up8(int(D * r * 2/3)); r = 4 for DINOv2 giant, else solve and verify.
    for ratio in (4.0, hidden * 1.5 / d):
        if ModelConfig(embed_dim=d, num_heads=1, swiglu=True, mlp_ratio=ratio).mlp_hidden == hidden:
            return ratio
    raise CheckpointError(f"{name}: SwiGLU hidden size {hidden} for width {d} matches no mlp_ratio")


def with_label_space(cfg: ModelConfig, hint: str | None = None) -> ModelConfig:
    """`cfg` with name, task, class names and stuff ids of the matching paper preset, if any.

    An exact architecture match names the preset (`hint`, a preset name from a hub repo, wins when
    it matches); otherwise a preset with the same class and query counts gives only the label space.
    Names already in `cfg` are kept.
    """
    same_space = [p for p in _presets() if (p.num_classes, p.num_queries) == (cfg.num_classes, cfg.num_queries)]
    exact = [p for p in same_space if _architecture(p) == _architecture(cfg)]
    chosen = next((p for p in exact if p.name == hint), exact[0] if exact else None)
    space = chosen or (same_space[0] if same_space else None)
    if space is None:
        log.info("no paper preset has %d classes and %d queries: generic config", cfg.num_classes, cfg.num_queries)
        return cfg
    changes: dict = dict(task=space.task, stuff_classes=space.stuff_classes)
    if not cfg.class_names:
        changes["class_names"] = space.class_names
    if chosen is not None and not cfg.name:
        changes["name"] = chosen.name
    log.info(
        "label space of %s (%s, %d classes)%s", space.name, space.task, space.num_classes,
        "" if chosen else "; architecture differs from every preset",
    )
    return cfg.replace(**changes)


def preset_from_repo(repo_id: str) -> str | None:
    """The preset name a hub repo id ends with (`tue-mps/coco_panoptic_eomt_large_640`, a DINOv3 row
    `..._dinov3` or its hub spelling in `PRESET_ALIASES`), if any."""
    base = repo_id.rstrip("/").split("/")[-1]
    base = PRESET_ALIASES.get(base, base)
    return base if base in PRESET_NAMES else None


def _architecture(c: ModelConfig) -> tuple:
    return (c.backbone, c.embed_dim, c.depth, c.swiglu, c.gated_mlp, c.patch_size, tuple(c.img_size),
            c.num_register_tokens, c.num_queries, c.num_blocks, c.num_classes)


def _presets() -> list[ModelConfig]:
    return [preset(n) for n in PRESET_NAMES]
