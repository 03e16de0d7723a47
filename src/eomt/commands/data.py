"""`eomt data check ...`: validate a dataset before training and report its counts.
`eomt data synthetic OUT --format ...`: write synthetic scenes in one of the users' formats."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate a dataset (missing files, unknown ids, empty images, ...)")
    c.add_argument(
        "source",
        help="a config: a YAML file, a bundled config (custom/coco_panoptic) or a preset "
        "(coco_panoptic_eomt_large_640), as `eomt train` takes; or a dataset format name "
        "(coco_panoptic_json, semantic_folder, ...) with --root",
    )
    c.add_argument("overrides", nargs="*", help="section.key=value overrides (with a config)")
    c.add_argument("--root", default=None, help="dataset folder (with a format name)")
    c.add_argument("--split", default=None, help="split to check (default: the config's train split, or 'train')")
    c.add_argument("--task", default=None, help="task (with a format name)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="format option, repeatable")
    c.add_argument("--max-images", type=int, default=None, help="check only the first N images")
    c.add_argument("--headers-only", action="store_true", help="read image headers instead of decoding")
    s = sub.add_parser("synthetic", help="write synthetic scenes as a dataset in one of your own-data formats "
                       "(no download), to try `eomt data check` and `eomt train` on")
    s.add_argument("out", help="output folder (new or empty)")
    s.add_argument("--format", required=True, choices=["coco_panoptic_json", "coco_instance_json", "semantic_folder"],
                   help="dataset format to write")
    s.add_argument("--train", type=int, default=64, help="number of train images (default: 64)")
    s.add_argument("--val", type=int, default=16, help="number of val images (default: 16)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--jpeg", action="store_true", help="write images as JPEG (default: PNG, lossless)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder, replacing this format's files there")


def run(args: argparse.Namespace) -> int:
    if args.data_verb == "synthetic":
        return _synthetic(args)
    from tqdm import tqdm

    from eomt.data.check import check_dataset

    spec = _spec(args)
    bar = tqdm(total=0, unit="img", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = check_dataset(spec, read_images=not args.headers_only, max_images=args.max_images, progress=progress)
    bar.close()
    print(report.format())
    return 0 if report.ok else 1


def _synthetic(args: argparse.Namespace) -> int:
    import shlex

    from eomt.data.export import EXPORT_FORMATS, export_synthetic, layout

    splits = {"train": args.train, "val": args.val}
    out = export_synthetic(args.out, args.format, splits=splits, size=args.size, seed=args.seed,
                           image_format="jpg" if args.jpeg else "png", overwrite=args.overwrite)
    print(f"wrote synthetic scenes as {args.format} ({args.train} train, {args.val} val images, "
          f"{args.size}x{args.size}, seed {args.seed}) to {out}:")
    paths = layout(args.format, splits)
    width = max(len(p) for p in paths)
    for rel, what in paths.items():
        print(f"  {rel:<{width}}  {what}")
    config, root = EXPORT_FORMATS[args.format][1], shlex.quote(str(out))
    print(f"next: eomt data check {config} data.root={root}")
    print(f"then: eomt train {config} data.root={root}")
    return 0


def _spec(args: argparse.Namespace) -> dict:
    import difflib

    from eomt.config import ConfigError, _parse_value, load_experiment
    from eomt.config_files import find_config, suggestions
    from eomt.data.registry import FORMATS, _resolve_name

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = _parse_value(value)
    # A file, a bundled config or a preset is a config (resolved as `eomt train` resolves it); a
    # format name is a format; anything else is answered with the closest names of both kinds.
    if find_config(args.source) is not None:
        cfg = load_experiment(args.source, args.overrides)
        split = args.split or cfg.data.train_split
        # Options named `<split>_<key>` apply to that split only, as in training (EoMTDataModule.build).
        kwargs: dict = {}
        for key, value in cfg.data.kwargs.items():
            prefix, _, rest = key.partition("_")
            if prefix in (cfg.data.train_split, cfg.data.val_split) and rest:
                if prefix == split:
                    kwargs[rest] = value
            else:
                kwargs.setdefault(key, value)
        return {"format": cfg.data.dataset, "root": args.root or cfg.data.root, "split": split,
                "task": cfg.model.task, **kwargs, **options}
    try:
        _resolve_name(args.source, args.task)
    except ConfigError:
        forms = {f: f for f in FORMATS}
        forms.update({s: s for s in suggestions(args.source, n=5)})
        close = difflib.get_close_matches(args.source.lower(), list(forms), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{args.source}: not a config file, bundled config, preset or dataset format{hint} "
            f"(`eomt configs` lists the configs; formats: {', '.join(FORMATS)})"
        ) from None
    return {"format": args.source, "root": args.root or ".", "split": args.split or "train",
            **({"task": args.task} if args.task else {}), **options}
