"""The video inputs of `eomt predict`: each video segmented frame by frame with track ids, its files
written (`eomt.inference.video_writers`), a progress bar of frames done / total with the rate, and
a summary line with frames/s. An unreadable video is reported by name and skipped, as an image.
For the instance task, `youtube_vis_results.json` holds the tracks of all videos of the run
(video ids 1..N in input order among the videos).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from eomt.errors import EomtError

PROGRESS_FORMAT = "{desc} {n_fmt}/{total_fmt} frames {bar} {elapsed}<{remaining}, {rate_fmt}"


def run_videos(args: argparse.Namespace, predictor: object, videos: Sequence[Path], stems: Sequence[str],
               category_ids: Sequence[int] | None, settings: dict[str, Any] | None = None) -> tuple[list[Path], int]:
    """Segment `videos` (output names `stems`) into `args.out`; prints one line per failed video and
    a summary. `settings` (the run's options) are kept with each video's results; with
    `args.skip_existing` a video done with the same ones is not segmented again. Returns (the
    videos that failed, the number of files written)."""
    from tqdm import tqdm

    from eomt.inference.io import write_json
    from eomt.inference.video import VideoPredictor
    from eomt.inference.video_writers import VIS_RESULTS_NAME, write_video

    args.out.mkdir(parents=True, exist_ok=True)
    video_predictor = predictor if isinstance(predictor, VideoPredictor) else VideoPredictor(
        predictor, track_threshold=args.vis_threshold)
    failed: list[Path] = []
    written, frames, seconds, tracks, skipped = 0, 0, 0.0, [], 0
    for video_id, (source, stem) in enumerate(zip(videos, stems), start=1):
        with tqdm(total=None, desc=f"eomt predict {source.name}", unit="frame", file=sys.stderr,
                  bar_format=PROGRESS_FORMAT, leave=False) as bar:

            def start(total: int | None, bar: tqdm = bar) -> None:
                bar.total = total
                bar.refresh()

            try:
                outcome = write_video(video_predictor, source, args.out, stem, video_id, stride=args.stride,
                                      max_frames=args.max_frames, category_ids=category_ids,
                                      on_start=start, on_frame=bar.update, settings=settings,
                                      resume=bool(getattr(args, "skip_existing", False)))
            except (EomtError, OSError) as e:
                failed.append(source)
                tqdm.write(f"eomt predict: skipped {e}", file=sys.stderr)
                continue
        if outcome.skipped:
            skipped += 1
            tracks += outcome.tracks
            print(f"eomt predict: {source}: already there (--skip-existing)")
            continue
        written += len(outcome.written)
        frames += outcome.frames
        seconds += outcome.seconds
        tracks += outcome.tracks
        rate = outcome.frames / outcome.seconds if outcome.seconds else 0.0
        print(f"eomt predict: {source}: {outcome.frames} frame(s) in {outcome.seconds:.1f} s ({rate:.1f} frames/s)")
    if video_predictor.task == "instance" and len(failed) < len(videos):
        write_json(args.out / VIS_RESULTS_NAME, tracks)
        written += 1
    rate = frames / seconds if seconds else 0.0
    already = f" ({skipped} already there)" if skipped else ""
    print(f"eomt predict: {len(videos) - len(failed)} video(s) done{already}, {len(failed)} failed, {frames} frame(s) "
          f"in {seconds:.1f} s ({rate:.1f} frames/s)")
    return failed, written
