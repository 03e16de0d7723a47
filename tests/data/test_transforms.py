"""Training transform: geometry keeps masks on their pixels, crowd/empty handling, retries, seeding,
and the colour functions against their defining formulas."""

from __future__ import annotations

import colorsys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eomt.data import colour as T
from eomt.data.transforms import TrainTransform, generator_for
from eomt.structures import Target


def _target(masks: list[np.ndarray], labels: list[int], crowd: list[bool] | None = None) -> Target:
    return Target(
        torch.from_numpy(np.stack(masks)),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(crowd or [False] * len(labels)),
    )


def _noise_sample(h: int = 40, w: int = 60) -> tuple[np.ndarray, Target]:
    """A random-noise image (every window unique) with a left-side box and the rest as masks."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
    box = np.zeros((h, w), bool)
    box[5:25, 4:20] = True
    return image, _target([box, ~box], [3, 7])


def _find_window(image: np.ndarray, crop: np.ndarray) -> list[tuple[bool, int, int]]:
    """Every (flipped, top, left) whose window of `image` (H, W, 3) equals `crop` (h, w, 3)."""
    found = []
    for flip in (False, True):
        src = image[:, ::-1] if flip else image
        views = np.lib.stride_tricks.sliding_window_view(src, crop.shape[:2], (0, 1))
        hits = (views == crop.transpose(2, 0, 1)).all((-3, -2, -1))  # (H-h+1, W-w+1)
        found += [(flip, int(t), int(l)) for t, l in zip(*np.nonzero(hits))]
    return found


def test_flip_and_crop_move_image_and_masks_together() -> None:
    # 40x60 into (20, 30) with scale 2: r = min(20/40, 30/60) * 2 = 1, so no resampling.
    image, target = _noise_sample()
    tf = TrainTransform((20, 30), scale_range=(2.0, 2.0))
    masks = target.masks.numpy()
    seen_flips = set()
    for seed in range(12):
        out, t = tf(image, target, generator=generator_for(seed))
        assert out.shape == (3, 20, 30) and out.dtype == torch.uint8
        hwc = out.permute(1, 2, 0).numpy()
        ((flip, top, left),) = _find_window(image, hwc)
        seen_flips.add(flip)
        src = masks[:, :, ::-1] if flip else masks
        expected = src[:, top : top + 20, left : left + 30]
        keep = expected.reshape(2, -1).any(1)
        assert np.array_equal(t.masks.numpy(), expected[keep])
        assert t.labels.tolist() == [label for label, k in zip([3, 7], keep) if k]
    assert seen_flips == {False, True}


def test_pad_bottom_right_with_zeros_and_false() -> None:
    # 20x40 into (40, 40) at scale 1: r = min(2, 1) = 1, 20 rows of padding below.
    image, target = _noise_sample(20, 40)
    out, t = TrainTransform((40, 40), scale_range=(1.0, 1.0))(image, target, generator_for(1))
    assert out.shape == (3, 40, 40)
    assert (out[:, 20:] == 0).all() and not t.masks[:, 20:].any()
    top = out[:, :20].permute(1, 2, 0).numpy()
    flipped = not np.array_equal(top, image)
    src_img = image[:, ::-1] if flipped else image
    src_masks = target.masks.numpy()[:, :, ::-1] if flipped else target.masks.numpy()
    assert np.array_equal(top, src_img)
    assert np.array_equal(t.masks[:, :20].numpy(), src_masks)


def test_downscale_uses_nearest_masks_and_keeps_colours_under_them() -> None:
    h, w = 40, 60
    image = np.full((h, w, 3), 100, np.uint8)
    square = np.zeros((h, w), bool)
    square[4:24, 6:26] = True
    image[square] = (220, 30, 40)
    target = _target([square, ~square], [0, 1])
    tf = TrainTransform((20, 30), scale_range=(1.0, 1.0))  # r = 0.5
    for seed in range(4):
        out, t = tf(image, target, generator_for(seed))
        flipped = bool(t.masks[0, :, 15:].any())  # the square is on the left unless flipped
        src = square[:, ::-1] if flipped else square
        assert np.array_equal(t.masks[0].numpy(), src[::2, ::2])  # nearest: floor(dst * 2)
        inner = _erode(t.masks[0], 1)
        px = out.permute(1, 2, 0)[inner].int()
        assert len(px) > 20
        assert (px - torch.tensor([220, 30, 40])).abs().max() <= 2


@pytest.mark.parametrize("scale_range", [(0.1, 2.0), (0.5, 2.0)])
def test_random_scale_keeps_the_square_under_its_mask(scale_range: tuple[float, float]) -> None:
    h, w = 48, 64
    image = np.full((h, w, 3), 90, np.uint8)
    square = np.zeros((h, w), bool)
    square[8:36, 10:38] = True
    image[square] = (30, 200, 60)
    target = _target([square], [2])
    tf = TrainTransform((32, 32), scale_range=scale_range)
    checked = 0
    for seed in range(16):
        out, t = tf(image, target, generator_for(seed))
        assert out.shape == (3, 32, 32)
        m = t.masks[0]
        inner = _erode(m, 2)  # the antialiased image blends across edges
        px = out.permute(1, 2, 0)[inner].int()
        if len(px):
            assert (px - torch.tensor([30, 200, 60])).abs().max() <= 3
            checked += 1
        outside = out.permute(1, 2, 0)[~m].int()
        assert not ((outside - torch.tensor([30, 200, 60])).abs().max(1).values <= 3).any()
    assert checked >= 4


def test_crowd_segments_are_removed_and_empty_masks_dropped() -> None:
    image, base = _noise_sample()
    corner = np.zeros((40, 60), bool)
    corner[0:12, 0:12] = True
    target = _target([base.masks[0].numpy(), base.masks[1].numpy(), corner], [3, 7, 9],
                     crowd=[False, True, False])
    tf = TrainTransform((20, 30), scale_range=(2.0, 2.0))
    seen = set()
    for seed in range(24):
        _, t = tf(image, target, generator_for(seed))
        assert 7 not in t.labels.tolist()
        assert not t.is_crowd.any() and len(t.is_crowd) == len(t.labels)
        assert t.masks.flatten(1).any(1).all()
        seen.add(tuple(t.labels.tolist()))
    assert (3, 9) in seen and any(9 not in s for s in seen)


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary erosion by r pixels with a cross; outside the image counts as False."""
    for _ in range(r):
        e = mask.clone()
        e[1:] &= mask[:-1]
        e[:-1] &= mask[1:]
        e[:, 1:] &= mask[:, :-1]
        e[:, :-1] &= mask[:, 1:]
        e[0], e[-1], e[:, 0], e[:, -1] = False, False, False, False
        mask = e
    return mask


def _corner_sample() -> tuple[np.ndarray, Target]:
    image = np.zeros((40, 60, 3), np.uint8)
    strip = np.zeros((40, 60), bool)
    strip[:, 0:5] = True  # survives a 30-wide crop (no flip) only when left <= 4
    return image, _target([strip], [1])


def test_retries_until_a_mask_survives() -> None:
    image, target = _corner_sample()
    no_retry = TrainTransform((20, 30), scale_range=(2.0, 2.0), max_retries=0)
    retry = TrainTransform((20, 30), scale_range=(2.0, 2.0), max_retries=60)
    empty = [len(no_retry(image, target, generator_for(s))[1]) == 0 for s in range(10)]
    assert any(empty)
    assert all(len(retry(image, target, generator_for(s))[1]) == 1 for s in range(10))


def test_retries_are_bounded() -> None:
    class Counting(TrainTransform):
        calls = 0

        def _once(self, *args):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super()._once(*args)

    # Scale 0.05: nearest keeps source rows/cols 0, 20 (and 40): pixel (1, 1) never survives.
    image = np.zeros((40, 60, 3), np.uint8)
    dot = np.zeros((40, 60), bool)
    dot[1, 1] = True
    out, t = Counting((2, 3), scale_range=(1.0, 1.0), max_retries=3)(image, _target([dot], [0]))
    assert Counting.calls == 4 and len(t) == 0 and out.shape == (3, 2, 3)


def test_reproducible_and_seeded() -> None:
    image, target = _noise_sample()
    tf = TrainTransform((24, 24), color_jitter=True)
    a = tf(image, target, generator_for(5, 3, 0))
    b = tf(image, target, generator_for(5, 3, 0))
    c = tf(image, target, generator_for(5, 4, 0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].masks, b[1].masks)
    assert not torch.equal(a[0], c[0])
    # A seeded transform repeats its stream from a fresh instance.
    s1, s2 = TrainTransform((24, 24), seed=9), TrainTransform((24, 24), seed=9)
    for _ in range(3):
        assert torch.equal(s1(image, target)[0], s2(image, target)[0])
    # Without a seed the global RNG is used, so torch.manual_seed reproduces it.
    torch.manual_seed(1)
    g1 = TrainTransform((24, 24))(image, target)[0]
    torch.manual_seed(1)
    assert torch.equal(g1, TrainTransform((24, 24))(image, target)[0])


def test_seeded_transform_differs_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    image, target = _noise_sample()
    outs = []
    for worker_seed in (100, 101):  # DataLoader gives each worker (and epoch) its own seed
        tf = TrainTransform((24, 24), seed=9)
        info = SimpleNamespace(seed=worker_seed)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        outs.append(tf(image, target)[0])
    assert not torch.equal(outs[0], outs[1])


def test_chw_tensor_input_and_bad_inputs() -> None:
    image, target = _noise_sample()
    out_np = TrainTransform((16, 16))(image, target, generator_for(0))[0]
    chw = torch.from_numpy(image).permute(2, 0, 1)
    assert torch.equal(out_np, TrainTransform((16, 16))(chw, target, generator_for(0))[0])
    with pytest.raises(ValueError, match=r"expected \(3, H, W\) uint8"):
        TrainTransform((16, 16))(chw.float(), target)
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8"):
        TrainTransform((16, 16))(image[..., :2], target)
    with pytest.raises(ValueError, match="target masks"):
        TrainTransform((16, 16))(image[:20], target)
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform((16, 16), scale_range=(2.0, 1.0))


# ------------------------------------------------------------------------------------------------
# Colour functions
# ------------------------------------------------------------------------------------------------


def _rand_image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=g)


def _gray_floor(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.double()
    return torch.floor(0.2989 * r + 0.587 * g + 0.114 * b)


@pytest.mark.parametrize("f", [0.0, 0.8745, 1.1, 2.0])
def test_brightness(f: float) -> None:
    x = _rand_image()
    expected = torch.floor((x.double() * f).clamp(0, 255))
    got = T.adjust_brightness(x, f).double()
    # float32 arithmetic may land just below an integer that double reaches: off by one at most.
    assert (got - expected).abs().max() <= 1 and (got == expected).double().mean() > 0.9


@pytest.mark.parametrize("f", [0.0, 0.5, 1.3])
def test_contrast_blends_with_the_mean_gray(f: float) -> None:
    x = _rand_image(1)
    mean = _gray_floor(x).mean()
    expected = torch.floor((f * x.double() + (1 - f) * mean).clamp(0, 255))
    got = T.adjust_contrast(x, f).double()
    assert (got - expected).abs().max() <= 1 and (got == expected).double().mean() > 0.9
    if f == 0.0:
        assert (got == torch.floor(mean)).all()


@pytest.mark.parametrize("f", [0.0, 0.6, 1.4])
def test_saturation_blends_with_gray(f: float) -> None:
    x = _rand_image(2)
    expected = torch.floor((f * x.double() + (1 - f) * _gray_floor(x)).clamp(0, 255))
    got = T.adjust_saturation(x, f).double()
    assert (got - expected).abs().max() <= 1 and (got == expected).double().mean() > 0.9
    if f == 0.0:
        assert (got[0] == got[1]).all() and (got[1] == got[2]).all()


@pytest.mark.parametrize("shift", [0.05, -0.05, 1 / 3, 0.5])
def test_hue_rotates_in_hsv(shift: float) -> None:
    x = _rand_image(3)
    got = T.adjust_hue(x, shift)
    xf = (x.double() / 255).permute(1, 2, 0).reshape(-1, 3).tolist()
    ref = []
    for r, g, b in xf:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        ref.append(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
    ref_t = torch.tensor(ref).reshape(5, 7, 3).permute(2, 0, 1) * 255
    assert (got.double() - ref_t).abs().max() <= 1.0


def test_hue_special_cases() -> None:
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    assert T.adjust_hue(red, 1 / 3).view(-1).tolist() == [0, 255, 0]
    x = _rand_image(4)
    assert torch.equal(T.adjust_hue(x, 0.0), x)
    gray = torch.full((3, 2, 2), 77, dtype=torch.uint8)
    assert torch.equal(T.adjust_hue(gray, 0.2), gray)


def test_hsv_round_trip_matches_colorsys() -> None:
    rgb = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(0))
    hsv = T.rgb_to_hsv(rgb)
    pixels = rgb.permute(1, 2, 0).reshape(-1, 3).tolist()
    ref = torch.tensor([colorsys.rgb_to_hsv(*p) for p in pixels])
    assert torch.allclose(hsv.permute(1, 2, 0).reshape(-1, 3), ref.float(), atol=1e-5)
    assert torch.allclose(T.hsv_to_rgb(hsv), rgb, atol=1e-5)


def test_colour_jitter_changes_the_colours() -> None:
    # Each of the 4 operations is skipped with p=0.5: all 4 skipped in 1/16 of the draws.
    image, target = _noise_sample()
    jitter = TrainTransform((20, 30), scale_range=(2.0, 2.0), color_jitter=True)
    changed = 0
    for seed in range(8):
        out, t = jitter(image, target, generator_for(seed))
        changed += not _find_window(image, out.permute(1, 2, 0).numpy())
        assert t.masks.shape[1:] == (20, 30)
    assert changed >= 5
