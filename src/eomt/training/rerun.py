"""Rerun semantics: one `train.out_dir` holds one run, and a rerun continues it only if it is the same run.

`plan_run` decides, before anything is written, what a start in a folder does:

- nothing there (or only logs and a config from an attempt that wrote no checkpoint): train fresh;
- a checkpoint written with the same config: continue from it (`checkpoints/last.ckpt`);
- a finished run with the same config (its model was saved at the step of its last checkpoint, or
  after it): nothing to do;
- anything else stops with `RunConflict`, listing the differing keys (old -> new).

`resume` overrides that: "never" starts over in the folder (the old run's config, checkpoints,
model and logs move to `OUT_DIR/previous/<time>/` once the checks pass), "force" continues the
run with the new values (not with a different network shape: its weights would not load), and a
checkpoint path continues from that checkpoint (its config must match, as with "auto").

The config a run is compared with is the one inside its last checkpoint (what a resume restores),
else its `config.yaml`. Keys in `IGNORED` are not compared: they cannot change the trained weights.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import yaml

from eomt.errors import EomtError, MissingFileError
from eomt.training.trainer import read_training_checkpoint

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never", "force")

# Keys that cannot change the trained weights, with the reason; everything else must match.
IGNORED: dict[str, str] = {
    "data.num_workers": "loading parallelism; order and augmentation are seeded per sample",
    "train.threads": "CPU threads of the process",
    "train.compile": "the same network, compiled",
    "train.activation_checkpointing": "recomputes the same activations in backward",
    "train.accelerator": "where the same computation runs",
    "train.strategy": "how processes communicate, not what they compute",
    "train.log_every_n_steps": "logging",
    "train.checkpoint_every_n_steps": "how often the state is saved",
    "train.val_every_n_epochs": "validation only",
    "train.score_threshold": "validation post-processing only",
    "train.mask_threshold": "the former name of train.score_threshold",
    "train.overlap_threshold": "validation post-processing only",
    "train.out_dir": "the folder itself",
    "train.data_check": "whether the data check runs",
}

# Model keys that change the shape of a parameter: a checkpoint cannot continue under new values.
SHAPE_KEYS = (
    "model.embed_dim", "model.depth", "model.num_heads", "model.mlp_ratio", "model.swiglu", "model.patch_size",
    "model.img_size", "model.num_register_tokens", "model.num_queries", "model.num_blocks", "model.num_classes",
)

RUN_FILES = ("config.yaml", "checkpoints", "model.safetensors", "logs", "tb_logs", "eval")


class RunConflict(EomtError, ValueError):
    """The folder holds a different run (or one that cannot be continued); nothing was changed."""


@dataclass
class SavedRun:
    """What a run folder holds: the config it was trained with, its last checkpoint and model."""

    config: dict[str, Any] | None = None
    checkpoint: Path | None = None
    step: int = 0
    model: Path | None = None
    model_step: int | None = None  # the step the model was saved at (None: not recorded)

    @property
    def exists(self) -> bool:
        return self.checkpoint is not None or self.model is not None


@dataclass
class Plan:
    """What `train` does in its folder: "fresh", "resume" or "finished" (and why, for the log)."""

    action: str
    checkpoint: str | None = None
    step: int = 0
    move_previous: bool = False
    message: str = ""
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)


def read_checkpoint_header(path: Path) -> tuple[int, dict[str, Any] | None]:
    """(global step, resolved config) of a Lightning checkpoint, its tensors left unread (mmap)."""
    ckpt = read_training_checkpoint(path, mmap=True)
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    return int(ckpt.get("global_step", 0)), config if isinstance(config, dict) else None


def saved_run(out: Path) -> SavedRun:
    """The run found in `out` (an empty `SavedRun` when there is none)."""
    run = SavedRun()
    last, model, config = out / "checkpoints" / "last.ckpt", out / "model.safetensors", out / "config.yaml"
    if last.is_file():
        run.checkpoint = last
        run.step, run.config = read_checkpoint_header(last)
    if model.is_file():
        run.model = model
        run.model_step = _model_step(model)
    if run.config is None and config.is_file():
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        run.config = loaded if isinstance(loaded, dict) else None
    return run


def _model_step(path: Path) -> int | None:
    from eomt.checkpoints import CheckpointError, read_metadata

    try:
        step = read_metadata(path)["extra"].get("global_step")
    except CheckpointError:
        return None
    return int(step) if isinstance(step, int) else None


def _is_finished(run: SavedRun, changed: bool, total_steps: Callable[[], int]) -> bool:
    """The model in the folder is the end of the run that its last checkpoint continues."""
    if run.model is None or run.checkpoint is None:
        return False
    if changed:  # --resume force with new values (e.g. more steps): finished only if nothing is left
        return run.step >= total_steps()
    if run.model_step is not None:
        return run.model_step >= run.step
    # Saved by an earlier version, without its step: the model is written only once training ended,
    # and that version's last checkpoint could be older than the end (checkpoint_every_n_steps).
    return run.model.stat().st_mtime_ns >= run.checkpoint.stat().st_mtime_ns


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _normalised(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as `to_dict` writes it today (defaults filled in for keys added since)."""
    from eomt.config import ConfigError, ExperimentConfig

    try:
        return ExperimentConfig.from_dict(config).to_dict()
    except (ConfigError, TypeError, ValueError):
        return dict(config)  # a key we no longer know: compare what was written


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every compared key that differs (`IGNORED` keys are not)."""
    a, b = _flatten(_normalised(old)), _flatten(_normalised(new))
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        if key in IGNORED or any(key.startswith(k + ".") for k in IGNORED):
            continue
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            out.append((key, "(absent)" if x is missing else x, "(absent)" if y is missing else y))
    return out


def format_differences(changed: list[tuple[str, Any, Any]], limit: int = 30) -> list[str]:
    lines = [f"  {key}: {old!r} -> {new!r}" for key, old, new in changed[:limit]]
    if len(changed) > limit:
        lines.append(f"  ... and {len(changed) - limit} more")
    return lines


def _conflict(out: Path, what: str, changed: list[tuple[str, Any, Any]], force_ok: bool) -> RunConflict:
    lines = [f"train.out_dir {out} holds {what}; nothing was changed."]
    if changed:
        lines += [f"Differing keys ({len(changed)}, saved -> now):", *format_differences(changed)]
    lines.append("To go on, choose one: a new train.out_dir=...; --resume never (start over here; the old run "
                 f"moves to {out / 'previous'}/<time>/)"
                 + ("; --resume force (continue this run with the new values)" if force_ok else "") + ".")
    return RunConflict("\n".join(lines))


def plan_run(out: Path, config: Mapping[str, Any], resume: str, total_steps: Callable[[], int]) -> Plan:
    """What a start with resolved `config` does in `out`; raises `RunConflict` when it must not start.

    `total_steps()` (called only when needed) is the length of the run under `config`. Reads only:
    nothing in `out` is changed here."""
    if resume == "never":
        saved = saved_run(out)
        moving = saved.exists or (out / "config.yaml").exists()
        return Plan("fresh", move_previous=moving,
                    message="--resume never: starting over" + (" (the previous run moves aside)" if moving else ""))
    if resume not in RESUME_MODES:
        path = Path(resume)
        if not path.is_file():
            raise MissingFileError(f"--resume: checkpoint {resume} not found (or use auto, never, force)")
        step, saved_config = read_checkpoint_header(path)
        changed = config_differences(saved_config, config) if saved_config is not None else []
        if changed:
            raise RunConflict("\n".join([
                f"--resume {path}: the checkpoint was trained with a different config; nothing was changed.",
                f"Differing keys ({len(changed)}, checkpoint -> now):", *format_differences(changed)]))
        return Plan("resume", str(path), step, message=f"resuming from {path} at step {step}")
    saved = saved_run(out)
    if not saved.exists:
        return Plan("fresh")
    changed = config_differences(saved.config, config) if saved.config is not None else []
    if saved.checkpoint is None:  # a model without a checkpoint: nothing to continue from
        if changed or saved.config is None:
            raise _conflict(out, "a trained model without a checkpoint to continue from"
                            + (" and a different config" if changed else ""), changed, force_ok=False)
        return Plan("finished", message=f"{out}: already finished ({saved.model} is there); nothing to do")
    if changed and resume == "auto":
        raise _conflict(out, f"a run with a different config (checkpoint at step {saved.step})", changed,
                        force_ok=not any(key in SHAPE_KEYS for key, _, _ in changed))
    shape = [c for c in changed if c[0] in SHAPE_KEYS]
    if shape:
        raise _conflict(out, "a run of a network with another shape; --resume force cannot load its weights",
                        shape, force_ok=False)
    if _is_finished(saved, bool(changed), total_steps):
        return Plan("finished", str(saved.checkpoint), saved.step,
                    message=f"{out}: already finished (step {saved.step}, model {saved.model}); nothing to do")
    plan = Plan("resume", str(saved.checkpoint), saved.step, changed=changed,
                message=f"resuming {out} at step {saved.step} of {total_steps()}")
    if changed:
        plan.message += " with new values (--resume force):\n" + "\n".join(format_differences(changed))
    return plan


def move_previous_run(out: Path) -> Path | None:
    """Move the run files of `out` (config, checkpoints, model, logs) to `out/previous/<time>/`."""
    present = [out / name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return None
    target = out / "previous" / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "+")
    target.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), str(target / path.name))
    return target


class ConfiguredOptimizerValues(pl.Callback):
    """On a resume, the config's learning rates and weight decays replace those in the checkpoint.

    The optimizer and scheduler state restored from a checkpoint carries the LR and weight decay it
    was saved with; this makes the resolved config the one truth (equal values change nothing, so
    an exact resume stays exact; under `--resume force` the new values apply from the next step).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0 or not trainer.lr_scheduler_configs:
            return
        fresh = pl_module.configure_optimizers()["optimizer"]  # new groups, same order; no state
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        if len(fresh.param_groups) != len(optimizer.param_groups):
            return
        for i, (group, new) in enumerate(zip(optimizer.param_groups, fresh.param_groups)):
            base = new.get("initial_lr", new["lr"])
            group["initial_lr"], group["weight_decay"] = base, new["weight_decay"]
            scheduler.base_lrs[i] = base  # type: ignore[attr-defined]
            group["lr"] = base * scheduler.lr_lambdas[i](scheduler.last_epoch)  # type: ignore[attr-defined]


class InterruptNote(pl.Callback):
    """On Ctrl-C (a KeyboardInterrupt in `fit`), one line: the step reached, the step of the last
    checkpoint in `out` and that rerunning the same command resumes from it (or starts over when
    there is none yet). Lightning then shuts down and exits non-zero."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or not trainer.is_global_zero:
            return
        ckpt = self.out / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            step, _ = read_checkpoint_header(ckpt)
            then = f"the last checkpoint is at step {step} ({ckpt}): rerun the same command to resume from it"
        else:
            then = "no checkpoint was written yet: rerunning the same command starts over"
        log.warning("interrupted at step %d; %s", trainer.global_step, then)
