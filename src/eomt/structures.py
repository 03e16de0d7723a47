"""Plain data passed between the stages: ground-truth targets, image geometry and per-task results.

Every dataset yields `(image uint8 (H, W, 3), Target)` (a video dataset `(clip, VideoTarget)`); the preprocessing records where each image
went (`ImageMeta`, `Windows`) and the post-processing reads it back; the post-processing returns one
of the `*Result` types per image; the evaluators consume results and targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence, Union

import numpy as np

import torch
from torch import Tensor

IGNORE_INDEX = 255


@dataclass
class Target:
    """Ground truth of one image as per-segment binary masks.

    masks: (N, H, W) bool; labels: (N,) int64 class ids in [0, C); is_crowd: (N,) bool.
    """

    masks: Tensor
    labels: Tensor
    is_crowd: Tensor

    @classmethod
    def empty(cls, height: int, width: int) -> "Target":
        return cls(
            torch.zeros(0, height, width, dtype=torch.bool),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.bool),
        )

    def __len__(self) -> int:
        return int(self.labels.numel())

    def to_semantic(self, ignore_index: int = IGNORE_INDEX) -> Tensor:
        """(H, W) int64 label map; pixels covered by no (non-crowd) mask get `ignore_index`."""
        h, w = self.masks.shape[-2:]
        out = torch.full((h, w), ignore_index, dtype=torch.int64, device=self.masks.device)
        keep = ~self.is_crowd
        masks, labels = self.masks[keep], self.labels[keep]
        if masks.numel():
            covered = masks.any(0)
            idx = masks.to(torch.uint8).argmax(0)  # (H, W) index of the first mask covering a pixel
            out = torch.where(covered, labels[idx], out)
        return out


@dataclass(frozen=True)
class ImageMeta:
    """Where one image went on its way into the network (all sizes (H, W) in pixels).

    original_size: the input image; scaled_size: after resizing (before padding or windowing);
    input_size: the network input it was placed in (the padded canvas, or one crop).
    """

    original_size: tuple[int, int]
    scaled_size: tuple[int, int]
    input_size: tuple[int, int]


@dataclass(frozen=True)
class Windows:
    """Sliding-window bookkeeping: crop i covers [start, end) of image `image_index`'s long side.

    offsets: one `(image_index, start, end)` per crop, in crop order (as transformers'
    `patch_offsets`); images: one `ImageMeta` per input image.
    """

    offsets: list[tuple[int, int, int]]
    images: list[ImageMeta]


@dataclass
class PanopticResult:
    """Panoptic prediction of one image in the COCO panoptic convention.

    segmentation: (H, W) int64 segment ids, 0 = no segment (void).
    segments: one dict per segment id: {"id", "category_id" (0-based class), "isthing", "score",
    "area"}.
    queries: (n,) int64, the network query that made each segment, in segment order (a stuff
    segment: the first query of its class); None where not known (tiled or joined results). A
    video model's query is the track identity.
    """

    segmentation: Tensor
    segments: list[dict[str, Any]] = field(default_factory=list)
    queries: Tensor | None = None


class RLEMasks:
    """N binary masks of one (H, W) image as COCO run-length encodings: the compact form of
    `InstanceResult.masks` for images whose dense (N, H, W) stack would take too much memory.

    Each mask is one pycocotools RLE dict {"size": [H, W], "counts": bytes} (runs in column-major
    order, alternately 0s and 1s, starting with 0s: the COCO results format), so results files and
    the evaluation use them as they are. It reads like the dense stack wherever masks are taken one
    at a time: `len(m)`, `m.shape` (N, H, W), `m[i]` is an (H, W) bool tensor decoded on demand,
    iterating decodes one mask after another, `m[indices]` (a slice, list or index tensor) is an
    `RLEMasks` of those masks. `to_dense()` makes the (N, H, W) bool stack (N x H x W bytes).
    `device` is where decoded masks are put.
    """

    dtype = torch.bool

    def __init__(self, rles: list[dict[str, Any]], size: tuple[int, int],
                 device: torch.device | str = "cpu") -> None:
        self.rles = list(rles)
        self.size = (int(size[0]), int(size[1]))
        self.device = torch.device(device)
        for i, rle in enumerate(self.rles):
            if [int(v) for v in rle["size"]] != list(self.size):
                raise ValueError(f"RLEMasks: mask {i} has size {list(rle['size'])}, expected {list(self.size)}")

    @staticmethod
    def encode_one(mask: Tensor) -> dict[str, Any]:
        """The COCO RLE of one (H, W) bool mask (the mask is copied once, column-major, as uint8)."""
        from pycocotools import mask as mask_utils

        column_major = mask.detach().bool().cpu().t().contiguous().numpy().view(np.uint8)  # (W, H)
        return mask_utils.encode(column_major.T[:, :, None])[0]  # .T: an (H, W) Fortran view

    @classmethod
    def encode(cls, masks: Tensor) -> "RLEMasks":
        """RLEs of a dense (N, H, W) bool stack, one mask at a time."""
        if masks.dim() != 3:
            raise ValueError(f"RLEMasks.encode: expected (N, H, W) masks, found shape {tuple(masks.shape)}")
        return cls([cls.encode_one(m) for m in masks], tuple(masks.shape[1:]), masks.device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rles), *self.size))

    def dim(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.rles)

    def __repr__(self) -> str:
        return f"RLEMasks(n={len(self.rles)}, size={self.size})"

    def _decode(self, rle: dict[str, Any]) -> Tensor:
        from pycocotools import mask as mask_utils

        column_major = mask_utils.decode(rle)  # (H, W) uint8, Fortran order
        return torch.from_numpy(column_major.T.view(np.bool_)).t().contiguous().to(self.device)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> "Tensor | RLEMasks":
        if isinstance(index, int) or (isinstance(index, Tensor) and index.dim() == 0):
            return self._decode(self.rles[int(index)])
        if isinstance(index, slice):
            return RLEMasks(self.rles[index], self.size, self.device)
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            index = index.nonzero()[:, 0]
        return RLEMasks([self.rles[int(i)] for i in (index.tolist() if isinstance(index, Tensor) else index)],
                        self.size, self.device)

    def __iter__(self) -> Iterator[Tensor]:
        for rle in self.rles:
            yield self._decode(rle)

    def to(self, device: torch.device | str) -> "RLEMasks":
        """The same masks, decoded onto `device` from now on (the encodings stay in host memory)."""
        return RLEMasks(self.rles, self.size, device)

    def cpu(self) -> "RLEMasks":
        return self.to("cpu")

    def to_dense(self) -> Tensor:
        """(N, H, W) bool masks on `device`."""
        out = torch.zeros(len(self.rles), *self.size, dtype=torch.bool, device=self.device)
        for i, mask in enumerate(self):
            out[i] = mask
        return out

    def area(self) -> Tensor:
        """(N,) int64 pixels per mask, from the runs (no decoding)."""
        from pycocotools import mask as mask_utils

        if not self.rles:
            return torch.zeros(0, dtype=torch.int64)
        return torch.from_numpy(mask_utils.area(self.rles).astype(np.int64))


Masks = Union[Tensor, RLEMasks]


def dense_masks(masks: Masks) -> Tensor:
    """(N, H, W) bool masks as a tensor, decoding `RLEMasks`."""
    return masks.to_dense() if isinstance(masks, RLEMasks) else masks


@dataclass
class InstanceResult:
    """Instance prediction of one image: masks (N, H, W), labels (N,) int64, scores (N,).

    masks: a bool tensor, or, for large images (see `eomt.inference.postprocess.instance`'s
    `mask_format`), `RLEMasks`, which index and iterate like the tensor, one mask at a time.
    queries: (N,) int64, the network query of each instance; None where not known (tiled or joined
    results). A video model's query is the track identity.
    """

    masks: Masks
    labels: Tensor
    scores: Tensor
    queries: Tensor | None = None


@dataclass
class SemanticResult:
    """Semantic prediction of one image: labels (H, W) int64; scores (C, H, W) when kept."""

    labels: Tensor
    scores: Tensor | None = None


@dataclass
class VideoTarget:
    """Ground truth of one clip as per-track masks.

    masks: (N, T, H, W) bool, an all-False (H, W) slice where track n is absent from frame t;
    labels: (N,) int64 class ids; is_crowd: (N,) bool; track_ids: (N,) int64, stable within a video;
    frame_indices: (T,) int64, the video frame each clip frame was taken from.
    """

    masks: Tensor
    labels: Tensor
    is_crowd: Tensor
    track_ids: Tensor
    frame_indices: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_frames(self) -> int:
        """T, the clip's number of frames."""
        return int(self.frame_indices.numel())

    def present(self) -> Tensor:
        """(N, T) bool: track n has at least one pixel in frame t."""
        return self.masks.flatten(2).any(2)  # (N, T)

    def frame(self, t: int) -> Target:
        """The image `Target` of clip frame t: the tracks present there (in track order)."""
        keep = self.masks[:, t].flatten(1).any(1)  # (N,)
        return Target(self.masks[keep, t], self.labels[keep], self.is_crowd[keep])

    def frame_track_ids(self, t: int) -> Tensor:
        """(N_t,) track ids of `frame(t)`'s segments, in the same order."""
        return self.track_ids[self.masks[:, t].flatten(1).any(1)]

    def select(self, frames: Sequence[int]) -> "VideoTarget":
        """The clip of the given frames (positions in this clip, repeats allowed); tracks absent
        from every selected frame are dropped, the others keep their ids."""
        idx = torch.as_tensor(list(frames), dtype=torch.long)
        masks = self.masks[:, idx]  # (N, T', H, W)
        keep = masks.flatten(1).any(1)  # (N,)
        return VideoTarget(masks[keep], self.labels[keep], self.is_crowd[keep], self.track_ids[keep],
                           self.frame_indices[idx])

    @classmethod
    def empty(cls, num_frames: int, height: int, width: int) -> "VideoTarget":
        """A clip of `num_frames` frames without any track."""
        return cls(torch.zeros(0, num_frames, height, width, dtype=torch.bool), torch.zeros(0, dtype=torch.int64),
                   torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64),
                   torch.arange(num_frames, dtype=torch.int64))


@dataclass
class VideoInstanceResult:
    """Instance tracks predicted for one video: masks (D, T, H, W) bool (all-False where the track
    is absent), labels (D,) int64, scores (D,) float, track_ids (D,) int64 (the VidEoMT query index;
    one track may appear with several labels). track_ids None: the row index."""

    masks: Tensor
    labels: Tensor
    scores: Tensor
    track_ids: Tensor | None = None
