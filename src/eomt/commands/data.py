"""`eomt data check ...`: validate a dataset before training and report its counts."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate a dataset (missing files, unknown ids, empty images, ...)")
    c.add_argument("source", help="a training config (YAML or preset) or a dataset format name")
    c.add_argument("overrides", nargs="*", help="section.key=value overrides (with a config)")
    c.add_argument("--root", default=None, help="dataset folder (with a format name)")
    c.add_argument("--split", default=None, help="split to check (default: the config's train split, or 'train')")
    c.add_argument("--task", default=None, help="task (with a format name)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="format option, repeatable")
    c.add_argument("--max-images", type=int, default=None, help="check only the first N images")
    c.add_argument("--headers-only", action="store_true", help="read image headers instead of decoding")


def run(args: argparse.Namespace) -> int:
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


def _spec(args: argparse.Namespace) -> dict:
    import os

    from eomt.config import _parse_value, load_experiment

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = _parse_value(value)
    if os.path.exists(args.source) or args.source.endswith((".yaml", ".yml")):
        cfg = load_experiment(args.source, args.overrides)
        split = args.split or cfg.data.train_split
        return {"format": cfg.data.dataset, "root": args.root or cfg.data.root, "split": split,
                "task": cfg.model.task, **cfg.data.kwargs, **options}
    return {"format": args.source, "root": args.root or ".", "split": args.split or "train",
            **({"task": args.task} if args.task else {}), **options}
