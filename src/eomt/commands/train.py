"""`eomt train CONFIG [section.key=value ...]`: train with the paper's recipe (Lightning engine).

A config with data.clip_length > 0 trains a VidEoMT on clips of that many frames (e.g. synthetic/video;
data.dataset ytvis reads YouTube-VIS data), with the same resume rules, data check and validation
(video AP and identity switches).
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from eomt.commands import add_trust_pickle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="a YAML file; a bundled config by name, e.g. coco/panoptic/eomt_large_640 (its checkout path "
        "configs/coco/panoptic/eomt_large_640.yaml works from any folder); or a preset, e.g. "
        "coco_panoptic_eomt_large_640, meaning the bundled config that reproduces it. `eomt configs` lists them",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-4 data.batch_size=4")
    p.add_argument(
        "--resume", default="auto", metavar="{auto,never,force,PATH}",
        help="'auto' (default): continue the run in train.out_dir if it has the same config (a finished run "
             "is left as it is; a different config stops with the differing keys); 'never': start over "
             "(the old run's config, checkpoints, model and logs move to OUT_DIR/previous/<time>/); "
             "'force': continue the run with the new values (same network shape); or a checkpoint path "
             "to continue from (its config must match). Logging, worker, thread, device-kind and "
             "validation-only keys may change freely",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_trust_pickle(p, "the train.init file", " (a resumed checkpoint is always read weights-only)")


def run(args: argparse.Namespace) -> int:
    from eomt.config import load_experiment

    cfg = load_experiment(args.config, args.overrides)
    if args.print_config:
        print(printable_config(cfg), end="")
        return 0
    from eomt.training.run import train

    module = train(cfg, resume=args.resume, progress=not args.no_progress, trust_pickle=args.trust_pickle)
    if getattr(module, "already_finished", False):
        return 0  # said so in the log, in one line
    metrics = getattr(module, "last_metrics", None)
    if metrics:
        print(format_metrics(metrics))
    print(f"run written to {cfg.train.out_dir} (model: {cfg.train.out_dir}/model.safetensors)")
    return 0


def format_metrics(metrics: dict) -> str:
    """The scalar metrics as aligned `name value` lines."""
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:8.2f}" for k, v in rows)


def printable_config(cfg: Any) -> str:
    """The resolved config as YAML; what the run takes from the dataset (the label space) or from
    its folder (the model's name) is marked so, not shown as the preset's placeholder values."""
    from eomt.config import LABEL_KEYS

    d = cfg.to_dict()
    lines = []
    if cfg.labels_from_dataset:
        for key in LABEL_KEYS:
            d["model"][key] = "<from the dataset>"
        lines.append("# the label space comes from the dataset: `eomt data check` prints it")
    if cfg.name_from_run:
        d["model"]["name"] = "<the run folder's name>"
    return "".join(f"{line}\n" for line in lines) + yaml.safe_dump(d, sort_keys=False)
