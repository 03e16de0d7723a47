"""The result files of `eomt predict` for a video `<stem>.<ext>` (input number `video_id`, from 1):

- `<stem>_overlay.mp4`: the kept frames annotated (one colour per track, a legend of the tracks in
  view; `eomt.inference.video_overlay`), at the source rate divided by the stride (H.264 where the
  FFmpeg build has it, else MPEG-4);
- panoptic: `<stem>_frames/<frame>_panoptic.png` per kept frame (COCO panoptic colours), semantic:
  `<stem>_frames/<frame>_semantic.png` (class indices); `<frame>` is the source frame index, 6 digits;
- `<stem>_video.json`: {"source", "video_id", "task", "fps" (source), "stride", "output_fps",
  "height", "width", "num_frames" (kept), "frames_expected" (the kept frames the container
  announces, null if it does not say: more than "num_frames" when the file ends early), "frames":
  one record per kept frame: {"frame" (source index), "time" (seconds), and "png" + "segments_info"
  (panoptic: COCO segments, each with "track_id"), "instances" (COCO results with RLE masks, each
  with "track_id": a VidEoMT's whatever its score, an image model's for those scoring at least the
  predictor's `track_threshold` (`eomt predict --vis-threshold`, what the overlay draws); null for
  the others and for an empty mask) or "png" + "classes"
  (semantic: the class indices present)};
- instance: the video's tracks in YouTube-VIS results form (`video.youtube_vis_tracks`: every track,
  at most the best `VIS_TOP_K`), which the command gathers over
  all videos into `youtube_vis_results.json`.
Each file is written atomically; the JSON last, so `<stem>_video.json` means the video is complete.
Then the frame PNGs of this task that the JSON does not list (an earlier run with another stride or
--max-frames: `<stem>_frames/NNNNNN_<task>.png` only) are removed.
It also keeps the `settings` the video was segmented with (model, task, options, stride,
max_frames, the source's size and modification time): `resume` skips a video whose JSON holds the
same ones (`eomt predict --skip-existing`) and takes its tracks from there.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from eomt.errors import MissingFileError
from eomt.inference import formats
from eomt.inference.io import write_json, write_png
from eomt.inference.video import VideoFrame, VideoPredictor, youtube_vis_tracks
from eomt.inference.video_io import VideoReader, VideoReadError, VideoWriter
from eomt.inference.video_overlay import FrameAnnotator

VIS_RESULTS_NAME = "youtube_vis_results.json"


@dataclass
class VideoOutcome:
    """What became of one video: its files `written`, `frames` done in `seconds`, its YouTube-VIS
    `tracks` (instance task), or the `error` line that stopped it."""

    source: Path
    written: list[Path] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    tracks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    frames_expected: int | None = None

    @property
    def truncated(self) -> bool:
        """Whether fewer frames decoded than the container announced (a file cut short)."""
        return self.frames_expected is not None and self.frames < self.frames_expected


def video_settings(source: Path, settings: dict[str, Any] | None, stride: int, max_frames: int | None) -> dict[str, Any]:
    """What makes a video's result files reusable: the run's `settings`, the frame choice and the
    source file's identity (size, modification time in ns). JSON-normalised for comparison."""
    stat = source.stat()
    record = {**(settings or {}), "stride": stride, "max_frames": max_frames,
              "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
    return json.loads(json.dumps(record, default=str))


def finished_video(out: Path, stem: str, video_id: int, settings: dict[str, Any]) -> VideoOutcome | None:
    """The outcome of a video already done with these `settings` (its `<stem>_video.json` and
    overlay exist, same settings and video id), else None (an unreadable JSON counts as not done)."""
    path, overlay = out / f"{stem}_video.json", out / f"{stem}_overlay.mp4"
    if not (path.is_file() and overlay.is_file()):
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if document.get("settings") != settings or document.get("video_id") != video_id:
        return None
    records = document.get("frames", [])
    tracks = youtube_vis_tracks(records, video_id) if document.get("task") == "instance" else []
    return VideoOutcome(Path(document["source"]), [], tracks=tracks, skipped=True)


def _frame_record(frame: VideoFrame, task: str, stem: str, out: Path, video_id: int, num_classes: int,
                  category_ids: Sequence[int] | None, written: list[Path]) -> dict[str, Any]:
    """The record of one frame in `<stem>_video.json`, writing its PNG (panoptic, semantic)."""
    record: dict[str, Any] = {"frame": frame.index, "time": round(frame.time, 6)}
    name = f"{stem}_frames/{frame.index:06d}_{task}.png"
    if task == "panoptic":
        written.append(write_png(out / name, formats.id_to_rgb(frame.result.segmentation)))
        entry = formats.panoptic_to_coco(frame.result, video_id, name, category_ids)
        segments = [{**s, "track_id": t} for s, t in zip(entry["segments_info"], frame.track_ids)]
        record.update(png=name, segments_info=segments)
    elif task == "instance":
        entries = formats.instances_to_coco(frame.result, video_id, category_ids)
        record["instances"] = [{**e, "track_id": t} for e, t in zip(entries, frame.track_ids)]
    else:
        written.append(write_png(out / name, formats.semantic_to_png_array(frame.result, num_classes)))
        record.update(png=name, classes=[int(c) for c in frame.track_ids])
    return record


def write_video(
    predictor: VideoPredictor,
    source: Path,
    out: Path,
    stem: str,
    video_id: int,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    category_ids: Sequence[int] | None = None,
    on_start: Callable[[int | None], None] | None = None,
    on_frame: Callable[[], None] | None = None,
    settings: dict[str, Any] | None = None,
    resume: bool = False,
) -> VideoOutcome:
    """Segment the video `source` and write its files into `out` (module docstring).

    on_start(kept frame count, None if unknown) is called once the file is open, on_frame() after
    each frame (a progress bar). settings: the run's options, kept in the JSON; resume: return the
    finished outcome (`skipped`) when the JSON holds the same settings. Raises `VideoReadError` /
    `MissingFileError` for a file that cannot be read (a partial overlay video is removed; frame
    PNGs already written stay).
    """
    if not source.is_file():
        raise MissingFileError(f"{source}: no such video file")
    kept = video_settings(source, settings, stride, max_frames)
    if resume and (done := finished_video(out, stem, video_id, kept)) is not None:
        return done
    task, cfg = predictor.task, predictor.predictor.config
    names = predictor.predictor.class_names
    written: list[Path] = []
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with VideoReader(source) as reader:
        info = reader.info
        if on_start is not None:
            on_start(info.kept_frames(stride, max_frames))
        overlay_path = out / f"{stem}_overlay.mp4"
        annotate: FrameAnnotator | None = None
        with VideoWriter(overlay_path, info.rate / stride) as video:
            for frame in predictor.frames(reader.read_frames(stride, max_frames), info.rate):
                h, w = frame.image.shape[-2:]
                if annotate is None:
                    annotate = FrameAnnotator(h, w, names, max_track=max(99, cfg.num_queries))
                video.write(annotate(frame.image, frame.result, frame.shown_track_ids()))
                records.append(_frame_record(frame, task, stem, out, video_id, cfg.num_classes,
                                             category_ids, written))
                if on_frame is not None:
                    on_frame()
            if not records:  # leaves the `with`: no overlay video is put in place
                raise VideoReadError(f"{source}: cannot read video: no frame could be decoded")
        written.append(overlay_path)
    seconds = time.perf_counter() - start
    expected = info.kept_frames(stride, max_frames) if info.frame_count is not None else None
    document = {"source": str(source), "video_id": video_id, "task": task, "fps": round(info.fps, 6),
                "stride": stride, "output_fps": round(info.fps / stride, 6), "height": info.height,
                "width": info.width, "num_frames": len(records), "frames_expected": expected,
                "settings": kept, "frames": records}
    written.append(write_json(out / f"{stem}_video.json", document))
    remove_stale_frames(out, stem, task, {r["png"] for r in records if "png" in r})
    tracks = youtube_vis_tracks(records, video_id) if task == "instance" else []
    return VideoOutcome(source, written, len(records), seconds, tracks, frames_expected=expected)


def remove_stale_frames(out: Path, stem: str, task: str, listed: set[str]) -> list[Path]:
    """Remove the PNGs of `task` in `out/<stem>_frames/` (named `NNNNNN_<task>.png`, 6 digits, as
    this module writes them) that `listed` (paths relative to `out`) does not hold: those of an
    earlier run with other frames. Other files are never touched. Returns the removed paths."""
    folder = out / f"{stem}_frames"
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"\d{{6}}_{re.escape(task)}\.png")
    removed = []
    for path in sorted(folder.iterdir()):
        if pattern.fullmatch(path.name) and path.is_file() and f"{stem}_frames/{path.name}" not in listed:
            path.unlink()
            removed.append(path)
    return removed
