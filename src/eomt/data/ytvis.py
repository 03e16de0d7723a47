"""The YouTube-VIS format: one JSON of videos, per-video tracks and categories, and JPEG frames.

The JSON (2019/2021/2022 and OVIS share it) has `videos` ({"id", "height", "width", "file_names":
one path per frame, relative to the frame folder, e.g. "0043f083b5/00000.jpg"}), `annotations`
({"id", "video_id", "category_id", "iscrowd", "segmentations": one RLE, polygon list or null per
frame}) and `categories` ({"id", "name"}; contiguous ids in increasing category-id order). Frames
are read from a folder or straight from the downloaded zip (`eomt.data.sources`); the folder that
holds the `file_names` inside it (`JPEGImages/`, `train/JPEGImages/`, ...) is found from the first
frame. The JSON may be a file or the one .json member of a zip.

Item i is `(clip uint8 (T, 3, H, W), VideoTarget)` of video i (in the JSON's order): T frames
sampled for training (`clip_length`, `sampling`, `frame_range`), or the whole video when
`clip_length` is None (evaluation). Annotation problems (unknown category, a track whose length
differs from its video's, a segmentation that cannot be decoded) are recorded in `index_errors`
and the track skipped; a missing frame is a DatasetError naming the file when the clip is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from eomt.data.coco_json import _segmentation_problem, decode_segmentations
from eomt.data.sources import DatasetError, Source, ZipSource, open_source, read_json_file
from eomt.data.user import categories_from_json
from eomt.data.video import random_generator, sample_clip
from eomt.structures import VideoTarget

SAMPLINGS = ("random", "first")


def read_annotations(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """(parsed JSON, its name for messages) of a .json file or of the one .json member of a zip."""
    p = Path(path)
    if p.suffix.lower() != ".zip":
        return read_json_file(p), str(p)
    source = ZipSource(p)
    found = [m for m in source.members() if m.lower().endswith(".json")]
    if len(found) != 1:
        raise DatasetError(f"{p}: expected one .json annotation file in the archive, found {len(found)}"
                           + (f" ({', '.join(found[:5])})" if found else ""))
    return source.read_json(found[0]), source.where(found[0])


class YouTubeVIS(torch.utils.data.Dataset):
    """A YouTube-VIS-format dataset (module docstring): annotations JSON + frames folder or zip.

    clip_length: frames per item (5: the official recipe), None for whole videos. sampling "random"
    draws each item's frames with `eomt.data.video.sample_clip` (frame_range 20: the official
    `SAMPLING_FRAME_RANGE`), "first" takes the first clip_length frames.
    """

    def __init__(self, annotations: str | os.PathLike[str], images: str | os.PathLike[str],
                 clip_length: int | None = 5, sampling: str = "random", frame_range: int | None = 20,
                 transform: Callable[[Tensor, VideoTarget], Any] | None = None) -> None:
        if sampling not in SAMPLINGS:
            raise DatasetError(f"YouTubeVIS: sampling={sampling!r}; expected one of {SAMPLINGS}")
        if clip_length is not None and clip_length < 1:
            raise DatasetError(f"YouTubeVIS: clip_length={clip_length}; expected >= 1 or None (whole videos)")
        js, self.json_name = read_annotations(annotations)
        category_ids, names, _ = categories_from_json(js, self.json_name)
        self.class_names, self.stuff_classes = tuple(names), ()
        self.category_ids = tuple(sorted(category_ids, key=category_ids.get))  # JSON id of class c
        self.images: Source = open_source(images)
        self.clip_length, self.sampling, self.frame_range, self.transform = clip_length, sampling, frame_range, transform
        self.index_errors: list[str] = []
        self.videos, self.tracks = self._index(js, category_ids)
        self.prefix = self._find_prefix()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _index(self, js: Mapping[str, Any], cats: dict[int, int]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
        try:
            videos = [{"id": v["id"], "height": int(v["height"]), "width": int(v["width"]),
                       "file_names": list(v["file_names"])} for v in js["videos"]]
            anns = list(js.get("annotations") or [])  # test splits come without annotations
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{self.json_name}: not a YouTube-VIS JSON (a video lacks {e})") from None
        where = {v["id"]: i for i, v in enumerate(videos)}
        tracks: list[list[Any]] = [[] for _ in videos]
        for ann in anns:
            name = f"{self.json_name}: annotation {ann.get('id')}"
            i = where.get(ann.get("video_id"))
            if i is None:
                self.index_errors.append(f"{name} has video_id {ann.get('video_id')} not listed in 'videos'")
                continue
            label, segs, video = cats.get(ann.get("category_id"), -1), ann.get("segmentations"), videos[i]
            if label < 0:
                self.index_errors.append(f"{name}: unknown category_id {ann.get('category_id')}")
                continue
            if not isinstance(segs, list) or len(segs) != len(video["file_names"]):
                found = len(segs) if isinstance(segs, list) else type(segs).__name__
                self.index_errors.append(f"{name}: {found} segmentations, expected one per frame "
                                         f"({len(video['file_names'])}, null where absent)")
                continue
            size = (video["height"], video["width"])
            problem = next((p for p in (_segmentation_problem(s, size) for s in segs if s is not None) if p), None)
            if problem:
                self.index_errors.append(f"{name}: {problem}")
                continue
            tracks[i].append((segs, label, bool(ann.get("iscrowd", 0)), int(ann.get("id", len(tracks[i])))))
        return videos, tracks

    def _find_prefix(self) -> str:
        """The member folder the JSON's file_names are relative to ('' when they are at the root)."""
        first = next((v["file_names"][0] for v in self.videos if v["file_names"]), None)
        if first is None or self.images.exists(first):
            return ""
        hits = [m[: -len(first)] for m in self.images.members() if m.endswith("/" + first)]
        if not hits:
            raise DatasetError(f"{self.images.name}: frame {first} (the first of {self.json_name}) not found")
        return min(hits, key=len)

    def __len__(self) -> int:
        return len(self.videos)

    def item_name(self, index: int) -> str:
        """The video's frame folder, for messages."""
        first = self.videos[index]["file_names"][0] if self.videos[index]["file_names"] else ""
        return self.images.where(self.prefix + first.rsplit("/", 1)[0])

    def clip_frames(self, index: int) -> list[int]:
        """The frames of video `index` the next item reads (random clips draw from torch's RNG)."""
        n = len(self.videos[index]["file_names"])
        if self.clip_length is None:
            return list(range(n))
        if self.sampling == "first":
            return [min(t, n - 1) for t in range(self.clip_length)]
        return sample_clip(n, self.clip_length, random_generator(), self.frame_range)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"YouTubeVIS: index {index} out of range for {len(self)} videos")
        index %= len(self)
        clip, target = self.load(index, self.clip_frames(index))
        return self.transform(clip, target) if self.transform is not None else (clip, target)

    def load(self, index: int, frames: Sequence[int] | None = None) -> tuple[Tensor, VideoTarget]:
        """Frames `frames` (default: all) of video `index`: (T, 3, H, W) uint8 and the tracks present
        in them (`eomt data check` reads every frame through this)."""
        video = self.videos[index]
        frames = range(len(video["file_names"])) if frames is None else frames
        h, w = video["height"], video["width"]
        images = []
        for t in frames:
            member = self.prefix + video["file_names"][t]
            image = self.images.read_image(member)  # (H, W, 3); errors name the file
            if image.shape[:2] != (h, w):
                raise DatasetError(f"{self.images.where(member)}: size {image.shape[:2]} (H, W), expected "
                                   f"{(h, w)} as the video's height/width in {self.json_name}")
            images.append(image)
        clip = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)
        return clip, self._target(index, frames)

    def _target(self, index: int, frames: Sequence[int]) -> VideoTarget:
        video, tracks = self.videos[index], self.tracks[index]
        h, w, n = video["height"], video["width"], len(frames)
        masks = torch.zeros(len(tracks), n, h, w, dtype=torch.bool)  # (N, T, H, W)
        # every (track, frame) with a segmentation, decoded in one call
        where = [(k, i) for k, tr in enumerate(tracks) for i, t in enumerate(frames) if tr[0][t] is not None]
        segs = [tracks[k][0][frames[i]] for k, i in where]
        try:
            decoded = decode_segmentations(segs, h, w)  # (len(where), H, W)
        except Exception as e:  # pycocotools raises bare exceptions on malformed input
            raise DatasetError(f"{self.json_name}: video {video['id']}: cannot decode a segmentation ({e})") from None
        if where:
            rows = torch.tensor(where, dtype=torch.long)
            masks[rows[:, 0], rows[:, 1]] = decoded
        keep = masks.flatten(1).any(1)  # (N,) tracks with pixels in the clip
        return VideoTarget(
            masks=masks[keep],
            labels=torch.tensor([tr[1] for tr in tracks], dtype=torch.int64)[keep],
            is_crowd=torch.tensor([tr[2] for tr in tracks], dtype=torch.bool)[keep],
            track_ids=torch.tensor([tr[3] for tr in tracks], dtype=torch.int64)[keep],
            frame_indices=torch.tensor(list(frames), dtype=torch.int64),
        )
