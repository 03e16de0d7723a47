"""What a video dataset yields: a clip of frames and its object tracks (`VideoTarget`), and how the
frames of a training clip are drawn from a longer video (`sample_clip`).

Every video dataset (`eomt.data.video_synthetic`, `eomt.data.ytvis`) yields
`(clip uint8 (T, 3, H, W), VideoTarget)`. A track is one object over the whole clip: its mask in
every frame (empty where the object is absent: not yet entered, left, or fully hidden), one class,
one crowd flag and a track id that names the same object in every clip of its video.
"""

from __future__ import annotations

import numpy as np
import torch

from eomt.structures import VideoTarget

__all__ = ["VideoTarget", "random_generator", "sample_clip"]


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
