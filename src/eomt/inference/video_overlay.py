"""Annotated video frames: one stable colour per track, and a legend of the tracks in view.

Every frame of a video must have one size, so the legend panel has a fixed width (that of the
longest possible entry, `#<track> <longest class name>`) and the frame's height; entries that do
not fit are summed up as "+k more". Colours come from `eomt.inference.tracks.track_colors`: a track
keeps its colour in every frame. Semantic results have no instances: each class is its own "track"
(id = class index, coloured as the image overlays colour it). Pixels are blended and boundaries
drawn by `eomt.inference.visualize.paint`, the legend drawn by `visualize.with_legend`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from eomt.inference.tracks import track_colors
from eomt.inference.visualize import class_colors, paint, with_legend
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

_PANEL = np.array([24, 24, 24], dtype=np.uint8)
_GREY = np.array([80, 80, 80], dtype=np.uint8)


class FrameAnnotator:
    """Draws frames of `height` x `width` pixels into pictures of one fixed size `(height, out_width)`.

    class_names: the model's class names; max_track: the largest track id expected (sizes the legend).
    """

    def __init__(self, height: int, width: int, class_names: Sequence[str], max_track: int = 9999,
                 alpha: float = 0.55) -> None:
        self.height, self.width, self.alpha = height, width, alpha
        self.class_names = list(class_names)
        longest = max(self.class_names, key=len, default="")
        probe = np.zeros((1, width, 3), dtype=np.uint8)
        one = with_legend(probe, [(f"#{max_track} {longest}", _GREY)])
        two = with_legend(probe, [(f"#{max_track} {longest}", _GREY)] * 2)
        self.out_width = one.width
        row = two.height - one.height  # the legend's row height, and its margins
        self.rows = max(1, (height - (one.height - row)) // row)

    def _entries(self, ids: list[int], labels: list[int], colors: np.ndarray, tracks: bool) -> list:
        order = np.argsort(ids, kind="stable")
        entries = [(f"#{ids[i]} {self._name(labels[i])}" if tracks else self._name(labels[i]), colors[i])
                   for i in order]
        if len(entries) > self.rows:
            entries = entries[: self.rows - 1] + [(f"+{len(entries) - self.rows + 1} more", _GREY)]
        return entries

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"

    def __call__(self, image: Tensor, result: PanopticResult | InstanceResult | SemanticResult,
                 track_ids: Sequence[int | None]) -> np.ndarray:
        """The annotated frame (height, out_width, 3) uint8 of image (3, H, W) and its result, with
        `track_ids` as given by `MaskLinker.update` (segments / instances without one are not drawn)."""
        if isinstance(result, SemanticResult):
            labels = result.labels.cpu().long()
            present = [int(c) for c in track_ids]
            colors = np.zeros((int(labels.max()) + 2 if labels.numel() else 2, 3), dtype=np.uint8)
            colors[1:] = class_colors(torch.arange(len(colors) - 1))
            picture = paint(image, labels + 1, colors, self.alpha)  # ids shifted: 0 is "unpainted"
            entries = self._entries(present, present, class_colors(present), tracks=False)
            return self._fit(picture, entries)
        drawn = [i for i, t in enumerate(track_ids) if t is not None]
        tids = [int(track_ids[i]) for i in drawn]
        colors = np.zeros((len(drawn) + 1, 3), dtype=np.uint8)  # row 0: unpainted
        colors[1:] = track_colors(tids)
        h, w = image.shape[-2:]
        if isinstance(result, PanopticResult):
            # Segment id -> row of its colour (1..), for the segments with a track.
            lut = torch.zeros(max([s["id"] for s in result.segments], default=0) + 1, dtype=torch.long)
            seg_ids = torch.tensor([result.segments[i]["id"] for i in drawn], dtype=torch.long)
            lut[seg_ids] = torch.arange(1, len(drawn) + 1)
            ids = lut[result.segmentation.cpu()]  # (H, W)
            labels = [int(result.segments[i]["category_id"]) for i in drawn]
        else:
            # Per pixel the best-scoring drawn instance: painted worst first, so the best is on top.
            scores = result.scores.cpu()[drawn]
            ids = torch.zeros(h, w, dtype=torch.long)
            for rank in scores.argsort().tolist():
                ids.masked_fill_(result.masks[drawn[rank]].cpu(), rank + 1)
            labels = result.labels.cpu()[drawn].tolist()
        picture = paint(image, ids, colors, self.alpha)
        return self._fit(picture, self._entries(tids, labels, colors[1:], tracks=True))

    def _fit(self, picture: np.ndarray, entries: list) -> np.ndarray:
        """The picture and its legend on the fixed canvas (height, out_width)."""
        drawn = np.asarray(with_legend(picture, entries or [("(nothing found)", _GREY)]))
        canvas = np.empty((self.height, self.out_width, 3), dtype=np.uint8)
        canvas[:] = _PANEL
        h, w = min(self.height, drawn.shape[0]), min(self.out_width, drawn.shape[1])
        canvas[:h, :w] = drawn[:h, :w]
        return canvas
