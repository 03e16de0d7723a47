"""Training schedules as pure functions of progress: LR warm-up + poly decay, layer-wise LR
decay (LLRD) parameter groups, and the mask-annealing probabilities.

All follow the official EoMT code. Two deliberate differences, both at the edges: past
`total_steps` the poly factors stay at 0 (the official formula would raise a negative number to
a fractional power), and annealing windows are written as fractions of training so that one rule
serves every schedule length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from torch import nn

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def _poly(step: float, start: float, end: float, power: float) -> float:
    """(1 - (step - start) / (end - start)) ** power, clamped to [0, 1] progress."""
    progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
    return (1.0 - progress) ** power


def two_stage_warmup_poly(
    step: int,
    total_steps: int,
    warmup: tuple[int, int] = (500, 1000),
    power: float = 0.9,
    is_backbone: bool = False,
) -> float:
    """LR multiplier (of a group's base LR) at optimizer step `step` (0-based).

    Non-backbone groups: linear warm-up 0 -> 1 over `warmup[0]` steps, then poly decay to 0 at
    `total_steps`. Backbone groups: frozen (0) for `warmup[0]` steps, linear warm-up over
    `warmup[1]` steps, then poly decay to 0 at `total_steps`.
    """
    head_warmup, backbone_warmup = warmup
    if not is_backbone:
        if head_warmup > 0 and step < head_warmup:
            return step / head_warmup
        return _poly(step, head_warmup, total_steps, power)
    if step < head_warmup:
        return 0.0
    if step < head_warmup + backbone_warmup:
        return (step - head_warmup) / backbone_warmup
    return _poly(step, head_warmup + backbone_warmup, total_steps, power)


def warmup_poly_lambdas(
    param_groups: Sequence[dict[str, Any]],
    total_steps: int,
    warmup: tuple[int, int] = (500, 1000),
    power: float = 0.9,
) -> list[Callable[[int], float]]:
    """One `two_stage_warmup_poly` multiplier per group (reading its `is_backbone`), for LambdaLR."""

    def make(is_backbone: bool) -> Callable[[int], float]:
        return lambda step: two_stage_warmup_poly(step, total_steps, warmup, power, is_backbone)

    return [make(bool(g.get("is_backbone", False))) for g in param_groups]


def llrd_lr(
    name: str,
    base_lr: float,
    *,
    depth: int,
    num_blocks_l2: int,
    llrd: float = 0.8,
    llrd_l2_enabled: bool = True,
    backbone_prefix: str = "backbone.",
) -> float:
    """Learning rate of parameter `name` under the official layer-wise decay.

    Backbone block i: base * llrd ** (depth - 1 - i), undecayed (base) for the last
    `num_blocks_l2` blocks when `llrd_l2_enabled` is False. Other backbone parameters
    (patch_embed, pos_embed, cls_token, reg_token) share block 0's LR, except the final
    `backbone.norm` (base). Everything outside the backbone: base.
    """
    if not name.startswith(backbone_prefix):
        return base_lr
    rest = name[len(backbone_prefix):]
    if rest.startswith("norm."):
        return base_lr
    match = _BLOCK.match(rest)
    if match is None:  # embeddings and tokens
        return base_lr * llrd ** (depth - 1)
    block = int(match.group(1))
    if not 0 <= block < depth:
        raise ValueError(f"parameter {name!r}: block index {block} outside the model depth {depth}")
    if not llrd_l2_enabled and block >= depth - num_blocks_l2:
        return base_lr
    return base_lr * llrd ** (depth - 1 - block)


def llrd_param_groups(
    model: nn.Module,
    base_lr: float,
    *,
    depth: int,
    num_blocks_l2: int,
    llrd: float = 0.8,
    weight_decay: float = 0.05,
    llrd_l2_enabled: bool = True,
    backbone_prefix: str = "backbone.",
) -> list[dict[str, Any]]:
    """AdamW parameter groups with the official layer-wise LR decay (see `llrd_lr`).

    Parameters sharing an LR and backbone membership form one group; each group carries `lr`,
    `base_lr`, `is_backbone`, `weight_decay` (the official applies it to every parameter, norms
    and tokens included) and `names`. Backbone groups come first. Frozen parameters are skipped.
    """
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = llrd_lr(
            name,
            base_lr,
            depth=depth,
            num_blocks_l2=num_blocks_l2,
            llrd=llrd,
            llrd_l2_enabled=llrd_l2_enabled,
            backbone_prefix=backbone_prefix,
        )
        key = (name.startswith(backbone_prefix), lr)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr": lr,
                "base_lr": lr,
                "is_backbone": key[0],
                "weight_decay": weight_decay,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return sorted(groups.values(), key=lambda g: (not g["is_backbone"], g["lr"]))


def default_annealing_windows(num_blocks: int) -> list[tuple[Fraction, Fraction]]:
    """Official mask-annealing windows of the query blocks, as fractions of training.

    Every window lasts 1/6 of training; the starts are evenly spaced from 1/6 to 4/6, so the
    last 1/6 is unmasked. This reproduces every official DINOv2 config: 4 blocks [k+1, k+2]/6,
    3 blocks starts [1, 2.5, 4]/6, 5 blocks [1, 1.75, 2.5, 3.25, 4]/6. One block: [1/6, 2/6].
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks: expected >= 1, got {num_blocks}")
    sixth = Fraction(1, 6)
    if num_blocks == 1:
        return [(sixth, 2 * sixth)]
    starts = [sixth + Fraction(3 * k, num_blocks - 1) * sixth for k in range(num_blocks)]
    return [(s, s + sixth) for s in starts]


def annealing_steps(
    total_steps: int,
    num_blocks: int,
    windows: Sequence[tuple[float, float]] | None = None,
) -> list[tuple[int, int]]:
    """Annealing windows in absolute steps (start, end), rounded half up.

    `windows`: (start, end) fractions of `total_steps` per block; default
    `default_annealing_windows(num_blocks)`.
    """
    if windows is None:
        windows = default_annealing_windows(num_blocks)
    if len(windows) != num_blocks:
        raise ValueError(f"annealing windows: expected {num_blocks} (one per block), got {len(windows)}")
    steps = []
    for i, (start, end) in enumerate(windows):
        if not 0 <= start <= end:
            raise ValueError(f"annealing window {i}: expected 0 <= start <= end, got ({start}, {end})")
        # Exact rational arithmetic, so e.g. 1.75/6 * 88692 = 25868.5 rounds to 25869 as in the configs.
        steps.append(
            tuple(math.floor(Fraction(f) * total_steps + Fraction(1, 2)) for f in (start, end))
        )
    return steps  # type: ignore[return-value]


def windows_from_steps(
    starts: Sequence[int], ends: Sequence[int], total_steps: int
) -> list[tuple[Fraction, Fraction]]:
    """Annealing windows given in absolute steps (the official configs'
    `attn_mask_annealing_{start,end}_steps`) as exact fractions of `total_steps`, the form of
    `TrainConfig.anneal_windows`; `annealing_steps(total_steps, ...)` gives the steps back.

    E.g. the official DINOv3 L-640 windows (first block 0 -> 3000, during the warm-up) over 88692
    steps: starts [0, 29564, 44346, 59128], ends [3000, 44346, 59128, 73910].
    Raises ValueError when the lists differ in length, total_steps < 1 or a window is not
    0 <= start <= end.
    """
    if len(starts) != len(ends) or total_steps < 1:
        raise ValueError(f"windows: {len(starts)} starts, {len(ends)} ends over {total_steps} steps")
    windows = [(Fraction(s, total_steps), Fraction(e, total_steps)) for s, e in zip(starts, ends)]
    for i, (start, end) in enumerate(windows):
        if not 0 <= start <= end:
            raise ValueError(f"annealing window {i}: expected 0 <= start <= end, got ({starts[i]}, {ends[i]})")
    return windows


def mask_annealing_probs(
    step: int,
    total_steps: int,
    num_blocks: int,
    windows: Sequence[tuple[float, float]] | None = None,
    power: float = 0.9,
) -> list[float]:
    """Probability of keeping the attention mask in each query block at `step`.

    P = 1 before the block's window, (1 - (step - start) / (end - start)) ** power inside it,
    0 from its end on. Windows as in `annealing_steps`.
    """
    probs = []
    for start, end in annealing_steps(total_steps, num_blocks, windows):
        if step < start:
            probs.append(1.0)
        elif step >= end:
            probs.append(0.0)
        else:
            probs.append((1.0 - (step - start) / (end - start)) ** power)
    return probs
