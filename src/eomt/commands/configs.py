"""`eomt configs [NAME]`: list the bundled configs and the presets, or print one config with every default."""

from __future__ import annotations

import argparse

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name", nargs="?",
        help="a bundled config (coco/panoptic/eomt_large_640), a preset (coco_panoptic_eomt_large_640) "
        "or a YAML file, printed resolved with every default",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides to apply")


def run(args: argparse.Namespace) -> int:
    from eomt.config import load_experiment
    from eomt.config_files import resolve_config

    if not args.name:
        print(format_listing())
        return 0
    path = resolve_config(args.name)
    cfg = load_experiment(args.name, args.overrides)
    d = cfg.to_dict()
    d["model"]["class_names"] = f"<{len(cfg.model.class_names)} names>"
    print(f"# {args.name}: {path}")
    print(yaml.safe_dump(d, sort_keys=False), end="")
    return 0


def format_listing() -> str:
    """The bundled configs (name, task, input size, what each is for) and the presets, as aligned rows."""
    from eomt.config import PRESET_NAMES, load_experiment, preset
    from eomt.config_files import bundled_configs, preset_configs, summary

    configs = bundled_configs()
    width = max(len(name) for name in configs)
    lines = ["Bundled configs (`eomt train|eval|data check NAME`; `eomt configs NAME` prints one in full):"]
    for name, path in configs.items():
        model = load_experiment(str(path)).model
        lines.append(f"  {name:<{width}}  {model.task:<9} {model.img_size[0]:>4}px  {summary(path)}")
    lines += ["", "Presets (networks; as a config argument, the bundled config that reproduces it):"]
    reproduced_by = preset_configs()
    for name in PRESET_NAMES:
        cfg = preset(name)
        config = reproduced_by.get(name, "no bundled config")
        lines.append(
            f"  {name:<38} {cfg.task:<9} {cfg.img_size[0]:>4}px  K={cfg.num_queries:<3} C={cfg.num_classes:<3}  "
            f"config: {config}"
        )
    return "\n".join(lines)
