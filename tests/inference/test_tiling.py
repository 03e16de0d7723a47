"""Tiled prediction: the tiles partition the image, objects across seams come out whole.

A random network predicts noise, so the joining rule is tested with a stand-in network whose
outputs are a function of each pixel's colour (one query per colour, full-resolution mask logits,
class logits in the model's format): a tile then sees exactly what the whole image shows there,
and a tiled prediction must equal an untiled one of the same image. The tiny real network proves
the shapes and the `eomt predict --tile` path.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eomt.checkpoints import save_model
from eomt.config import tiny_config
from eomt.inference.predictor import Predictor
from eomt.inference.tiling import make_tiles, predict_tiled
from eomt.models import EoMT
from eomt.models.eomt import EoMTOutput
from eomt.structures import SemanticResult

# (colour, class): grey is stuff (class 3); each disc has a colour of its own, classes repeat.
PALETTE = [
    ((128, 128, 128), 3),
    ((220, 30, 30), 0), ((30, 200, 30), 0), ((30, 30, 220), 1), ((220, 220, 30), 1),
    ((30, 220, 220), 2), ((220, 30, 220), 2), ((250, 140, 0), 0),
]
# (centre y, centre x, radius, palette index) on a 200 x 300 image cut into 64-pixel tiles, 16 apart:
# tile starts y 0, 48, 96, 136 and x 0, 48, 96, 144, 192, 236; core seams y 56, 104, 148 and
# x 56, 104, 152, 200, 246.
DISCS = [
    (56, 104, 20, 1),  # on a corner of four cores, larger than the overlap
    (100, 150, 45, 3),  # larger than a tile: tiles that see only its inside
    (150, 54, 7, 5),  # small, across a seam
    (20, 195, 10, 2),  # two discs of one class touching across the seam at x = 200
    (20, 216, 11, 7),
    (180, 270, 12, 6),  # at the image corner
    (170, 230, 9, 4),  # inside one core
]


def disc_image(h: int = 200, w: int = 300) -> torch.Tensor:
    """(3, H, W) uint8: the discs on grey, with hard edges."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = PALETTE[0][0]
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r, p in DISCS:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = PALETTE[p][0]
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


class ColourNet:
    """Segments by colour: query q's mask is where the pixel has palette colour q; its class is the
    colour's class when the colour is in the input, else no-object. Records its input shapes."""

    def __init__(self, img_size: tuple[int, int], task: str) -> None:
        self.img_size = img_size
        self.input_shape = (1, 3, *img_size)
        self.config = tiny_config(task=task, img_size=img_size, patch_size=4, num_queries=len(PALETTE),
                                  stuff_classes=(3, 4))
        self.seen: list[tuple[int, ...]] = []

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor) -> EoMTOutput:
        self.seen.append(tuple(x.shape))
        colours = torch.tensor([c for c, _ in PALETTE], dtype=torch.float32) / 255  # (Q, 3)
        match = (x[:, None] - colours[None, :, :, None, None]).abs().amax(2) < 0.02  # (B, Q, H, W)
        mask_logits = torch.where(match, 8.0, -8.0)  # full resolution: the restoring is the identity
        present = match.flatten(2).any(2)  # (B, Q)
        num_classes = self.config.num_classes
        class_logits = torch.zeros(x.shape[0], len(PALETTE), num_classes + 1)
        for q, (_, c) in enumerate(PALETTE):
            class_logits[:, q, c] = torch.where(present[:, q], 6.0 + 0.2 * q, 0.0)  # a score per colour
            class_logits[:, q, num_classes] = torch.where(present[:, q], 0.0, 6.0)
        return EoMTOutput(mask_logits, class_logits, [], [])


def _segments(result) -> list[tuple[int, bytes, float]]:
    """(class, mask bytes, score) per segment or instance, sorted: comparable whatever the ids."""
    if hasattr(result, "segmentation"):
        seg = result.segmentation
        items = [(s["category_id"], (seg == s["id"]).numpy().tobytes(), s["score"]) for s in result.segments]
    else:
        items = [(int(c), m.numpy().tobytes(), float(s)) for m, c, s in zip(result.masks, result.labels, result.scores)]
    return sorted(items)


@pytest.mark.parametrize("size", [(200, 300), (64, 64), (50, 130), (1, 70), (65, 200)])
@pytest.mark.parametrize("tile,overlap", [(64, 16), (64, 0), (32, 31)])
def test_cores_partition_the_image_inside_their_tiles(size, tile, overlap) -> None:
    h, w = size
    owner = torch.zeros(h, w, dtype=torch.long)
    for t in make_tiles(h, w, tile, overlap):
        assert 0 <= t.y0 <= t.cy0 < t.cy1 <= t.y1 <= h and 0 <= t.x0 <= t.cx0 < t.cx1 <= t.x1 <= w
        assert t.y1 - t.y0 == min(tile, h) and t.x1 - t.x0 == min(tile, w)
        owner[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
    assert bool((owner == 1).all())


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_objects_across_tile_borders_come_out_as_untiled(task: str) -> None:
    image = disc_image()
    threshold = {"instance": 0.5}.get(task)
    whole = ColourNet((200, 300), task)  # the image fits: no tiling, no resizing
    expected = Predictor(whole, task=task, threshold=threshold).predict_one(image)
    small = ColourNet((64, 64), task)
    tiled = Predictor(small, task=task, threshold=threshold, tile=64, tile_overlap=16, batch_size=5).predict_one(image)
    assert set(small.seen) <= {(5, 3, 64, 64), (4, 3, 64, 64)}  # 24 tiles, never more than a tile
    if task == "semantic":
        assert torch.equal(tiled.labels, expected.labels)
        return
    got, want = _segments(tiled), _segments(expected)
    # Each disc once, and the grey background (stuff: a panoptic segment, never an instance).
    assert len(want) == len(DISCS) + (task == "panoptic")
    assert [(c, m) for c, m, _ in got] == [(c, m) for c, m, _ in want]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in want], rtol=1e-5)
    if task == "panoptic":
        areas = torch.bincount(tiled.segmentation.flatten())
        assert [s["area"] for s in tiled.segments] == areas[1:].tolist()
        assert [s["isthing"] for s in tiled.segments] == [s["category_id"] != 3 for s in tiled.segments]


def test_semantic_scores_blend_with_weights_ramping_over_the_overlap() -> None:
    # Two tiles side by side, sharing x in [48, 64): the left one says class 0, the right one
    # class 1, everywhere. Their weights cross in the middle of the overlap, at the core seam 56.
    def run(tiles: list[torch.Tensor]) -> list[SemanticResult]:
        scores = torch.zeros(2, 64, 64)
        scores[int(tiles[0].float().mean() > 100)] = 1.0  # the right half of the image is brighter
        return [SemanticResult(scores.argmax(0), scores)]

    image = torch.zeros(3, 64, 112, dtype=torch.uint8)
    image[:, :, 56:] = 255
    result = predict_tiled(image, run, "semantic", 64, 16)
    assert bool((result.labels[:, :56] == 0).all()) and bool((result.labels[:, 56:] == 1).all())


def test_instance_top_k_keeps_the_best_joined_instances() -> None:
    image = disc_image()
    run = Predictor(ColourNet((64, 64), "instance"), threshold=0.5).predict_tensors  # one result per tile
    full = predict_tiled(image, run, "instance", 64, 16, top_k=100)
    best = predict_tiled(image, run, "instance", 64, 16, top_k=3)  # the rest dropped as tiles finish
    assert len(full.labels) == len(DISCS) and len(best.labels) == 3  # the background is stuff
    assert bool((full.scores[:-1] > full.scores[1:]).all())
    assert torch.equal(best.masks, full.masks[:3]) and torch.equal(best.labels, full.labels[:3])
    assert torch.equal(best.scores, full.scores[:3])


def test_without_overlap_nothing_is_joined_across_seams() -> None:
    tiled = Predictor(ColourNet((64, 64), "instance"), threshold=0.5, tile=64, tile_overlap=0).predict_one(disc_image())
    assert len(tiled.labels) > len(DISCS)  # discs across seams come out in pieces


def test_tile_options_are_checked() -> None:
    net = ColourNet((64, 64), "panoptic")
    with pytest.raises(ValueError, match="tile: 0 must be >= 1"):
        Predictor(net, tile=0)
    with pytest.raises(ValueError, match="tile_overlap: 64 must be >= 0 and smaller than the tile"):
        Predictor(net, tile=64, tile_overlap=64)


def _tiny(task: str) -> EoMT:
    torch.manual_seed(0)
    model = EoMT(tiny_config(task=task, stuff_classes=(3, 4)))
    model.set_attn_mask_probs([0.0, 0.0])
    return model


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_the_real_network_gives_results_at_the_original_size(task: str) -> None:
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    result = Predictor(_tiny(task), threshold=0.0 if task == "panoptic" else None, tile=64, top_k=20).predict_one(image)
    if task == "panoptic":
        assert result.segmentation.shape == (200, 300) and result.segments
        assert sorted(s["id"] for s in result.segments) == list(range(1, len(result.segments) + 1))
    elif task == "instance":
        assert result.masks.shape[1:] == (200, 300) and 0 < len(result.labels) <= 20
        assert bool((result.scores[:-1] >= result.scores[1:]).all())
    else:
        assert result.labels.shape == (200, 300) and int(result.labels.max()) < 5


@pytest.mark.parametrize("task", ["panoptic", "semantic"])
def test_one_tile_covering_the_image_is_the_untiled_prediction(task: str) -> None:
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    model, threshold = _tiny(task), 0.0 if task == "panoptic" else None
    want = Predictor(model, threshold=threshold).predict_one(image)
    got = Predictor(model, threshold=threshold, tile=128).predict_one(image)
    if task == "semantic":
        assert torch.equal(got.labels, want.labels)
        return
    assert torch.equal(got.segmentation, want.segmentation) and got.segments
    for g, w in zip(got.segments, want.segments, strict=True):
        assert g == {**w, "score": pytest.approx(w["score"])}


def test_predict_command_with_tiles(tmp_path: Path) -> None:
    model = _tiny("panoptic")
    checkpoint = save_model(model, tmp_path / "tiny.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "predict", "--model", str(checkpoint), str(tmp_path / "big.png"),
         "--out", str(out), "--tile", "64", "--threshold", "0.0"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    with Image.open(out / "big_panoptic.png") as im:
        assert im.size == (300, 200)
    with Image.open(out / "big_overlay.png") as im:
        assert im.height >= 200 and im.width > 300


def test_joined_instances_as_rle_equal_the_dense_ones() -> None:
    from eomt.structures import RLEMasks

    image = disc_image()
    run = Predictor(ColourNet((64, 64), "instance"), threshold=0.5).predict_tensors
    dense = predict_tiled(image, run, "instance", 64, 16, mask_format="dense")
    rle = predict_tiled(image, run, "instance", 64, 16, mask_format="rle")
    assert isinstance(rle.masks, RLEMasks) and len(rle.masks) == len(DISCS)
    assert torch.equal(rle.masks.to_dense(), dense.masks) and torch.equal(rle.labels, dense.labels)
    assert torch.equal(rle.scores, dense.scores)
