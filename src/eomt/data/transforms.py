"""The training augmentation of the paper, in the official order, in plain torch.

`TrainTransform` = drop crowd segments -> optional photometric colour jitter -> horizontal flip ->
scale jitter -> pad to the crop size -> random crop -> drop empty masks (retry if none is left).
Images stay uint8 (the model normalises). The colour functions live in `eomt.data.colour`.

All randomness comes from a `torch.Generator`: pass one per call (`generator_for(seed, index,
epoch)` makes one reproducible per sample, whatever the worker), or give the transform a `seed`,
or let it draw from torch's global RNG, which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eomt.data.colour import (
    MAX_BRIGHTNESS_DELTA, MAX_CONTRAST_DELTA, MAX_HUE_DELTA, MAX_SATURATION_DELTA, adjust_brightness, adjust_contrast,
    adjust_hue, adjust_saturation,
)
from eomt.structures import Target


# ---------------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------------


def generator_for(seed: int, *keys: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, *keys), e.g. (seed, index, epoch); keys >= 0."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _around(center: float, delta: float, g: torch.Generator | None) -> float:
    return _uniform(center - delta, center + delta, g)


def _chance(p: float, g: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=g) < p)


# ---------------------------------------------------------------------------------------------
# The training transform
# ---------------------------------------------------------------------------------------------


class TrainTransform:
    """(image, Target) -> (image uint8 (3, h, w), Target) with (h, w) = img_size.

    image: uint8 tensor (3, H, W) or numpy (H, W, 3); target masks (N, H, W) bool. N = 0 (an image
    whose pixels are all unlabelled) is valid: the crop comes back with masks (0, h, w), no retry.
    scale_range: the factor range of scale jitter relative to fitting the image in img_size
    ((0.1, 2.0) = large-scale jitter; (0.5, 2.0) the "normal" one).
    seed: when set, calls without a generator draw from a private generator seeded with `seed`
    (mixed with the worker's seed inside a DataLoader worker, so workers and epochs differ).
    max_retries: how many times the whole transform is redone when every mask was cropped away.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        scale_range: tuple[float, float] = (0.1, 2.0),
        color_jitter: bool = False,
        seed: int | None = None,
        max_retries: int = 10,
    ) -> None:
        if len(img_size) != 2 or min(img_size) < 1:
            raise ValueError(f"TrainTransform: img_size={img_size}; expected (height, width) > 0")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"TrainTransform: scale_range={scale_range}; expected 0 < lo <= hi")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.color_jitter = color_jitter
        self.seed = seed
        self.max_retries = max_retries
        self._generator: torch.Generator | None = None
        self._generator_key: int | None = None

    def __call__(
        self, image: Tensor | np.ndarray, target: Target, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Target]:
        """Augment one sample; `generator` (if given) supplies every random draw."""
        img = _as_chw_uint8(image)
        if target.masks.shape[-2:] != img.shape[-2:]:
            raise ValueError(
                f"TrainTransform: target masks are {tuple(target.masks.shape[-2:])}, "
                f"expected the image size {tuple(img.shape[-2:])}"
            )
        g = generator if generator is not None else self._default_generator()
        keep = ~target.is_crowd
        masks, labels = target.masks[keep].bool(), target.labels[keep]

        out = self._once(img, masks, labels, g)
        retries = self.max_retries if len(labels) else 0  # nothing to keep: no point in retrying
        for _ in range(retries):
            if len(out[1]):
                break
            out = self._once(img, masks, labels, g)
        return out

    def _default_generator(self) -> torch.Generator | None:
        """None (torch's global RNG) without a seed, else a private generator for this worker."""
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = -1 if info is None else int(info.seed)  # a worker's seed differs per worker and epoch
        if self._generator is None or key != self._generator_key:
            keys = () if key < 0 else (key % 2**63,)
            self._generator, self._generator_key = generator_for(self.seed, *keys), key
        return self._generator

    def _once(
        self, img: Tensor, masks: Tensor, labels: Tensor, g: torch.Generator | None
    ) -> tuple[Tensor, Target]:
        if self.color_jitter:
            img = self._photometric(img, g)
        if _chance(0.5, g):
            img, masks = img.flip(-1), masks.flip(-1)
        img, masks = self._scale_jitter(img, masks, g)
        img, masks = self._pad_and_crop(img, masks, g)
        valid = masks.flatten(1).any(1)
        masks, labels = masks[valid], labels[valid]
        return img, Target(masks, labels, torch.zeros(len(labels), dtype=torch.bool))

    def _photometric(self, img: Tensor, g: torch.Generator | None) -> Tensor:
        """Brightness, then contrast and saturation+hue in a random order, each with p=0.5."""
        if _chance(0.5, g):
            img = adjust_brightness(img, _around(1.0, MAX_BRIGHTNESS_DELTA, g))
        contrast_first = _chance(0.5, g)
        if contrast_first:
            img = self._contrast(img, g)
        if _chance(0.5, g):
            img = adjust_saturation(img, _around(1.0, MAX_SATURATION_DELTA, g))
        if _chance(0.5, g):
            img = adjust_hue(img, _around(0.0, MAX_HUE_DELTA, g))
        if not contrast_first:
            img = self._contrast(img, g)
        return img

    @staticmethod
    def _contrast(img: Tensor, g: torch.Generator | None) -> Tensor:
        if _chance(0.5, g):
            img = adjust_contrast(img, _around(1.0, MAX_CONTRAST_DELTA, g))
        return img

    def _scale_jitter(
        self, img: Tensor, masks: Tensor, g: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Resize by r = min(h_t / H, w_t / W) * U(scale_range).

        Image bilinear with antialias, masks nearest; sizes truncate to int(H * r), int(W * r).
        """
        # torchvision's ScaleJitter reads target_size as (W, H); the same for the square sizes of
        # every official config, here (H, W) as everywhere else.
        (h, w), (th, tw) = img.shape[-2:], self.img_size
        r = min(th / h, tw / w) * _uniform(*self.scale_range, g)
        nh, nw = max(1, int(h * r)), max(1, int(w * r))
        img = _resize_bilinear_uint8(img, (nh, nw))
        if len(masks):
            masks = F.interpolate(masks[None].to(torch.uint8), size=(nh, nw), mode="nearest")[0]
            masks = masks.bool()
        else:
            masks = masks.new_zeros((0, nh, nw))
        return img, masks

    def _pad_and_crop(
        self, img: Tensor, masks: Tensor, g: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Pad bottom/right to at least img_size (image 0, masks False), then crop img_size."""
        (h, w), (th, tw) = img.shape[-2:], self.img_size
        pad_h, pad_w = max(0, th - h), max(0, tw - w)
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h))
            masks = F.pad(masks, (0, pad_w, 0, pad_h))
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - th + 1, (), generator=g))
        left = int(torch.randint(0, w - tw + 1, (), generator=g))
        return img[:, top : top + th, left : left + tw], masks[:, top : top + th, left : left + tw]


def _resize_bilinear_uint8(img: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize of a uint8 (3, H, W) image to `size` (h, w), uint8."""
    if img.device.type == "cpu":
        # torch's native uint8 kernel on CPU (rounds internally), the path torchvision takes too.
        return F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0]
    out = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _as_chw_uint8(image: Tensor | np.ndarray) -> Tensor:
    """uint8 (3, H, W) tensor from a uint8 tensor (3, H, W) or numpy array (H, W, 3)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"TrainTransform: numpy image {image.shape} {image.dtype}; expected (H, W, 3) uint8"
            )
        # A read-only array (`np.asarray` of a PIL image) is copied: torch would share a buffer it
        # must not write to (and warn about it); a writable contiguous one is shared as it is.
        image = np.array(image, order="C", copy=not image.flags.writeable or None)
        return torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(
            f"TrainTransform: image tensor {tuple(image.shape)} {image.dtype}; "
            "expected (3, H, W) uint8"
        )
    return image
