"""Fit a state dict in our parameter layout onto an EoMT model, or say exactly what does not fit."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from eomt.checkpoints.io import CheckpointError, StateDict
from eomt.models.eomt import EoMT
from eomt.models.vit import resize_pos_embed

log = logging.getLogger(__name__)

_SHOWN = 4  # keys listed per kind of misfit; the rest are counted


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
    (`source_grid` is its (h, w); square when None). With `strict`, any missing or unexpected key
    or shape misfit raises one `CheckpointError` listing them; otherwise they are logged and skipped.
    """
    expected = model.state_dict()
    sd = dict(state_dict)
    report = FitReport()
    if not load_class_head:
        report.skipped = [k for k in expected if k.startswith("class_head.")]
        for k in [k for k in sd if k.startswith("class_head.")]:
            del sd[k]
    pos = sd.get("backbone.pos_embed")
    want = expected["backbone.pos_embed"]
    other_grid = pos is not None and pos.ndim == 3 and pos.shape[1:] != want.shape[1:]
    other_grid = other_grid and pos.shape[2] == want.shape[2]  # same width, other token count
    if resample_pos_embed and other_grid:
        grid = source_grid or square_grid(pos.shape[1])
        if grid is None or grid[0] * grid[1] != pos.shape[1]:
            raise CheckpointError(
                f"{name}: cannot resample backbone.pos_embed of {pos.shape[1]} tokens (not a known grid)"
            )
        sd["backbone.pos_embed"] = resize_pos_embed(pos, grid, model.backbone.grid_size)
        report.resampled.append(f"backbone.pos_embed {grid} -> {model.backbone.grid_size}")
    report.missing = [k for k in expected if k not in sd and k not in report.skipped]
    report.unexpected = [k for k in sd if k not in expected]
    report.mismatched = [
        (k, tuple(expected[k].shape), tuple(v.shape))
        for k, v in sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if not report.ok:
        message = f"{name} does not fit the model ({_model_name(model)}): {report.describe()}{_hints(report)}"
        if strict:
            raise CheckpointError(message)
        log.warning("%s; loading the rest (strict=False)", message)
    bad = {k for k, _, _ in report.mismatched}
    fitting = {k: v for k, v in sd.items() if k in expected and k not in bad}
    model.load_state_dict(fitting, strict=False)  # the post-hook re-syncs the masked-attention flags
    for line in report.resampled:
        log.info("%s: resampled %s", name, line)
    if report.skipped:
        log.info("%s: class head not loaded (fresh, %d outputs)", name, model.config.num_classes + 1)
    return report


def _model_name(model: EoMT) -> str:
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
