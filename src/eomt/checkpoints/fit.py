"""Fit a state dict in our parameter layout onto an EoMT model, or say exactly what does not fit."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from eomt.checkpoints.io import CheckpointError, StateDict
from eomt.models.eomt import EoMT
from eomt.models.backbones.dinov2 import resize_pos_embed

log = logging.getLogger(__name__)

_SHOWN = 4  # keys listed per kind of misfit; the rest are counted
MIN_MATCHED = 0.9  # backbone weights must fill at least this share of the backbone's tensors


@dataclass
class BackboneReport:
    """Outcome of loading backbone weights: layout found, keys loaded, missing, unexpected, resampled."""

    layout: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)


def block_depth(sd: StateDict) -> int:
    """Blocks in backbone weights named `blocks.{i}.*` (0 when there are none)."""
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))]
    return 1 + max(blocks) if blocks else 0


def fill_backbone(model: EoMT, sd: StateDict, report: BackboneReport, family: str, name: str,
                  too_few: Callable[[int, int], str]) -> BackboneReport:
    """Load backbone weights `sd` (our names, without `backbone.`) into `model` and complete `report`.

    Raises `CheckpointError` naming `name` and the `family` ("DINOv2", "DINOv3") when tensors do
    not fit (the first shapes, and the width when the cls token tells it), when the block count
    differs from the config's depth, or when under `MIN_MATCHED` of the backbone's tensors are
    found (`too_few(found, expected)` gives that message).
    """
    expected = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    report.unexpected = [k for k in sd if k not in expected]
    report.missing = [k for k in expected if k not in sd]
    bad = [f"{k} expected {tuple(expected[k].shape)} found {tuple(v.shape)}"
           for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
    if bad:
        more = f" (+{len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
        cls = sd.get("cls_token", sd.get("patch_embed.cls_token"))
        width = f" (width {cls.shape[-1]}, the backbone's {model.config.embed_dim})" if cls is not None else ""
        raise CheckpointError(f"{name}: {family} weights do not fit the backbone{width}: "
                              f"{', '.join(bad[:_SHOWN])}{more}")
    depth = block_depth(sd)
    if depth and depth != model.config.depth:
        raise CheckpointError(
            f"{name}: {family} weights with {depth} blocks, the backbone has {model.config.depth} "
            f"(model.depth={model.config.depth}); use the {family} size the config names"
        )
    fitting = {"backbone." + k: v for k, v in sd.items() if k in expected}
    if len(fitting) < MIN_MATCHED * len(expected):
        raise CheckpointError(too_few(len(fitting), len(expected)))
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    return report


@dataclass
class FitReport:
    """What a load did: keys missing from / unexpected in the checkpoint, shape misfits, resamples."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line: counts and the first few keys of each kind of misfit."""
        parts = []
        if self.mismatched:
            shapes = [f"{k} expected {_shape(e)} found {_shape(f)}" for k, e, f in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {_first(shapes)}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_first(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_first(self.unexpected)}")
        return "; ".join(parts)


def _shape(s: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in s) + ")"


def _first(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def square_grid(num_tokens: int) -> tuple[int, int] | None:
    """(g, g) when `num_tokens` is a perfect square g*g, else None."""
    g = math.isqrt(num_tokens)
    return (g, g) if g * g == num_tokens else None


def token_grid(
    num_tokens: int,
    *,
    known: tuple[tuple[int, int] | None, ...] = (),
    wanted: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """The (h, w) grid a stored position embedding of `num_tokens` tokens was laid out on.

    In order: the first `known` grid (from a config that describes the checkpoint) with h*w equal
    to the count; the square grid; `wanted` (the grid of the size asked for) when it has that
    count. None when nothing fits: the layout cannot be told from the count alone.
    """
    for grid in known:
        if grid is not None and grid[0] * grid[1] == num_tokens:
            return tuple(grid)  # type: ignore[return-value]
    square = square_grid(num_tokens)
    if square is not None:
        if wanted is not None and tuple(wanted) != square and wanted[0] * wanted[1] == num_tokens:
            log.warning(
                "backbone.pos_embed of %d tokens: taken as the square grid %s, not %s; pass config= "
                "with the size it was trained at if it was not square", num_tokens, square, tuple(wanted),
            )
        return square
    if wanted is not None and wanted[0] * wanted[1] == num_tokens:
        return tuple(wanted)  # type: ignore[return-value]
    return None


def grid_examples(num_tokens: int, patch: int, limit: int = 3) -> str:
    """Image sizes (H, W) whose patch grid has `num_tokens` tokens, most square first: "(64, 96), ..."."""
    pairs = [(h, num_tokens // h) for h in range(1, num_tokens + 1) if num_tokens % h == 0]
    pairs.sort(key=lambda hw: (max(hw) / min(hw), hw[0] > hw[1]))
    return ", ".join(f"({h * patch}, {w * patch})" for h, w in pairs[:limit])


def plan_fit(
    model: EoMT,
    state_dict: StateDict,
    *,
    name: str,
    load_class_head: bool = True,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
    skip: tuple[str, ...] = (),
) -> tuple[FitReport, StateDict]:
    """What `state_dict` (our key layout) would change in `model`, without changing it.

    Returns the report and the tensors that fit (the position embedding already resized when
    `resample_pos_embed`; `source_grid` is its stored (h, w), square when None). Keys starting
    with an entry of `skip` (and the class head when not `load_class_head`) are left out and
    listed in `report.skipped`.
    """
    expected = model.state_dict()
    report = FitReport()
    skip = skip + (() if load_class_head else ("class_head.",))
    report.skipped = [k for k in expected if k.startswith(skip)] if skip else []
    sd = {k: v for k, v in state_dict.items() if not (skip and k.startswith(skip))}
    pos = sd.get("backbone.pos_embed")
    want = expected.get("backbone.pos_embed")  # None for a RoPE backbone (DINOv3)
    other_grid = pos is not None and want is not None and pos.ndim == 3 and pos.shape[1:] != want.shape[1:]
    other_grid = other_grid and pos.shape[2] == want.shape[2]  # same width, other token count
    if resample_pos_embed and other_grid:
        grid = source_grid or square_grid(pos.shape[1])
        if grid is None or grid[0] * grid[1] != pos.shape[1]:
            raise CheckpointError(
                f"{name}: cannot resample backbone.pos_embed of {pos.shape[1]} tokens to the grid "
                f"{tuple(model.backbone.grid_size)}: the stored grid is not square and no config names it "
                f"(trained at one of {grid_examples(pos.shape[1], model.config.patch_size)}, ...?)"
            )
        sd["backbone.pos_embed"] = resize_pos_embed(pos, grid, model.backbone.grid_size)
        report.resampled.append(f"backbone.pos_embed {tuple(grid)} -> {tuple(model.backbone.grid_size)}")
    report.missing = [k for k in expected if k not in sd and k not in report.skipped]
    report.unexpected = [k for k in sd if k not in expected]
    report.mismatched = [
        (k, tuple(expected[k].shape), tuple(v.shape))
        for k, v in sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    bad = {k for k, _, _ in report.mismatched}
    return report, {k: v for k, v in sd.items() if k in expected and k not in bad}


def load_into(
    model: EoMT,
    state_dict: StateDict,
    *,
    name: str,
    strict: bool = True,
    load_class_head: bool = True,
    resample_pos_embed: bool = False,
    source_grid: tuple[int, int] | None = None,
) -> FitReport:
    """Copy `state_dict` (our key layout) into `model`.

    The class head is skipped when `load_class_head` is False (it keeps its fresh initialisation).
    A position embedding of another grid is resized bicubically when `resample_pos_embed`
    (`source_grid` is its stored (h, w); square when None). With `strict`, any missing or
    unexpected key or shape misfit raises one `CheckpointError` listing them; otherwise they are
    logged and skipped. The caller reports resamples and skips (`FitReport`).
    """
    report, fitting = plan_fit(
        model, state_dict, name=name, load_class_head=load_class_head,
        resample_pos_embed=resample_pos_embed, source_grid=source_grid,
    )
    if not report.ok:
        message = f"{name} does not fit the model ({model_name(model)}): {report.describe()}{_hints(report)}"
        if strict:
            raise CheckpointError(message)
        log.warning("%s; loading the rest (strict=False)", message)
    model.load_state_dict(fitting, strict=False)  # the post-hook re-syncs the masked-attention flags
    return report


def model_name(model: EoMT) -> str:
    """One line: the model's name and the shapes that decide what loads into it."""
    c = model.config
    label = f"{c.name}: " if c.name else ""
    return (
        f"{label}D={c.embed_dim}, depth={c.depth}, img_size={tuple(c.img_size)}, "
        f"queries={c.num_queries}, classes={c.num_classes}"
    )


def _hints(report: FitReport) -> str:
    keys = {k for k, _, _ in report.mismatched}
    if keys - {"class_head.weight", "class_head.bias", "backbone.pos_embed"}:
        return " (hint: the checkpoint has another architecture; load it without preset=/config= to use its own)"
    hints = []
    if "class_head.weight" in keys or "class_head.bias" in keys:
        hints.append("pass load_class_head=False or num_classes=N to fine-tune on another label space")
    if "backbone.pos_embed" in keys:
        hints.append("pass img_size=(H, W) to resample the position embedding")
    return f" (hint: {'; '.join(hints)})" if hints else ""
