"""`eomt predict`: segment image and video files, folders and globs; write result files and overlays.

Per image `<stem>_overlay.png`, plus per task:
- panoptic: `<stem>_panoptic.png` (COCO panoptic colours) and its entry in `panoptic.json`;
- instance: entries in `instances.json` (COCO results, RLE masks);
- semantic: `<stem>_semantic.png` (class-index label map).
The files are written by the task's writer (`eomt.inference.writers`).
Each finished image adds a line to `results.jsonl` (`eomt.inference.result_log`), so a killed run
keeps its work: `--skip-existing` resumes it. Category ids are the checkpoint's dataset ids; image ids
are the dataset's (`--images-json`) or 1..N in input order, listed with the file names.
Videos (.mp4 .avi .mov .mkv .webm, mixed freely with images) are segmented frame by frame with track
ids (`--stride`, `--max-frames`); their files: `eomt.inference.video_writers` (`--skip-existing`
passes over a video finished with the same options).
An unreadable image or video is reported by name and skipped; the exit code is 1 if any failed.
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
from eomt.errors import InputError, MissingFileError, OptionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image and video files (.mp4 .avi .mov .mkv .webm), folders or glob patterns")
    parser.add_argument("--model", required=True, help="checkpoint file, folder or hub name")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--task", choices=TASKS, default=None, help="default: the model's own task")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16", "int8"), default="fp32",
                        help="bf16: weights and activations in bf16; fp16: autocast, CUDA only; int8: the ViT's "
                             "linear layers in int8, CPU only (default: fp32)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument("--merge-tokens", nargs="?", type=float, const=True, default=None, metavar="TAU",
                        help="ALGM token merging: fewer FLOPs where the image is uniform; optionally the "
                             "local stage's cosine similarity threshold (default 0.88; higher merges less, "
                             "above 1 nothing); the global stage counts adaptively per image")
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
                        help="instance overlays: draw instances scoring at least this (default: 0.5). "
                             "It sets what is drawn, and which instances an image model links into video "
                             "tracks; instances.json and a VidEoMT's track ids and youtube_vis_results.json keep "
                             "every scored instance (the best 10 tracks per video, the official VidEoMT rule)")
    parser.add_argument("--stride", type=int, default=1, metavar="N",
                        help="videos: segment every N-th frame (default: 1, every frame)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="videos: stop after N segmented frames, a preview (default: all)")
    add_trust_pickle(parser)
    parser.add_argument("--category-ids", default=None, metavar="JSON",
                        help="class index -> dataset category id for the JSON outputs: a JSON list such as "
                             "'[1,2,3]' or a file holding one (default: the ids stored in the checkpoint, "
                             "else the class index)")
    parser.add_argument("--images-json", type=Path, default=None, metavar="JSON",
                        help="the dataset's COCO-style JSON when the inputs are its images: image ids are "
                             "taken from its \"images\" (matched by file_name); default: 1..N in input order")
    parser.add_argument("--skip-existing", action="store_true",
                        help="resume: pass over images whose results (a line in results.jsonl and its "
                             "files) and videos whose results (<stem>_video.json, same options) are already in --out")


def check_options(args: argparse.Namespace) -> None:
    """One ValueError line naming the first option out of its range, before anything is loaded."""
    fractions = {"--threshold": args.threshold, "--mask-threshold": args.mask_threshold,
                 "--overlap-threshold": args.overlap_threshold, "--vis-threshold": args.vis_threshold}
    for name, value in fractions.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise OptionError(f"{name}: {value:g} is not a score; expected a number in [0, 1]")
    for name, value in {"--top-k": args.top_k, "--batch-size": args.batch_size, "--stride": args.stride,
                        "--max-frames": 1 if args.max_frames is None else args.max_frames}.items():
        if value < 1:
            raise OptionError(f"{name}: {value} must be at least 1")
    if args.max_pixels < 0:
        raise OptionError(f"--max-pixels: {args.max_pixels} must be >= 0 (0 = no limit)")
    from eomt.inference.predictor import COMPILE_MODES

    if args.compile is not None and args.compile not in COMPILE_MODES:
        hint = difflib.get_close_matches(args.compile, COMPILE_MODES, n=1)
        raise OptionError(
            f"--compile: unknown mode {args.compile!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (expected --compile alone or one of: {', '.join(COMPILE_MODES)})"
        )
    if args.tile_overlap is not None and args.tile is None:
        raise OptionError(f"--tile-overlap: {args.tile_overlap} has no effect without --tile SIZE")
    if args.tile is not None and args.tile < 1:
        raise OptionError(f"--tile: {args.tile} must be >= 1 pixel")
    if args.out.exists() and not args.out.is_dir():
        raise OptionError(f"--out: {args.out} is a file; expected an output folder (created if missing)")


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders -> their image and video files; globs -> matching image and video
    files. Sorted, unique."""
    from eomt.inference.io import IMAGE_EXTENSIONS
    from eomt.inference.video_io import VIDEO_EXTENSIONS

    def is_image(p: Path) -> bool:
        return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS

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
            raise MissingFileError(f"{item}: no such file or folder")
        if not matches:
            raise MissingFileError(f"{item}: no images found (looked for images "
                                   f"{', '.join(IMAGE_EXTENSIONS)} and videos {', '.join(VIDEO_EXTENSIONS)})")
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


def _read_category_ids(value: str | None, num_classes: int) -> list[int] | None:
    """--category-ids: an inline JSON list (starts with "[") or a file holding one."""
    if value is None:
        return None
    path = value if value.lstrip().startswith("[") else Path(value)
    try:
        ids = json.loads(path if isinstance(path, str) else path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--category-ids {value}: cannot read category ids: {e}") from None
    if not isinstance(ids, list) or len(ids) != num_classes or not all(isinstance(i, int) for i in ids):
        raise InputError(f"--category-ids {value}: expected a JSON list of {num_classes} integers (one per class)")
    return ids


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eomt.inference import result_log
    from eomt.inference.predictor import Predictor
    from eomt.inference.video_io import is_video
    from eomt.inference.writers import make_writer, write_predictions

    check_options(args)
    inputs = collect_inputs(args.inputs)
    result_log.check_out_folder(args.out, args.inputs)
    all_stems = dict(zip(inputs, unique_stems(inputs)))  # one name space: clip.png and clip.mp4 differ
    paths = [p for p in inputs if not is_video(p)]
    videos = [p for p in inputs if is_video(p)]
    ids = result_log.image_ids(paths, args.images_json)
    video_model = _video_model(args)  # a VidEoMT checkpoint: its image model segments the images
    if video_model is not None and videos and (args.tile is not None or args.compile):
        raise OptionError("--tile / --compile: a VidEoMT runs whole frames one at a time; leave them out")
    predictor = Predictor(
        video_model.eomt if video_model is not None else args.model, task=args.task, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        compile=args.compile or False,
        threshold=args.threshold, mask_threshold=args.mask_threshold,
        overlap_threshold=args.overlap_threshold, top_k=args.top_k,
        tile=args.tile, tile_overlap=args.tile_overlap, trust_pickle=args.trust_pickle,
        max_pixels=args.max_pixels or None, token_merging=args.merge_tokens,
    )
    cfg, task, out = predictor.config, predictor.task, args.out
    # The dataset ids the model was trained with (kept in its checkpoint), unless given here.
    category_ids = _read_category_ids(args.category_ids, cfg.num_classes) or (list(cfg.category_ids) or None)
    # What makes a line reusable by --skip-existing: the same model, task and options.
    settings = {"model": str(args.model), "task": task, "threshold": args.threshold,
                "mask_threshold": args.mask_threshold, "overlap_threshold": args.overlap_threshold,
                "top_k": args.top_k, "vis_threshold": args.vis_threshold, "dtype": args.dtype,
                "tile": args.tile, "tile_overlap": args.tile_overlap, "category_ids": category_ids}
    if args.merge_tokens is not None:  # only when set: lines written without merging stay reusable
        settings["merge_tokens"] = args.merge_tokens
    written: list[Path] = []
    failed: list[int] = []
    if paths:
        writer = make_writer(task, out, paths, [all_stems[p] for p in paths], ids, settings, predictor.class_names,
                             num_classes=cfg.num_classes, stuff_classes=cfg.stuff_classes,
                             category_ids=category_ids, vis_threshold=args.vis_threshold,
                             resume=args.skip_existing)
        skipped = 0
        start = time.perf_counter()
        with tqdm(total=len(paths), desc=f"eomt predict ({task})", unit="img", file=sys.stderr) as bar:
            for outcome in write_predictions(predictor, writer, args.max_pixels or None, resume=args.skip_existing):
                written.extend(outcome.written)
                skipped += outcome.skipped
                if outcome.error is not None:
                    failed.append(outcome.index)
                    tqdm.write(f"eomt predict: {outcome.error}", file=sys.stderr)
                bar.update(1)
        written.extend(writer.finish(failed))

        elapsed = time.perf_counter() - start
        done = len(paths) - len(failed)
        already = f" ({skipped} already there)" if skipped else ""
        print(
            f"eomt predict: {done} image(s) done{already}, {len(failed)} failed, {len(written)} file(s) written "
            f"to {out} in {elapsed:.1f} s"
        )
    bad = [str(paths[i]) for i in failed]
    if videos:  # after the images: `eomt.commands.predict_video`
        from eomt.commands.predict_video import run_videos

        source = predictor if video_model is None else _video_predictor(video_model, predictor, args)
        failed_videos, _ = run_videos(args, source, videos, [all_stems[v] for v in videos], category_ids, settings)
        bad += [str(v) for v in failed_videos]
    if bad:
        print(f"eomt predict: failed: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


def _video_model(args: argparse.Namespace) -> Any:
    """The VidEoMT that `--model` names (our file or a transformers folder), else None."""
    from eomt.checkpoints.videomt import is_video_source, load_video_model

    return load_video_model(args.model).to(args.device) if is_video_source(args.model) else None


def _video_predictor(model: Any, predictor: Any, args: argparse.Namespace) -> Any:
    """A `VideoPredictor` streaming `model` (VidEoMT) with the options of the image `predictor`."""
    from eomt.inference.video import VideoPredictor

    try:
        return VideoPredictor(model, track_threshold=args.vis_threshold, task=predictor.task, device=args.device,
                              dtype=args.dtype, batch_size=args.batch_size, threshold=args.threshold,
                              mask_threshold=args.mask_threshold, overlap_threshold=args.overlap_threshold,
                              top_k=args.top_k, max_pixels=args.max_pixels or None)
    except ValueError as e:
        raise OptionError(f"--task {predictor.task}: {e}") from None

