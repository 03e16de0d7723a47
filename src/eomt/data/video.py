"""What a video dataset yields: a clip of frames and its object tracks (`VideoTarget`), and how the
frames of a training clip are drawn from a longer video (`sample_clip`).

Every video dataset (`eomt.data.video_synthetic`, `eomt.data.ytvis`) yields
`(clip uint8 (T, 3, H, W), VideoTarget)`. A track is one object over the whole clip: its mask in
every frame (empty where the object is absent: not yet entered, left, or fully hidden), one class,
one crowd flag and a track id that names the same object in every clip of its video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from eomt.structures import Target


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


def sample_clip(num_frames: int, clip_length: int, rng: np.random.Generator,
                frame_range: int | None = None) -> list[int]:
    """Sorted frame indices of a training clip of `clip_length` frames from a video of `num_frames`.

    frame_range None: `clip_length` consecutive frames starting at a random frame. An int r: the
    sampling of Mask2Former-VIS / VidEoMT's YouTube-VIS mapper (`SAMPLING_FRAME_RANGE`): a random
    reference frame, and the other clip_length - 1 frames drawn without replacement from the frames
    within r of it. A video shorter than the clip (or a range too small) repeats frames.
    """
    if num_frames < 1 or clip_length < 1:
        raise ValueError(f"sample_clip: num_frames={num_frames}, clip_length={clip_length}; expected >= 1 each")
    if frame_range is None:
        if num_frames >= clip_length:
            start = int(rng.integers(0, num_frames - clip_length + 1))
            return list(range(start, start + clip_length))
        return sorted(rng.choice(num_frames, clip_length - num_frames, replace=True).tolist() + list(range(num_frames)))
    ref = int(rng.integers(0, num_frames))
    lo, hi = max(0, ref - frame_range), min(num_frames, ref + frame_range + 1)
    others = [i for i in range(lo, hi) if i != ref]
    need = clip_length - 1
    picked = rng.choice(others, min(need, len(others)), replace=False).tolist() if others else []
    if len(picked) < need:  # too few frames in range: repeat some (the official mapper does the same)
        picked += rng.choice(list(range(lo, hi)), need - len(picked), replace=True).tolist()
    return sorted([ref] + [int(i) for i in picked])


def random_generator() -> np.random.Generator:
    """A numpy generator seeded from torch's RNG, so `torch.manual_seed` and the DataLoader's
    per-worker seeding make training clips reproducible and different per worker."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
