"""Synthetic videos written in the YouTube-VIS format: the video own-data path with no download.

`eomt.data.export.export_synthetic(out, "ytvis")` writes, per split, what the registry's
`ytvis` format reads with its defaults (so `eomt data check ytvis/videomt_large_640 data.root=out`
and `eomt train ...` work unchanged):

  {split}.json                          videos (file_names), tracks (one RLE per frame, null where
                                        the object is absent) and categories
  {split}/JPEGImages/NNNNNN/NNNNN.jpg   the frames
  clips/{split}_NNNNNN.mp4              each video as a file to try `eomt predict` on (PyAV, the
                                        `video` extra; left out, with one log line, without it)

Video NNNNNN of a split is item NNNNNN of `SyntheticVideos(n, size, video_length, clip_length=None,
seed=split_seed(seed, split), task="instance")`: shapes that move, occlude each other, enter and
leave. Only the thing classes are annotated (YouTube-VIS is an instance format), with the COCO
formats' category ids (circle 11, square 12, triangle 17, cross 22 by default).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from eomt.classes import SYNTHETIC_THING_NAMES
from eomt.data.video_synthetic import SyntheticVideos

log = logging.getLogger(__name__)


def write_youtube_vis(out: Path, split: str, videos: SyntheticVideos, category_ids: Sequence[int],
                      save_image: Any, write_json: Any) -> None:
    """Write one split of `videos` (whole videos, instance task) under `out` (module docstring);
    category_ids: the id of each thing class in `SYNTHETIC_THING_NAMES` order."""
    js: dict[str, Any] = {"videos": [], "annotations": [], "categories": [
        {"id": int(i), "name": name} for i, name in zip(category_ids, SYNTHETIC_THING_NAMES)]}
    clips: list[tuple[Path, np.ndarray]] = []
    for v in range(len(videos)):
        clip, target = videos[v]
        frames = clip.permute(0, 2, 3, 1).numpy()  # (T, H, W, 3) uint8
        names = [f"{v:06d}/{t:05d}.jpg" for t in range(len(frames))]
        for name, frame in zip(names, frames):
            save_image(out / split / "JPEGImages" / name, frame, "JPEG")
        h, w = frames.shape[1:3]
        js["videos"].append({"id": v + 1, "height": int(h), "width": int(w), "length": len(names),
                             "file_names": names})
        masks = target.masks.numpy()  # (N, T, H, W) bool
        for n in range(masks.shape[0]):
            segs = [_rle(m) if m.any() else None for m in masks[n]]
            areas = [int(m.sum()) if m.any() else None for m in masks[n]]
            js["annotations"].append({"id": len(js["annotations"]) + 1, "video_id": v + 1, "iscrowd": 0,
                                      "category_id": int(category_ids[int(target.labels[n])]),
                                      "segmentations": segs, "areas": areas})
        clips.append((out / "clips" / f"{split}_{v:06d}.mp4", frames))
    write_json(out / f"{split}.json", js)
    _write_clips(clips)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_clips(clips: list[tuple[Path, np.ndarray]], fps: int = 10) -> None:
    """Each video as an mp4 (PyAV); without PyAV one log line and nothing written."""
    try:
        import av  # noqa: F401
    except ImportError:  # the `video` extra is not installed
        log.info("clips/ left out: writing mp4 needs PyAV (pip install 'eomt[video]')")
        return
    from eomt.inference.video_io import VideoWriter

    for path, frames in clips:
        path.parent.mkdir(parents=True, exist_ok=True)
        with VideoWriter(path, fps) as video:
            for frame in frames:
                video.write(frame)
