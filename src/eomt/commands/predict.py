"""`eomt predict`: segment image files, folders and globs; write result files and overlays.

Per image `<stem>_overlay.png`, plus per task:
- panoptic: `<stem>_panoptic.png` (COCO panoptic colours) and its entry in `panoptic.json`;
- instance: entries in `instances.json` (COCO results, RLE masks);
- semantic: `<stem>_semantic.png` (class-index label map).
Each finished image adds a line to `results.jsonl` (`eomt.inference.writers`), so a killed run
keeps its work: `--skip-existing` resumes it. Category ids are the checkpoint's dataset ids; image ids
are the dataset's (`--images-json`) or 1..N in input order, listed with the file names.
An unreadable image is reported by name and skipped; the exit code is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any

from eomt.config import TASKS

from eomt.commands import add_trust_pickle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--model", required=True, help="checkpoint file, folder or hub name")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--task", choices=TASKS, default=None, help="default: the model's own task")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="bf16: weights and activations in bf16; fp16: autocast, CUDA only (default: fp32)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the network (optionally a mode: max-autotune, reduce-overhead)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="panoptic: class score threshold (default 0.8); "
                             "instance: drop instances scoring below it (default 0.0)")
    parser.add_argument("--mask-threshold", type=float, default=0.5, help="panoptic (default: 0.5)")
    parser.add_argument("--overlap-threshold", type=float, default=0.8, help="panoptic (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=100, help="instance: instances per image (default: 100)")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help="cut large images into overlapping SIZE x SIZE pixel tiles, predicted at the "
                             "image's own scale and joined at the original size (objects crossing a seam "
                             "become one; semantic scores blended). Use the model's input size for slides, "
                             "aerial photos and scans whose objects would vanish if shrunk (default: off)")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="PIXELS",
                        help="with --tile: pixels shared by neighbouring tiles; more gives the network more "
                             "context at each seam, at the cost of more tiles (default: SIZE // 4)")
    parser.add_argument("--max-pixels", type=int, default=178_956_970, metavar="N",
                        help="refuse image files announcing more pixels, before decoding (a decompression "
                             "bomb guard; 0: no limit; default: 178956970, Pillow's own limit)")
    parser.add_argument("--vis-threshold", type=float, default=0.5,
                        help="instance overlays: draw instances scoring at least this (default: 0.5)")
    add_trust_pickle(parser)
    parser.add_argument("--category-ids", type=Path, default=None,
                        help="JSON list mapping class index -> dataset category id for the JSON outputs "
                             "(default: the ids stored in the checkpoint, else the class index)")
    parser.add_argument("--images-json", type=Path, default=None, metavar="JSON",
                        help="the dataset's COCO-style JSON when the inputs are its images: image ids are "
                             "taken from its \"images\" (matched by file_name); default: 1..N in input order")
    parser.add_argument("--skip-existing", action="store_true",
                        help="resume: pass over images whose results (a line in results.jsonl and its "
                             "files) are already in --out")


def check_options(args: argparse.Namespace) -> None:
    """One ValueError line naming the first option out of its range, before anything is loaded."""
    fractions = {"--threshold": args.threshold, "--mask-threshold": args.mask_threshold,
                 "--overlap-threshold": args.overlap_threshold, "--vis-threshold": args.vis_threshold}
    for name, value in fractions.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: {value:g} is not a score; expected a number in [0, 1]")
    for name, value in {"--top-k": args.top_k, "--batch-size": args.batch_size}.items():
        if value < 1:
            raise ValueError(f"{name}: {value} must be at least 1")
    if args.max_pixels < 0:
        raise ValueError(f"--max-pixels: {args.max_pixels} must be >= 0 (0 = no limit)")
    from eomt.inference.predictor import COMPILE_MODES

    if args.compile is not None and args.compile not in COMPILE_MODES:
        hint = difflib.get_close_matches(args.compile, COMPILE_MODES, n=1)
        raise ValueError(
            f"--compile: unknown mode {args.compile!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (expected --compile alone or one of: {', '.join(COMPILE_MODES)})"
        )
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out: {args.out} is a file; expected an output folder (created if missing)")


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders -> their image files; globs -> matching image files. Sorted, unique."""
    from eomt.inference.io import IMAGE_EXTENSIONS

    def is_image(p: Path) -> bool:
        return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS

    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if is_image(p))
        elif glob.has_magic(item):
            matches = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if is_image(p))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
        if not matches:
            raise FileNotFoundError(f"{item}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        found.update(dict.fromkeys(matches))
    return list(found)


def unique_stems(paths: list[Path]) -> list[str]:
    """Output name stems: the file stems, with `_2`, `_3`, ... where two inputs share one."""
    used: set[str] = set()
    stems = []
    for p in paths:
        stem, n = p.stem, 1
        while stem in used:
            n += 1
            stem = f"{p.stem}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def _read_category_ids(path: Path | None, num_classes: int) -> list[int] | None:
    if path is None:
        return None
    try:
        ids = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read category ids: {e}") from None
    if not isinstance(ids, list) or len(ids) != num_classes or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"{path}: expected a JSON list of {num_classes} integers (one per class)")
    return ids


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eomt import files
    from eomt.inference import formats, writers
    from eomt.inference.io import ImageReadError, read_image, write_json, write_png
    from eomt.inference.predictor import Predictor
    from eomt.inference.visualize import overlay

    check_options(args)
    paths = collect_inputs(args.inputs)
    writers.check_out_folder(args.out, args.inputs)
    ids = writers.image_ids(paths, args.images_json)
    predictor = Predictor(
        args.model, task=args.task, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        compile=args.compile or False,
        threshold=args.threshold, mask_threshold=args.mask_threshold,
        overlap_threshold=args.overlap_threshold, top_k=args.top_k,
        tile=args.tile, tile_overlap=args.tile_overlap, trust_pickle=args.trust_pickle,
        max_pixels=args.max_pixels or None,
    )
    cfg, task, out = predictor.config, predictor.task, args.out
    # The dataset ids the model was trained with (kept in its checkpoint), unless given here.
    category_ids = _read_category_ids(args.category_ids, cfg.num_classes) or (list(cfg.category_ids) or None)
    out.mkdir(parents=True, exist_ok=True)
    files.clean_stale_temps(out)  # what the atomic writes of a killed run left
    stems = unique_stems(paths)
    # A line per image as it is done (a killed run keeps what it finished), merged at the end.
    results = writers.ResultLog(out, resume=args.skip_existing)
    # What makes a line reusable by --skip-existing: the same model, task and options.
    settings = {"model": str(args.model), "task": task, "threshold": args.threshold,
                "mask_threshold": args.mask_threshold, "overlap_threshold": args.overlap_threshold,
                "top_k": args.top_k, "vis_threshold": args.vis_threshold, "dtype": args.dtype,
                "tile": args.tile, "tile_overlap": args.tile_overlap, "category_ids": category_ids}
    written: list[Path] = []
    failed: list[str] = []
    skipped = 0
    start = time.perf_counter()

    def save(index: int, image: Any, result: Any) -> None:
        stem, (image_id, file_name) = stems[index], ids[index]
        vis = {"threshold": args.vis_threshold} if task == "instance" else {}
        names = [f"{stem}_overlay.png"]
        written.append(write_png(out / names[0], overlay(image, result, predictor.class_names, **vis)))
        record: dict[str, Any] = {"stem": stem, "source": str(paths[index]), "file_name": file_name,
                                  "image_id": image_id, "height": int(image.shape[-2]),
                                  "width": int(image.shape[-1]), "task": task, "settings": settings}
        if task == "panoptic":
            names.append(f"{stem}_panoptic.png")
            written.append(write_png(out / names[-1], formats.id_to_rgb(result.segmentation)))
            entry = formats.panoptic_to_coco(result, image_id, names[-1], category_ids)
            record.update(png=names[-1], segments_info=entry["segments_info"])
        elif task == "instance":
            record["instances"] = formats.instances_to_coco(result, image_id, category_ids)
        else:
            names.append(f"{stem}_semantic.png")
            written.append(write_png(out / names[-1], formats.semantic_to_png_array(result, cfg.num_classes)))
        results.append({**record, "outputs": names})  # last: a line means its files are complete

    bar = tqdm(total=len(paths), desc=f"eomt predict ({task})", unit="img", file=sys.stderr)
    pending: list[tuple[int, Any]] = []

    def flush() -> None:
        if not pending:
            return
        predictions = predictor.predict_tensors([image for _, image in pending])
        for (index, image), result in zip(pending, predictions):
            try:
                save(index, image, result)
            except OSError as e:
                failed.append(str(paths[index]))
                tqdm.write(f"eomt predict: {paths[index]}: cannot write results: {e}", file=sys.stderr)
        bar.update(len(pending))
        pending.clear()

    for index, path in enumerate(paths):
        if args.skip_existing and results.done(stems[index], str(path), settings, out):
            skipped += 1
            bar.update(1)
            continue
        try:
            pending.append((index, read_image(path, args.max_pixels or None)))
        except (ImageReadError, OSError) as e:
            failed.append(str(path))
            tqdm.write(f"eomt predict: skipped {e}", file=sys.stderr)
            bar.update(1)
            continue
        if len(pending) >= predictor.batch_size:
            flush()
    flush()
    bar.close()

    if task in ("panoptic", "instance"):
        bad = set(failed)
        records = [None if str(p) in bad else results.records.get(s) for p, s in zip(paths, stems)]
        categories = formats.coco_categories(predictor.class_names, cfg.stuff_classes, category_ids)
        name = "panoptic.json" if task == "panoptic" else "instances.json"
        written.append(write_json(out / name, writers.merge(records, ids, task, categories)))

    elapsed = time.perf_counter() - start
    done = len(paths) - len(failed)
    already = f" ({skipped} already there)" if skipped else ""
    print(
        f"eomt predict: {done} image(s) done{already}, {len(failed)} failed, {len(written)} file(s) written "
        f"to {out} in {elapsed:.1f} s"
    )
    if failed:
        print(f"eomt predict: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
