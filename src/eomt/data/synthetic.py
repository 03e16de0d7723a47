"""Procedurally drawn scenes: coloured shapes ("things") in front of a sky and a ground ("stuff").

A dataset that needs no download, for tests, demos and a CPU-sized end-to-end training run. Every
image is a pure function of (seed, index). The class of a thing is given by its SHAPE (circle,
square, triangle, cross); its colour only leans towards a per-class hue and is often random. The
sky is a smooth vertical gradient above a random, slightly tilted and wavy horizon; the ground
below it is textured. Things are painted in order, so later ones occlude earlier ones; the masks
hold the visible part only, and things left with too little visible area are not drawn at all.

Drawing is vectorised numpy over coordinate grids.
"""

from __future__ import annotations

import numpy as np
import torch

from eomt.classes import SYNTHETIC_STUFF_NAMES, SYNTHETIC_THING_NAMES, label_space
from eomt.structures import Target

TASKS = ("panoptic", "instance", "semantic")
NUM_THINGS = len(SYNTHETIC_THING_NAMES)
SKY, GROUND = NUM_THINGS, NUM_THINGS + 1  # panoptic / semantic class ids of the stuff classes

# Per-class hue the thing colours lean towards (fraction of the colour wheel).
_CLASS_HUES = (0.0, 0.33, 0.6, 0.12)
_MIN_SIZE, _MAX_SIZE = 0.2, 0.42  # thing extent as a fraction of the shorter image side
_MIN_VISIBLE = 0.35  # a thing must keep this fraction of its in-image area visible ...
_MIN_PIXELS_FRAC = 0.004  # ... and this fraction of the image, or it is not drawn


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (any equal shapes) -> RGB in [0, 1], shape (..., 3)."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
            np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
        ],
        0,
    )  # (6, ..., 3)
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def _shape_mask(
    cls: int, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float, angle: float
) -> np.ndarray:
    """Boolean (H, W) mask of a thing of class `cls`, centre (cx, cy), half-extent r pixels."""
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's rotated frame
    if cls == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if cls == 1:  # square (side 1.6 r, so its area is close to the circle's)
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if cls == 2:  # equilateral triangle, inradius 0.6 r (slightly larger than inscribed)
        normals = np.pi / 2 + np.arange(3) * 2 * np.pi / 3  # outward normals, 120 degrees apart
        dist = u[None] * np.cos(normals)[:, None, None] + v[None] * np.sin(normals)[:, None, None]
        return (dist <= 0.6 * r).all(0)
    # cross: two bars of half-width 0.3 r
    au, av = np.abs(u), np.abs(v)
    return ((au <= r) & (av <= 0.3 * r)) | ((av <= r) & (au <= 0.3 * r))


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky/ground image (H, W, 3) float32 in [0, 255] and the sky mask (H, W) bool."""
    x = np.arange(w, dtype=np.float32) + 0.5  # (W,) pixel centres
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5  # (H, 1)
    base, tilt = rng.uniform(0.3, 0.7), rng.uniform(-0.25, 0.25)
    amp, freq, phase = rng.uniform(0, 0.05), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    horizon = h * (base + tilt * (x / w - 0.5) + amp * np.sin(2 * np.pi * freq * x / w + phase))
    sky = y < horizon  # (H, W)

    # Sky: smooth vertical gradient between two blue-ish colours, no texture.
    top, bottom = _hsv_to_rgb(
        rng.uniform(0.52, 0.68, 2), np.array([rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.4)]),
        np.array([rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0)]),
    ).astype(np.float32)
    t = y[..., None] / max(h - 1, 1)  # (H, 1, 1)
    sky_img = (1 - t) * top + t * bottom  # (H, 1, 3)

    # Ground: green-to-brown base colour, blocky low-frequency noise and oriented stripes.
    ground = _hsv_to_rgb(
        np.array(rng.uniform(0.05, 0.4)), np.array(rng.uniform(0.4, 0.9)),
        np.array(rng.uniform(0.35, 0.7)),
    ).astype(np.float32)  # (3,)
    cell = max(2, min(h, w) // 16)
    coarse = rng.standard_normal((h // cell + 1, w // cell + 1), np.float32)
    coarse = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]  # (H, W)
    theta, period = rng.uniform(0, np.pi), rng.uniform(4, 10)
    stripes = np.sin((2 * np.pi / period) * (x * float(np.cos(theta)) + y * float(np.sin(theta))))
    texture = 0.08 * coarse + 0.06 * stripes + 0.05 * rng.standard_normal((h, w), np.float32)
    ground_img = ground * (1 + texture[..., None])  # (H, W, 3)

    img = np.where(sky[..., None], sky_img, ground_img) * np.float32(255.0)
    return img, sky


class SyntheticScenes:
    """Deterministic synthetic scenes for panoptic, instance or semantic segmentation.

    Item i is `(image uint8 (H, W, 3), Target)` and depends only on (seed, i). Panoptic: one mask
    per visible thing (in draw order), then one per stuff class present; masks are disjoint and
    cover the image. Instance: the thing masks only. Semantic: one mask per class present (things
    merged per class). Class ids follow `eomt.classes.label_space("synthetic", task)`.
    """

    def __init__(
        self,
        num_images: int,
        size: int | tuple[int, int] = 128,
        seed: int = 0,
        task: str = "panoptic",
        max_things: int = 4,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"SyntheticScenes: task={task!r}; expected one of {TASKS}")
        if num_images < 0:
            raise ValueError(f"SyntheticScenes: num_images={num_images}; expected >= 0")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or min(hw) < 16:
            raise ValueError(f"SyntheticScenes: size={size}; expected an int or (H, W), >= 16")
        if max_things < 1:
            raise ValueError(f"SyntheticScenes: max_things={max_things}; expected >= 1")
        self.num_images, self.size, self.seed = num_images, (int(hw[0]), int(hw[1])), seed
        self.task, self.max_things = task, max_things
        names, stuff = label_space("synthetic", task)
        self.class_names: list[str] = names
        self.stuff_classes: list[int] = stuff
        self.num_classes: int = len(names)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"SyntheticScenes: index {index} out of range [0, {self.num_images})")
        index %= self.num_images
        rng = np.random.default_rng([self.seed, index])
        image, seg, seg_labels = self._draw(rng)
        return image, self._target(seg, seg_labels)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Image (H, W, 3) uint8, segment map (H, W) int (0 sky, 1 ground, 2+k thing k), labels."""
        h, w = self.size
        img, sky = _background(rng, h, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres, (H, W) each
        side = min(h, w)

        n = int(rng.integers(1, self.max_things + 1))
        classes = rng.integers(0, NUM_THINGS, n)
        radii = rng.uniform(_MIN_SIZE, _MAX_SIZE, n) * side / 2
        # Centres keep at least half of each thing inside the image.
        cx = rng.uniform(0.08, 0.92, n) * w
        cy = rng.uniform(0.08, 0.92, n) * h
        angles = rng.uniform(0, 2 * np.pi, n)
        random_hue = rng.random(n) < 0.3
        hues = np.where(
            random_hue, rng.random(n), np.take(_CLASS_HUES, classes) + rng.uniform(-0.08, 0.08, n)
        ) % 1.0
        fills = _hsv_to_rgb(hues, rng.uniform(0.55, 1.0, n), rng.uniform(0.45, 1.0, n)) * 255

        shapes = np.stack(
            [_shape_mask(int(c), xx, yy, x, y, r, a) for c, x, y, r, a in
             zip(classes, cx, cy, radii, angles)]
        )  # (n, H, W) full in-image extent of each thing
        edges = shapes & ~np.stack(
            [_shape_mask(int(c), xx, yy, x, y, r - max(1.0, 0.06 * r), a) for c, x, y, r, a in
             zip(classes, cx, cy, radii, angles)]
        )  # (n, H, W) a dark outline keeps touching things of one colour apart

        keep = self._visible_things(shapes)
        seg = np.where(sky, 0, 1)
        for k in np.flatnonzero(keep):  # paint in order: later things occlude earlier ones
            seg[shapes[k]] = 2 + k
            img[shapes[k]] = fills[k]
            img[edges[k]] = 0.45 * fills[k]
        img += 3.0 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise everywhere
        labels = [SKY, GROUND] + [int(c) for c in classes]
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), seg, labels

    def _visible_things(self, shapes: np.ndarray) -> np.ndarray:
        """(n,) bool: things that keep enough visible area once later things are painted."""
        n, h, w = shapes.shape
        # Pixels of thing k that no later thing covers: reversed cumulative OR of the later masks.
        later = np.zeros_like(shapes)
        later[:-1] = np.logical_or.accumulate(shapes[::-1], 0)[::-1][1:]
        visible = (shapes & ~later).reshape(n, -1).sum(1)  # (n,)
        full = shapes.reshape(n, -1).sum(1)
        # Dropping a thing only uncovers pixels of the earlier ones, so one pass suffices.
        return (visible >= _MIN_VISIBLE * full) & (visible >= _MIN_PIXELS_FRAC * h * w)

    def _target(self, seg: np.ndarray, seg_labels: list[int]) -> Target:
        """Per-segment masks of the segment map, arranged for the task."""
        ids = [i for i in range(2, len(seg_labels))] + [0, 1]  # things first, then sky, ground
        if self.task == "instance":
            ids = ids[:-2]
        masks = seg[None] == np.array(ids).reshape(-1, 1, 1)  # (N, H, W)
        labels = np.array([seg_labels[i] for i in ids], dtype=np.int64)
        present = masks.reshape(len(ids), -1).any(1) if ids else np.zeros(0, dtype=bool)
        masks, labels = masks[present], labels[present]
        if self.task == "semantic":
            classes = np.unique(labels)
            if len(classes):
                masks = np.stack([masks[labels == c].any(0) for c in classes])  # (C_present, H, W)
            labels = classes
        h, w = self.size
        masks_t = torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, h, w)
        return Target(
            masks=masks_t,
            labels=torch.from_numpy(labels.astype(np.int64)),
            is_crowd=torch.zeros(len(labels), dtype=torch.bool),
        )


__all__ = ["SyntheticScenes", "SYNTHETIC_THING_NAMES", "SYNTHETIC_STUFF_NAMES"]
