"""`init_from`: start a network from pretrained weights, whatever kind of file they are in.

The file's kind is recognised first (any EoMT layout `load_model` reads, or DINOv2 backbone
weights), then the network takes what fits it:
- an EoMT checkpoint of the same class count: everything (the class head unless told not to);
- an EoMT checkpoint of another class count: everything but the class head, which stays new;
- DINOv2 weights: the backbone; heads and queries stay new.
- DINOv3 weights (Meta, transformers or timm layout): the backbone of a DINOv3 network, likewise.
  An official DINOv3 release whose backbone holds deltas is refused (its base is needed first).
Anything else is an error naming the file, what was expected and what was found: a file of no
known kind, another architecture (the shapes), or weights that fill too little of the network.
One log line says what was loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from eomt.checkpoints.dinov2 import fit_dinov2
from eomt.checkpoints.dinov3 import fit_dinov3
from eomt.checkpoints.official_dinov3 import missing_base_error
from eomt.checkpoints.fit import model_name, plan_fit
from eomt.checkpoints.io import CheckpointError
from eomt.checkpoints.loader import Source, read_source
from eomt.models.eomt import EoMT

log = logging.getLogger(__name__)

# Annealing state, not a weight: the training schedule sets it from the first step on.
_SCHEDULE_STATE = ("attn_mask_probs",)


@dataclass
class InitReport:
    """What `init_from` loaded: the file, its kind, tensor counts and what stays freshly initialised."""

    source: str
    kind: str
    family: str  # "eomt", "dinov2" or "dinov3"
    loaded: int
    total: int  # tensors of the network's state dict that a file could fill
    new: list[str] = field(default_factory=list)  # tensors that keep their initialisation
    class_head: str = "loaded"  # or why it is new
    resampled: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The one log line."""
        if self.family in ("dinov2", "dinov3"):
            text = (f"initialised the backbone from {self.source} ({self.kind}): {self.loaded} of {self.total} "
                    "tensors; heads and queries new")
        elif self.class_head == "loaded":
            text = f"initialised from {self.source} ({self.kind}): all {self.loaded} tensors, class head included"
        else:
            text = (f"initialised from {self.source} ({self.kind}): {self.loaded} of {self.total} tensors, all "
                    f"but the class head, which is new ({self.class_head})")
        if self.resampled:
            text += f"; resampled {', '.join(self.resampled)}"
        for note in self.notes:
            text += f"; {note}"
        if self.ignored:
            more = f" (+{len(self.ignored) - 3} more)" if len(self.ignored) > 3 else ""
            text += f"; ignored {', '.join(self.ignored[:3])}{more}"
        return text


def init_from(
    network: EoMT, source: str | Path, *, load_class_head: bool = True, trust_pickle: bool = False
) -> InitReport:
    """Initialise `network` in place from an EoMT checkpoint or DINOv2 / DINOv3 weights (file, folder, hub id).

    EoMT checkpoints (ours, Lightning, official release, transformers folder, bare state dict) of
    the network's class count load whole (the class head only with `load_class_head`; other class
    names are said in the log line); of another class count all but the class head. DINOv2
    weights (timm or torch-hub layout) fill the backbone; patch kernels and the position
    embedding are resampled to the network's patch size and grid, as is the position embedding of
    an EoMT checkpoint trained at another size. `attn_mask_probs` is left to the schedule.
    Raises `CheckpointError` (a ValueError) naming the file for a file of no known kind, another
    architecture (listing the shapes), or DINOv2 weights that fill under 90% of the backbone.
    """
    src = read_source(source, trust_pickle)
    if src.family in ("dinov2", "dinov3"):
        report = _from_backbone(network, src)
    else:
        if src.deltas:
            raise missing_base_error(src.state_dict, src.name, src.evidence)
        report = _from_eomt(network, src, load_class_head)
    log.info("%s", report.describe())
    return report


def _from_backbone(network: EoMT, src: Source) -> InitReport:
    fit = (fit_dinov2 if src.family == "dinov2" else fit_dinov3)(network, src.state_dict, src.name)
    backbone = [k for k in network.state_dict() if k.startswith("backbone.")]
    others = [k for k in network.state_dict() if not k.startswith("backbone.") and k not in _SCHEDULE_STATE]
    return InitReport(
        src.name, src.kind if src.family == "dinov3" else f"DINOv2 weights, {fit.layout} layout", src.family,
        loaded=fit.loaded, total=len(backbone), new=others + ["backbone." + k for k in fit.missing],
        class_head=f"{'DINOv2' if src.family == 'dinov2' else 'DINOv3'} weights have no heads",
        resampled=fit.resampled, ignored=fit.unexpected,
    )


def _from_eomt(network: EoMT, src: Source, load_class_head: bool) -> InitReport:
    reason = _new_class_head(network, src, load_class_head)
    grid = src.grid(wanted=network.backbone.grid_size)
    fit, fitting = plan_fit(
        network, src.state_dict, name=src.name, load_class_head=reason is None, resample_pos_embed=True,
        source_grid=grid, skip=_SCHEDULE_STATE,
    )
    if not fit.ok:
        raise CheckpointError(
            f"{src.name} ({src.kind}): another architecture ({_shapes(src)}) than the network "
            f"({model_name(network)}): {fit.describe()}"
        )
    network.load_state_dict(fitting, strict=False)
    total = sum(1 for k in network.state_dict() if k not in _SCHEDULE_STATE)
    new = [k for k in fit.skipped if k not in _SCHEDULE_STATE]
    renamed = _renamed(network, src) if reason is None else None
    return InitReport(
        src.name, src.kind, "eomt", loaded=len(fitting), total=total, new=new,
        class_head=reason or "loaded", resampled=fit.resampled,
        notes=[f"class names differ ({renamed}); train.load_class_head=false gives a new head"] if renamed else [],
    )


def _new_class_head(network: EoMT, src: Source, load_class_head: bool) -> str | None:
    """Why the class head stays new (None: it loads)."""
    found, wanted = src.num_classes, network.config.num_classes
    if found is not None and found != wanted:
        return f"{found} classes in the checkpoint, {wanted} in the network"
    if not load_class_head:
        return "load_class_head=False"
    return None


def _renamed(network: EoMT, src: Source) -> str | None:
    """The first class named differently in the checkpoint and the network (same count), if any."""
    theirs = src.config.class_names if src.config is not None else ()
    ours = network.config.class_names
    if not (theirs and ours) or tuple(theirs) == tuple(ours):
        return None
    i = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    a = theirs[i] if i < len(theirs) else None
    b = ours[i] if i < len(ours) else None
    return f"class {i} is {a!r} in the checkpoint, {b!r} in the network"


def _shapes(src: Source) -> str:
    """Width, depth and query count of a checkpoint, read from its tensors."""
    sd = src.state_dict
    cls, q = sd.get("backbone.cls_token"), sd.get("q.weight")
    blocks = {k.split(".")[2] for k in sd if k.startswith("backbone.blocks.")}
    width = f"D={cls.shape[-1]}" if cls is not None else "no backbone.cls_token"
    queries = f", queries={q.shape[0]}" if q is not None else ""
    return f"{width}, depth={len(blocks)}{queries}"
