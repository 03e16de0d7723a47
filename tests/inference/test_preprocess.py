import math

import numpy as np
import pytest
import torch
from PIL import Image

from eomt.inference.preprocess import (
    resize_and_pad,
    scaled_size_longest,
    scaled_size_shortest,
    sliding_windows,
    window_starts,
)


def _official_windows(h: int, w: int, crop: int) -> tuple[tuple[int, int], list[int]]:
    """The official `window_imgs_semantic` sizing and crop starts, written out step by step."""
    factor = max(crop / h, crop / w)
    nh, nw = round(h * factor), round(w * factor)
    long_side = max(nh, nw)
    num_crops = math.ceil(long_side / crop)
    overlap = num_crops * crop - long_side
    per_crop = overlap / (num_crops - 1) if overlap > 0 else 0
    return (nh, nw), [int(j * (crop - per_crop)) for j in range(num_crops)]


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    # Smooth-ish content so that resampling differences stay representative of photos.
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def test_window_starts_match_the_transformers_example() -> None:
    # transformers resizes 480x1000 (S=512) to 512x1066 and cuts crops at 0, 277, 554.
    assert window_starts(1066, 512) == [0, 277, 554]
    # The official code rounds the resized side (1066.67 -> 1067), so its crops start at 555.
    assert scaled_size_shortest(480, 1000, 512) == (512, 1067)
    assert window_starts(1067, 512) == [0, 277, 555]


@pytest.mark.parametrize(
    "h, w, crop",
    [(1024, 2048, 1024), (512, 683, 512), (480, 1000, 512), (1000, 480, 512), (64, 64, 64),
     (37, 201, 64), (300, 299, 64), (17, 1000, 32)],
)
def test_window_sizes_and_starts_follow_the_official_formulas(h: int, w: int, crop: int) -> None:
    (nh, nw), starts = _official_windows(h, w, crop)
    assert scaled_size_shortest(h, w, crop) == (nh, nw)
    assert window_starts(max(nh, nw), crop) == starts
    assert starts[0] == 0 and starts[-1] + crop == max(nh, nw)  # the crops cover the long side


def test_cityscapes_and_ade_examples() -> None:
    assert _official_windows(1024, 2048, 1024)[1] == [0, 1024]  # two crops, no overlap
    assert _official_windows(512, 683, 512)[1] == [0, 171]


@pytest.mark.parametrize("h, w", [(48, 100), (100, 40), (64, 64), (30, 31)])
def test_sliding_window_crops_are_slices_of_the_pil_resized_image(h: int, w: int) -> None:
    crop = 64
    img = _random_image(h, w)
    crops, windows = sliding_windows([torch.from_numpy(img).permute(2, 0, 1)], crop)
    (nh, nw), starts = _official_windows(h, w, crop)
    assert crops.shape == (len(starts), 3, crop, crop) and crops.dtype == torch.float32
    assert windows.offsets == [(0, s, s + crop) for s in starts]
    assert windows.images[0].scaled_size == (nh, nw) and windows.images[0].original_size == (h, w)
    ref = torch.from_numpy(np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))).permute(2, 0, 1)
    ref = ref.float() / 255
    for j, s in enumerate(starts):
        expected = ref[:, s : s + crop, :] if h > w else ref[:, :, s : s + crop]
        assert (crops[j] - expected).abs().max() <= 1 / 255 + 1e-6


def test_sliding_windows_batch_several_images_in_order() -> None:
    images = [torch.from_numpy(_random_image(*hw, seed=i)).permute(2, 0, 1) for i, hw in enumerate([(48, 100), (64, 64), (120, 50)])]
    crops, windows = sliding_windows(images, 64)
    assert [o[0] for o in windows.offsets] == [0, 0, 0, 1, 2, 2, 2]
    assert crops.shape[0] == len(windows.offsets)
    single, _ = sliding_windows(images[2:], 64)
    torch.testing.assert_close(crops[4:], single)


@pytest.mark.parametrize("h, w, size", [(480, 1000, 640), (50, 37, 64), (20, 30, 64), (333, 517, 128), (64, 64, 64)])
def test_resize_and_pad_matches_the_official_pil_pipeline(h: int, w: int, size: int) -> None:
    img = _random_image(h, w)
    batch, metas = resize_and_pad([torch.from_numpy(img).permute(2, 0, 1)], size)
    factor = min(size / h, size / w)
    nh, nw = round(h * factor), round(w * factor)
    assert scaled_size_longest(h, w, size) == (nh, nw)
    assert batch.shape == (1, 3, size, size)
    assert metas[0].scaled_size == (nh, nw) and metas[0].input_size == (size, size)
    ref = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR)).astype(np.float32) / 255
    ours = batch[0, :, :nh, :nw].permute(1, 2, 0).numpy()
    diff = np.abs(ours - ref)
    assert diff.max() <= 1 / 255 + 1e-6  # at most one grey level
    assert (diff > 1e-6).mean() < 0.01  # and on very few pixels
    assert batch[0, :, nh:, :].abs().sum() == 0 and batch[0, :, :, nw:].abs().sum() == 0


def test_resize_and_pad_float_input_and_non_square_size() -> None:
    img = torch.rand(3, 30, 90)
    batch, metas = resize_and_pad([img], (32, 64))
    assert batch.shape == (1, 3, 32, 64)
    assert metas[0].scaled_size == (21, 64)  # factor min(32/30, 64/90) = 0.711
    assert batch.min() >= 0 and batch.max() <= 1


def test_bad_image_shape_names_the_image() -> None:
    with pytest.raises(ValueError, match=r"images\[1\]: expected a \(3, H, W\) tensor"):
        resize_and_pad([torch.rand(3, 8, 8), torch.rand(8, 8)], 16)
