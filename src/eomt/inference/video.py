"""Segmenting videos: per-frame results of an EoMT, each segment with a track id stable across frames.

`VideoPredictor` runs a video file (or any iterable of frames) through a `Predictor`,
`predictor.batch_size` frames per forward pass, and gives one `VideoFrame` per kept frame: the
source frame index, its time in seconds (index / frames per second: a constant rate is assumed),
the image, the result (panoptic / instance / semantic, as for an image) and a track id per segment
(panoptic), per instance (instance) or per class present (semantic: the class index). Track ids
of an image EoMT come from linking masks frame to frame (`eomt.inference.tracks.MaskLinker`, rules
there), for the instances scoring at least `track_threshold` (a faint duplicate must not take an
object's track). A VidEoMT's come from its queries, for every instance with a mask whatever its
score: the YouTube-VIS results rank every scored track (`youtube_vis_tracks` keeps a video's best
`VIS_TOP_K`), and `track_threshold` only marks which instances are drawn (`VideoFrame.drawn`). An
empty mask has nothing to link or show and gets no track.

A `VidEoMT` (`eomt.models.video`) runs streaming: its query blocks see the frames one at a time in
order, carrying the propagated queries (`VidEoMT.step`), behind the same pre- and post-processing
as the image model (`StreamingNetwork`). Its query k is one object in every frame (VidEoMT's query
propagation), so no linking is done: the track id of a thing segment or an instance is the index
of the query that made it (`PanopticResult.queries`, `InstanceResult.queries`). A segment that
disappears keeps its id for as long as the video runs: when its query finds it again, in any later
frame, it has the same id; a new object taken by a query that had another object before shares
that id (the network's own identity, as the official VidEoMT evaluation). A stuff segment (one per
class and frame, made by the first query of its class) is tracked by its class: id K + class index
(K = the number of queries), so it never collides with a query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence, Union

import torch
from torch import Tensor, nn

from eomt.inference.predictor import Predictor
from eomt.inference.tracks import MaskLinker
from eomt.inference.video_io import VideoReader
from eomt.models.video import VidEoMT, VideoState
from eomt.structures import InstanceResult, PanopticResult, RLEMasks, SemanticResult

log = logging.getLogger(__name__)

Result = Union[PanopticResult, InstanceResult, SemanticResult]
# Tracks kept per video in the YouTube-VIS results: the official VidEoMT rule keeps its top 10 (query,
# class) tracks per video (`eomt.evaluation.video.clip_instances`, top_k=10).
VIS_TOP_K = 10


@dataclass
class VideoFrame:
    """One kept frame: source frame `index`, `time` in seconds, `image` (3, H, W) uint8, its
    `result`, `track_ids` (one per segment / instance / class present; None: not tracked) and
    `drawn` (one per instance: it scores at least the predictor's `track_threshold`; None: all)."""

    index: int
    time: float
    image: Tensor
    result: Result
    track_ids: list[int | None]
    drawn: list[bool] | None = None

    def shown_track_ids(self) -> list[int | None]:
        """`track_ids` with None for the instances not `drawn` (what an overlay draws)."""
        if self.drawn is None:
            return list(self.track_ids)
        return [t if d else None for t, d in zip(self.track_ids, self.drawn)]


class _Output(NamedTuple):
    class_logits: Tensor
    mask_logits: Tensor


class StreamingNetwork(nn.Module):
    """A VidEoMT behind the image network's call: a batch (B, 3, H, W) is B successive frames of one
    video, run in order through `VidEoMT.step`, the state carried from call to call. `reset()`
    before the next video."""

    def __init__(self, model: VidEoMT) -> None:
        super().__init__()
        self.model = model
        self.state: VideoState = model.init_state()

    def reset(self) -> None:
        """Start a new video (the learned queries start its first frame)."""
        self.state = self.model.init_state()

    def forward(self, frames: Tensor) -> _Output:
        """(B, 3, H, W) frames in time order -> class logits (B, K, C+1), mask logits (B, K, h, w)."""
        outs = []
        for t in range(frames.shape[0]):  # in order: frame t starts from frame t-1's queries
            out, self.state = self.model.step(frames[t : t + 1], self.state)
            outs.append(out)
        return _Output(torch.cat([o.class_logits for o in outs]), torch.cat([o.mask_logits for o in outs]))


class VideoPredictor:
    """Segment videos frame by frame with track ids (module docstring).

    model: a `Predictor`, a `VidEoMT`, or what `Predictor` accepts (an EoMT, a checkpoint path...);
    options: `Predictor`'s keyword arguments (task, device, dtype, batch_size, thresholds...) when
    the model is not a Predictor already. track_threshold: instances scoring below it are not drawn;
    an image model links only the others (module docstring), a VidEoMT keeps their query track ids.
    """

    def __init__(self, model: Predictor | VidEoMT | Any, track_threshold: float = 0.5, **options: Any) -> None:
        self.streaming: StreamingNetwork | None = None
        if isinstance(model, VidEoMT):
            if options.get("tile") is not None or options.get("compile"):
                raise ValueError("VideoPredictor: a VidEoMT runs frame by frame: no tile, no compile")
            predictor = Predictor(model.eomt, **options)
            if predictor.task == "semantic":
                raise ValueError("VideoPredictor: a VidEoMT runs whole frames; the semantic task cuts "
                                 "frames into windows (use panoptic or instance)")
            self.streaming = StreamingNetwork(model).to(predictor.device).eval()
            predictor._network = self.streaming  # the pre- and post-processing stay the image model's
            model = predictor
        self.predictor = model if isinstance(model, Predictor) else Predictor(model, **options)
        self.track_threshold = track_threshold

    @property
    def task(self) -> str:
        """The task of the results: panoptic, instance or semantic."""
        return self.predictor.task

    def frames(self, frames: Iterable[tuple[int, Tensor]], rate: Fraction | float = 1) -> Iterator[VideoFrame]:
        """`VideoFrame`s of (source index, RGB (3, H, W)) frames given in time order, at `rate`
        source frames per second; `predictor.batch_size` frames per forward pass."""
        if self.streaming is not None:
            self.streaming.reset()
        linker = MaskLinker()
        pending: list[tuple[int, Tensor]] = []

        def flush() -> Iterator[VideoFrame]:
            results = self.predictor.predict_tensors([image for _, image in pending])
            for (index, image), result in zip(pending, results):
                instance = isinstance(result, InstanceResult)
                shown = result.scores.cpu() >= self.track_threshold if instance else None
                if self.streaming is not None:  # a VidEoMT: every query with a mask is a track
                    keep = has_mask(result) if instance else None
                    ids = query_track_ids(result, keep, self.streaming.model.config.num_queries)
                else:  # linking: only the instances shown, so a faint duplicate never takes a track
                    ids = linker.update(result, has_mask(result) & shown if instance else None)
                drawn = shown.tolist() if shown is not None else None
                yield VideoFrame(index, float(index / rate), image, result, ids, drawn)
            pending.clear()

        for item in frames:
            pending.append(item)
            if len(pending) >= self.predictor.batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def __call__(self, path: str | Path, stride: int = 1, max_frames: int | None = None) -> Iterator[VideoFrame]:
        """`VideoFrame`s of a video file: frames 0, stride, 2*stride, ..., at most `max_frames`.
        Raises `VideoReadError` (file named) for a file that cannot be opened or decoded."""
        with VideoReader(path) as reader:
            yield from self.frames(reader.read_frames(stride, max_frames), reader.info.rate)


def has_mask(result: InstanceResult) -> Tensor:
    """(N,) bool: which instances have a non-empty mask (dense masks or COCO RLEs, `RLEMasks`)."""
    if isinstance(result.masks, RLEMasks):
        from pycocotools import mask as mask_utils

        return torch.as_tensor(mask_utils.area(result.masks.rles) > 0, dtype=torch.bool).reshape(-1)
    return result.masks.flatten(1).any(1).cpu()  # (N, H * W) -> (N,)


def query_track_ids(result: Result, keep: Tensor | None, num_queries: int) -> list[int | None]:
    """Track ids of a video model's result (module docstring): an instance's or thing segment's
    query index, K + class for a stuff segment; None for an instance not in `keep` (one without a
    mask, `has_mask`). Raises ValueError for a result without query indices (a tiled one)."""
    if isinstance(result, SemanticResult) or result.queries is None:
        raise ValueError("query_track_ids: the result has no query indices (panoptic or instance, untiled)")
    queries = result.queries.tolist()
    if isinstance(result, InstanceResult):
        kept = keep.tolist() if keep is not None else [True] * len(queries)
        return [q if k else None for q, k in zip(queries, kept)]
    return [q if s["isthing"] else num_queries + s["category_id"] for q, s in zip(queries, result.segments)]


def youtube_vis_tracks(frames: Sequence[dict[str, Any]], video_id: int,
                       top_k: int | None = VIS_TOP_K) -> list[dict[str, Any]]:
    """YouTube-VIS results of one video from its frame records (each {"instances": [COCO entries
    with "track_id"]}, one per kept frame): one entry per track, {"video_id", "category_id",
    "score" (mean over the frames it is in), "segmentations": an RLE or None per kept frame,
    "track_id"}, in track id order. Instances without a track id are left out; of the tracks, the
    `top_k` best scoring are kept (ties: the lower id; None: all), as the official VidEoMT rule
    (`VIS_TOP_K`): AP ranks every prediction, so a low score costs nothing but its slot."""
    tracks: dict[int, dict[str, Any]] = {}
    for t, frame in enumerate(frames):
        for inst in frame["instances"]:
            tid = inst.get("track_id")
            if tid is None:
                continue
            track = tracks.setdefault(tid, {"video_id": video_id, "category_id": inst["category_id"],
                                            "scores": [], "segmentations": [None] * len(frames)})
            track["scores"].append(inst["score"])
            track["segmentations"][t] = inst["segmentation"]
    out = []
    for tid in sorted(tracks):
        track = tracks[tid]
        scores = track.pop("scores")
        out.append({**track, "score": round(sum(scores) / len(scores), 6), "track_id": tid})
    if top_k is not None and len(out) > top_k:
        best = {t["track_id"] for t in sorted(out, key=lambda t: (-t["score"], t["track_id"]))[:top_k]}
        out = [t for t in out if t["track_id"] in best]
    return out
