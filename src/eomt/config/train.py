"""The training recipe: `TrainConfig` (optimiser, schedules, loss weights, engine settings)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from eomt.config.parse import ConfigError, unknown
from eomt.config.precision import LIGHTNING_NAMES

# Lightning's precision names `train.precision` accepts (rows of `eomt.config.precision.TABLE`).
PRECISIONS = LIGHTNING_NAMES
LR_SCALINGS = ("none", "linear", "sqrt")
_ZERO_MEANS = {"checkpoint_every_n_steps": "only at the end of each epoch and of training",
               "threads": "torch's default"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedules, loss weights and engine settings (official defaults, paper 4.1/A.2).

    The loss weights (`class_weight`, `mask_weight`, `dice_weight`, `no_object_weight`) weigh both
    the loss terms and the matching costs; the official code calls them `*_coefficient`.
    """

    epochs: int = 12
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 1e-4  # at the reference total batch `lr_reference_batch` (see lr_scaling)
    # How the LR follows the total batch (batch_size x devices x nodes): "none" (lr as given),
    # "linear" (lr * B / B_ref, Goyal et al. 2017) or "sqrt" (lr * sqrt(B / B_ref), the rule for
    # adaptive optimisers such as AdamW, Malladi et al. 2022). B_ref = 16, the paper's total batch.
    lr_scaling: str = "none"
    lr_reference_batch: int = 16
    weight_decay: float = 0.05
    llrd: float = 0.8
    # False: the L2 query blocks get the full LR instead of the decay (official DINOv3 configs).
    llrd_l2_enabled: bool = True
    warmup_steps: tuple[int, int] = (500, 1000)  # heads alone, then the ViT
    # The same two warm-up stages as fractions of the total steps (overrides warmup_steps), so a
    # schedule scales with the data: e.g. (0.05, 0.1).
    warmup_fraction: tuple[float, ...] = ()
    freeze_backbone: bool = False  # train only the queries, the mask module and the heads
    poly_power: float = 0.9
    mask_annealing: bool = True
    # Per-block annealing windows as fractions of training ((start, end), ...); () = the official
    # staggered windows for num_blocks.
    anneal_windows: tuple[tuple[float, float], ...] = ()
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    grad_clip: float = 0.01
    precision: str = "bf16-mixed"  # Lightning's name; see eomt.config.precision for the table
    compile: bool = False
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory)
    accelerator: str = "auto"
    devices: str = "1"  # Lightning syntax: "1", "4", "0,1", "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    threads: int = 0  # torch intra-op threads of the training process; 0 = torch's default
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 10
    out_dir: str = "runs/eomt"
    data_check: bool = True  # check the train and val data before the first step (cached)
    init: str = ""  # DINOv2 backbone weights or an EoMT checkpoint to start from
    load_class_head: bool = True
    # Post-processing thresholds used by validation (official: 0.8 / 0.8). `score_threshold` is the
    # class-score cut (Predictor's `threshold`), not a per-pixel mask cut; it was `mask_threshold`.
    score_threshold: float = 0.8
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(unknown("train.precision", self.precision, PRECISIONS))
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(unknown("train.lr_scaling", self.lr_scaling, LR_SCALINGS))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.{f.name}: {value} is not a finite number")
        for key in ("lr", "grad_clip", "weight_decay", "no_object_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 0")
        if self.lr == 0:
            raise ConfigError("train.lr: 0 trains nothing; expected a learning rate > 0 (e.g. 1e-4)")
        for key in ("num_points", "log_every_n_steps", "num_nodes", "lr_reference_batch", "val_every_n_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 1")
        for key in ("checkpoint_every_n_steps", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: {getattr(self, key)} must be >= 0 (0 = {_ZERO_MEANS[key]})")
        if any(w < 0 for w in self.warmup_steps):
            raise ConfigError(f"train.warmup_steps: {self.warmup_steps} must be >= 0")
        if self.warmup_fraction and (
            len(self.warmup_fraction) != 2 or not all(0 <= f <= 1 for f in self.warmup_fraction)
            or sum(self.warmup_fraction) > 1
        ):
            raise ConfigError(
                f"train.warmup_fraction: {self.warmup_fraction}; expected two fractions of the total steps "
                "(heads, then backbone) in [0, 1] that sum to <= 1, e.g. [0.05, 0.1]"
            )
        if not 0 <= self.oversample_ratio or not 0 <= self.importance_sample_ratio <= 1:
            raise ConfigError("train.importance_sample_ratio: must be in [0, 1] (oversample_ratio >= 0)")
        for start, end in self.anneal_windows:
            if not 0 <= start <= end <= 1:
                raise ConfigError(f"train.anneal_windows: ({start}, {end}) must satisfy 0 <= start <= end <= 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("train.epochs: must be >= 1 unless train.max_steps is set")
        parse_devices(self.devices)

    def warmup(self, total_steps: int) -> tuple[int, int]:
        """The two warm-up stages in optimizer steps (heads alone, then the ViT) for a run of
        `total_steps`: `warmup_fraction` of it when set, else `warmup_steps`."""
        if self.warmup_fraction:
            return tuple(int(round(f * total_steps)) for f in self.warmup_fraction)  # type: ignore[return-value]
        return tuple(self.warmup_steps)  # type: ignore[return-value]

    def scaled_lr(self, total_batch: int) -> float:
        """`lr` under `lr_scaling` for a total batch (per-device batch x devices x nodes)."""
        ratio = total_batch / self.lr_reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run: `max_steps` when set, else `epochs` x `steps_per_epoch`
        (per process, one step per batch)."""
        return self.max_steps if self.max_steps > 0 else steps_per_epoch * self.epochs


def parse_devices(text: str) -> Any:
    """Lightning's device syntax: "auto", a count ("4") or a list of indices ("0,1"); else ConfigError."""
    text = str(text).strip()
    if text == "auto":
        return "auto"
    try:
        if "," in text:
            ids = [int(x) for x in text.split(",") if x.strip()]
            if not ids or min(ids) < 0:
                raise ValueError
            return ids
        count = int(text)
    except ValueError:
        raise ConfigError(
            f"train.devices: {text!r} is not a device count or list; expected e.g. 1, 4, \"0,1\" or auto"
        ) from None
    if count < 1 and count != -1:
        raise ConfigError(f"train.devices: {count} must be >= 1 (or -1 / auto for all)")
    return count
