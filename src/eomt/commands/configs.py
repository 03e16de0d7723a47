"""`eomt configs [NAME]`: list the presets, or print one config with every default."""

from __future__ import annotations

import argparse

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a preset name or YAML file to print in full")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides to apply")


def run(args: argparse.Namespace) -> int:
    from eomt.config import PRESET_NAMES, load_experiment, preset

    if not args.name:
        for name in PRESET_NAMES:
            cfg = preset(name)
            print(f"{name:<38} {cfg.task:<9} {cfg.img_size[0]}px  K={cfg.num_queries}  C={cfg.num_classes}")
        return 0
    cfg = load_experiment(args.name, args.overrides)
    d = cfg.to_dict()
    d["model"]["class_names"] = f"<{len(cfg.model.class_names)} names>"
    print(yaml.safe_dump(d, sort_keys=False), end="")
    return 0
