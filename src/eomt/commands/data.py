"""`eomt data check ...`: validate a dataset before training and report its counts.
`eomt data synthetic OUT --format ...`: write synthetic scenes in one of the users' formats."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator

from eomt.errors import OptionError


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
    c.add_argument("--split", default=None, help="split to check (default: the config's train and val splits; 'train' with a format name)")
    c.add_argument("--task", default=None, help="task (with a format name)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="format option, repeatable")
    c.add_argument("--max-images", type=int, default=None, help="check only the first N images")
    c.add_argument("--headers-only", action="store_true", help="read image headers instead of decoding")
    s = sub.add_parser("synthetic", help="write synthetic scenes as a dataset in one of your own-data formats "
                       "(no download), to try `eomt data check` and `eomt train` on")
    s.add_argument("out", help="output folder (new or empty)")
    s.add_argument("--format", required=True,
                   choices=["coco_panoptic_json", "coco_instance_json", "semantic_folder", "ytvis"],
                   help="dataset format to write; ytvis: videos of moving shapes in the YouTube-VIS format (splits train and "
                        "valid, JPEG frames, and each video as an mp4 in clips/)")
    s.add_argument("--train", type=int, default=64, help="number of train images or videos (default: 64)")
    s.add_argument("--val", type=int, default=16, help="number of val images or videos (default: 16)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--jpeg", action="store_true", help="write images as JPEG (default: PNG, lossless)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder, replacing this format's files there")


def run(args: argparse.Namespace) -> int:
    if args.data_verb == "synthetic":
        return _synthetic(args)
    from eomt.data.check import check_dataset

    ok = True
    for split, dataset, label_line in _datasets(args):
        if dataset is None:  # the split could not be built: the line says why
            print(f"== {split} ==\n{label_line}")
            ok = False
            continue
        from eomt.training.preflight import check_progress

        progress, close = check_progress(split, bar=True)  # the bar training's own check shows
        try:
            report = check_dataset(dataset, read_images=not args.headers_only, max_images=args.max_images,
                                   progress=progress)
        finally:
            close()
        print(f"== {split} ==")
        if label_line:
            print(label_line)
        labels_ok = not label_line.startswith("error: ")
        text = report.format()
        if not labels_ok and report.ok:  # the data is sound, but not for this config
            text = text.rsplit("\n", 1)[0] + "\nFAILED: the config's label space does not fit the data"
        print(text)
        ok &= report.ok and labels_ok
    return 0 if ok else 1


def _datasets(args: argparse.Namespace) -> Iterator[tuple[str, Any, str]]:
    """(split, dataset or spec, label-space line) for every split to check: with a config, its train
    and val splits (or --split) built as training builds them, and the label space the run will use."""
    from eomt.config import ConfigError
    from eomt.data.sources import DatasetError

    cfg, spec = _spec(args)
    if cfg is None:
        yield spec["split"], spec, ""
        return
    from eomt.training.data_module import EoMTDataModule
    from eomt.training.run import with_dataset_labels

    data = EoMTDataModule(cfg.data, cfg.model)
    splits = [args.split] if args.split else list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split]))
    for i, split in enumerate(splits):
        try:
            dataset = data.build(split)
        except (DatasetError, ConfigError, OSError) as e:
            yield split, None, f"error: {e}"
            continue
        line = ""
        if i == 0:  # the label space comes from the first split checked, as training takes it from train
            try:
                m = with_dataset_labels(cfg, dataset).model
                line = label_space_line(m, "the dataset" if cfg.labels_from_dataset else "the config, checked against the data")
            except ConfigError as e:
                line = f"error: {e}"
        yield split, dataset, line


def label_space_line(m: Any, source: str) -> str:
    """One readable line of a model config's label space: count, things, stuff, dataset ids."""
    names = list(m.class_names) or [str(i) for i in range(m.num_classes)]
    ids = list(m.category_ids) or list(range(m.num_classes))
    head = f"label space (from {source}): {m.num_classes} classes, name (dataset id)"
    if m.task == "semantic":  # no things and stuff: every class is a label value
        return f"{head}: " + ", ".join(f"{n} ({i})" for n, i in zip(names, ids))
    stuff = set(m.stuff_classes)
    things = [f"{names[i]} ({ids[i]})" for i in range(m.num_classes) if i not in stuff]
    stuffs = [f"{names[i]} ({ids[i]})" for i in sorted(stuff)]
    line = f"{head}; things: {', '.join(things) or '-'}"
    return line + (f"; stuff: {', '.join(stuffs)}" if stuffs else "")


def _synthetic(args: argparse.Namespace) -> int:
    import shlex

    from eomt.data.export import EXPORT_FORMATS, export_synthetic, layout

    video = args.format == "ytvis"  # YouTube-VIS names its val split "valid"
    splits = {"train": args.train, "valid" if video else "val": args.val}
    out = export_synthetic(args.out, args.format, splits=splits, size=args.size, seed=args.seed,
                           image_format="jpg" if args.jpeg else "png", overwrite=args.overwrite)
    what = "videos" if video else "images"
    print(f"wrote synthetic {what} as {args.format} ({args.train} train, {args.val} val {what}, "
          f"{args.size}x{args.size}, seed {args.seed}) to {out}:")
    paths = layout(args.format, splits)
    width = max(len(p) for p in paths)
    for rel, what in paths.items():
        print(f"  {rel:<{width}}  {what}")
    config, root = EXPORT_FORMATS[args.format][1], shlex.quote(str(out))
    print(f"next: eomt data check {config} data.root={root}")
    print(f"then: eomt train {config} data.root={root}")
    if video and (out / "clips").is_dir():
        print(f"and:  eomt predict --model MODEL {shlex.quote(str(out / 'clips'))} --out tracks/")
    return 0


def _spec(args: argparse.Namespace) -> tuple[Any, dict]:
    """(the experiment config, {}) for a config source; (None, a dataset spec) for a format name."""
    import difflib

    from eomt.config import ConfigError, load_experiment, parse_value
    from eomt.config_files import find_config, suggestions
    from eomt.data.registry import DATASET_FORMATS, _resolve_name

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise OptionError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = parse_value(value)
    # A file, a bundled config or a preset is a config (resolved as `eomt train` resolves it); a
    # format name is a format; anything else is answered with the closest names of both kinds.
    if find_config(args.source) is not None:
        import dataclasses

        cfg = load_experiment(args.source, args.overrides)
        data = cfg.data
        if args.root:
            data = dataclasses.replace(data, root=args.root)
        if options:
            data = dataclasses.replace(data, options=tuple(sorted({**data.kwargs, **options}.items())))
        return dataclasses.replace(cfg, data=data), {}
    try:
        _resolve_name(args.source, args.task)
    except ConfigError:
        forms = {f: f for f in DATASET_FORMATS}
        forms.update({s: s for s in suggestions(args.source, n=5)})
        close = difflib.get_close_matches(args.source.lower(), list(forms), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{args.source}: not a config file, bundled config, preset or dataset format{hint} "
            f"(`eomt configs` lists the configs; formats: {', '.join(DATASET_FORMATS)})"
        ) from None
    return None, {"format": args.source, "root": args.root or ".", "split": args.split or "train",
                  **({"task": args.task} if args.task else {}), **options}
