"""`eomt eval CONFIG --checkpoint PATH`: PQ / mIoU / AP of a checkpoint on the config's val split.

A video config (data.clip_length > 0) evaluates a VidEoMT on whole videos: video AP, AP50, AP75, AR1,
AR10 and identity switches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eomt.commands import add_trust_pickle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="a YAML file; a bundled config by name, e.g. coco/panoptic/eomt_large_640 (its checkout path "
        "configs/coco/panoptic/eomt_large_640.yaml works from any folder); or a preset, e.g. "
        "coco_panoptic_eomt_large_640, meaning the bundled config that reproduces it. `eomt configs` lists them",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--checkpoint", required=True, help="model to evaluate: any source `eomt predict` accepts")
    p.add_argument("--out", default=None,
                   help="write the metrics (with per-class values) as JSON here; the logs go to eval/ beside "
                        "it (without --out: no JSON, the logs in CHECKPOINT_DIR/eval/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_pickle(p)


def run(args: argparse.Namespace) -> int:
    """Evaluate (validation's per-batch step, `eomt.evaluation.evaluate_batch`, on every process),
    print the metrics and write them as JSON with --out."""
    from eomt.commands.train import format_metrics
    from eomt.config import load_experiment
    from eomt.training.evaluate import eval_log_dir, evaluate

    cfg = load_experiment(args.config, args.overrides)
    metrics, is_main = evaluate(cfg, args.checkpoint, progress=not args.no_progress,
                                log_dir=eval_log_dir(args.checkpoint, args.out), trust_pickle=args.trust_pickle)
    if not is_main:
        return 0
    print(format_metrics(metrics))
    if args.out:
        from eomt.files import UNDEFINED_METRIC, write_json

        # A metric with nothing to measure it on (no ground truth of that class or size) is NaN:
        # null in the file, the reason under "null_values".
        write_json(Path(args.out), metrics, indent=2, reason=UNDEFINED_METRIC)
    return 0
