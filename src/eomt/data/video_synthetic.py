"""Synthetic videos: the shapes of `eomt.data.synthetic` moving over a still sky-and-ground scene.

A dataset that needs no download, for the video tests and demo. Video i is a pure function of
(seed, i): a background drawn once, and 1..max_things shapes, each with a fixed class, colour, size
and depth. A shape moves at a constant velocity plus a sinusoidal sway across its direction of
travel (so its velocity varies smoothly) and spins slowly; it is placed so that it is inside the
image at some frame, and its speed makes it enter or leave the frame within the video fairly often.
Shapes are painted in depth order (a later shape hides an earlier one); masks hold the visible
pixels, so an object hidden or outside the frame has an empty mask there. Sensor noise differs per
frame. Track id k is shape k of the video in every clip; a track absent from a whole clip is left
out of that clip's target. Panoptic adds the sky and the ground as two more tracks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from eomt.classes import label_space
from eomt.data.synthetic import _CLASS_HUES, GROUND, NUM_THINGS, SKY, _background, _hsv_to_rgb, _shape_mask
from eomt.data.video import random_generator, sample_clip
from eomt.structures import VideoTarget

TASKS = ("instance", "panoptic")
SAMPLINGS = ("random", "first")
_MIN_SIZE, _MAX_SIZE = 0.16, 0.34  # shape extent as a fraction of the shorter side (smaller than stills)
_SPEED = (0.02, 0.08)  # pixels per frame as a fraction of the shorter side
_SWAY = (0.0, 0.04)  # amplitude of the sideways sway, fraction of the shorter side
_SPIN = 0.12  # largest spin, radians per frame


class SyntheticVideos:
    """Deterministic synthetic videos of moving, occluding shapes, served as clips.

    Item i is `(clip uint8 (T, 3, H, W), VideoTarget)` of video i (length `video_length`).
    clip_length: T frames per item (5, the official recipe); None serves the whole video (for
    evaluation). sampling: "random" draws the clip's frames with `eomt.data.video.sample_clip` from
    torch's RNG (a new clip each epoch; `frame_range` as there), "first" takes frames 0..T-1.
    Class ids follow `eomt.classes.label_space("synthetic", task)`.
    """

    def __init__(self, num_videos: int, size: int | tuple[int, int] = 64, video_length: int = 12,
                 clip_length: int | None = 5, seed: int = 0, task: str = "instance", max_things: int = 3,
                 sampling: str = "random", frame_range: int | None = None,
                 transform: Callable[[Tensor, VideoTarget], Any] | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"SyntheticVideos: task={task!r}; expected one of {TASKS}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"SyntheticVideos: sampling={sampling!r}; expected one of {SAMPLINGS}")
        if num_videos < 0 or video_length < 1 or max_things < 1:
            raise ValueError(f"SyntheticVideos: num_videos={num_videos}, video_length={video_length}, "
                             f"max_things={max_things}; expected >= 0, >= 1, >= 1")
        if clip_length is not None and clip_length < 1:
            raise ValueError(f"SyntheticVideos: clip_length={clip_length}; expected >= 1 or None (whole videos)")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or min(hw) < 16:
            raise ValueError(f"SyntheticVideos: size={size}; expected an int or (H, W), >= 16")
        self.num_videos, self.size, self.video_length = num_videos, (int(hw[0]), int(hw[1])), video_length
        self.clip_length, self.seed, self.task, self.max_things = clip_length, seed, task, max_things
        self.sampling, self.frame_range, self.transform = sampling, frame_range, transform
        names, stuff = label_space("synthetic", task)
        self.class_names: list[str] = list(names)
        self.stuff_classes: list[int] = list(stuff)
        self.num_classes: int = len(names)

    def __len__(self) -> int:
        return self.num_videos

    def clip_frames(self) -> list[int]:
        """The video frames of the next item's clip (random clips draw from torch's RNG)."""
        if self.clip_length is None:
            return list(range(self.video_length))
        if self.sampling == "first":
            return [min(t, self.video_length - 1) for t in range(self.clip_length)]
        return sample_clip(self.video_length, self.clip_length, random_generator(), self.frame_range)

    def __getitem__(self, index: int) -> Any:
        if not -self.num_videos <= index < self.num_videos:
            raise IndexError(f"SyntheticVideos: index {index} out of range [0, {self.num_videos})")
        clip, target = self.render(index % self.num_videos, self.clip_frames())
        return self.transform(clip, target) if self.transform is not None else (clip, target)

    def video(self, index: int) -> tuple[Tensor, VideoTarget]:
        """The whole video `index`: frames (V, 3, H, W) uint8 and every track."""
        return self.render(index, list(range(self.video_length)))

    def render(self, index: int, frames: Sequence[int]) -> tuple[Tensor, VideoTarget]:
        """Frames `frames` of video `index` (any order, repeats allowed): (T, 3, H, W) uint8 and the
        tracks present in at least one of them."""
        h, w = self.size
        rng = np.random.default_rng([self.seed, index])
        background, sky = _background(rng, h, w)  # (H, W, 3) float, (H, W) bool
        motion = self._motion(rng)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres, (H, W) each
        images, segs = [], []
        for t in frames:  # frames are few; each is vectorised over pixels
            image, seg = self._frame(background, sky, motion, int(t), xx, yy)
            images.append(image + 3.0 * np.random.default_rng([self.seed, index, int(t)]).standard_normal(
                image.shape, dtype=np.float32))  # sensor noise, new in every frame
            segs.append(seg)
        clip = np.clip(np.rint(np.stack(images)), 0, 255).astype(np.uint8)  # (T, H, W, 3)
        seg_map = torch.from_numpy(np.stack(segs))  # (T, H, W): 0 sky, 1 ground, 2 + k shape k
        n = len(motion["classes"])
        ids = list(range(2, 2 + n)) + ([0, 1] if self.task == "panoptic" else [])
        labels = [int(c) for c in motion["classes"]] + ([SKY, GROUND] if self.task == "panoptic" else [])
        masks = seg_map[None] == torch.tensor(ids, dtype=torch.int64).view(-1, 1, 1, 1)  # (N, T, H, W)
        keep = masks.flatten(1).any(1)  # (N,) tracks seen in the clip
        target = VideoTarget(
            masks=masks[keep], labels=torch.tensor(labels, dtype=torch.int64)[keep],
            is_crowd=torch.zeros(int(keep.sum()), dtype=torch.bool),
            track_ids=torch.arange(len(ids), dtype=torch.int64)[keep],
            frame_indices=torch.tensor(list(frames), dtype=torch.int64),
        )
        return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous(), target  # (T, 3, H, W)

    def _motion(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per-shape parameters of video: class, size, colour, and the path through the frames."""
        h, w = self.size
        side, v = min(h, w), self.video_length
        n = int(rng.integers(1, self.max_things + 1))
        classes = rng.integers(0, NUM_THINGS, n)
        random_hue = rng.random(n) < 0.3
        hues = np.where(random_hue, rng.random(n),
                        np.take(_CLASS_HUES, classes) + rng.uniform(-0.08, 0.08, n)) % 1.0
        heading = rng.uniform(0, 2 * np.pi, n)
        direction = np.stack([np.cos(heading), np.sin(heading)], 1)  # (n, 2) x, y
        return {
            "classes": classes,
            "radii": rng.uniform(_MIN_SIZE, _MAX_SIZE, n) * side / 2,
            "fills": _hsv_to_rgb(hues, rng.uniform(0.55, 1.0, n), rng.uniform(0.45, 1.0, n)) * 255,
            # the shape is at `anchor` (inside the image) at frame `anchor_time`
            "anchor": rng.uniform(0.15, 0.85, (n, 2)) * np.array([w, h]),
            "anchor_time": rng.uniform(0, v - 1, n),
            "velocity": direction * (rng.uniform(*_SPEED, n) * side)[:, None],  # (n, 2) pixels per frame
            "sway": np.stack([-direction[:, 1], direction[:, 0]], 1) * (rng.uniform(*_SWAY, n) * side)[:, None],
            "sway_freq": rng.uniform(0.2, 0.7, n),  # radians per frame
            "sway_phase": rng.uniform(0, 2 * np.pi, n),
            "angle": rng.uniform(0, 2 * np.pi, n),
            "spin": rng.uniform(-_SPIN, _SPIN, n),
        }

    @staticmethod
    def _centres(m: dict[str, np.ndarray], t: int) -> np.ndarray:
        """(n, 2) centre (x, y) of every shape at frame t: the constant velocity plus the sway."""
        dt = t - m["anchor_time"]  # (n,)
        sway = np.sin(m["sway_freq"] * t + m["sway_phase"]) - np.sin(m["sway_freq"] * m["anchor_time"]
                                                                     + m["sway_phase"])
        return m["anchor"] + m["velocity"] * dt[:, None] + m["sway"] * sway[:, None]

    def _frame(self, background: np.ndarray, sky: np.ndarray, m: dict[str, np.ndarray], t: int,
               xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame t before noise: image (H, W, 3) float32 and segment map (H, W) int64."""
        img, seg = background.copy(), np.where(sky, 0, 1)
        centres = self._centres(m, t)
        for k, (cls, r) in enumerate(zip(m["classes"], m["radii"])):  # back to front: depth order
            angle = m["angle"][k] + m["spin"][k] * t
            shape = _shape_mask(int(cls), xx, yy, centres[k, 0], centres[k, 1], r, angle)  # (H, W)
            edge = shape & ~_shape_mask(int(cls), xx, yy, centres[k, 0], centres[k, 1], r - max(1.0, 0.06 * r), angle)
            seg[shape] = 2 + k
            img[shape] = m["fills"][k]
            img[edge] = 0.45 * m["fills"][k]
        return img, seg


__all__ = ["SyntheticVideos"]
