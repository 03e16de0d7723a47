"""The video inputs of `eomt predict`: each video segmented frame by frame with track ids, its files
written (`eomt.inference.video_writers`), a progress bar of frames done / total with the rate, and
a summary line with frames/s. An unreadable video is reported by name and skipped, as an image; one
that decodes fewer frames than its container announces (a file cut short) keeps its results, with
one warning line on stderr naming the file and both counts.
For the instance task, `youtube_vis_results.json` holds the tracks of all videos of the run
(video ids 1..N in input order among the videos): its tracks, the best
`eomt.inference.video.VIS_TOP_K` per video (a VidEoMT's whatever `--vis-threshold`, which sets what
the overlay draws; an image model links only the instances drawn).
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
        bars: list[tqdm] = []  # drawn once the file is open and its frame count known

        def start(total: int | None, source: Path = source, bars: list[tqdm] = bars) -> None:
            bars.append(tqdm(total=total, desc=f"eomt predict {source.name}", unit="frame", file=sys.stderr,
                             bar_format=PROGRESS_FORMAT, leave=False))

        try:
            outcome = write_video(video_predictor, source, args.out, stem, video_id, stride=args.stride,
                                  max_frames=args.max_frames, category_ids=category_ids,
                                  on_start=start, on_frame=lambda bars=bars: bars[0].update(), settings=settings,
                                  resume=bool(getattr(args, "skip_existing", False)))
        except (EomtError, OSError) as e:
            failed.append(source)
            outcome = None
            message = f"eomt predict: skipped {e}"
        finally:
            for bar in bars:
                bar.close()
        if outcome is None:
            print(message, file=sys.stderr)  # after the bar is gone: it is not drawn again below
            continue
        if outcome.truncated:
            print(f"eomt predict: warning: {source}: {outcome.frames} of {outcome.frames_expected} frames "
                  f"decoded; the stream ends early", file=sys.stderr)
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
