"""`eomt demo`: train, evaluate and predict on the built-in synthetic scenes (no downloads)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of configs/synthetic/panoptic.yaml")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from eomt.demo import format_report, run_demo

    report = run_demo(args.overrides, out_dir=args.out, progress=not args.no_progress)
    print(format_report(report))
    print(f"report: {args.out}/report.md, pictures: {args.out}/predictions/, model: {report['model']}")
    return 0
