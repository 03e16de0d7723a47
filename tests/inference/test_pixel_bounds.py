"""The cell-bound panoptic assignment equals the direct per-pixel computation."""

import pytest
import torch

from eomt.inference import postprocess, restore
from eomt.inference.postprocess import panoptic_rule
from eomt.inference.pixel_bounds import plan_assignment
from eomt.inference.preprocess import scaled_size_longest
from eomt.structures import ImageMeta


def voronoi_logits(q: int, hw: int, seed: int, sharpness: float = 8.0) -> torch.Tensor:
    """Smooth mask logits (Q, hw, hw) like a real output: query q is positive in the Voronoi cell
    of a random seed point and falls off with the distance to the cell's border."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.rand(q, 2, generator=g)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, hw), torch.linspace(0, 1, hw), indexing="ij"), -1)
    dist = (grid[None] - seeds[:, None, None]).norm(dim=-1)  # (Q, hw, hw)
    two = dist.topk(2, dim=0, largest=False).values  # (2, hw, hw)
    other = torch.where(dist == two[0], two[1], two[0])  # distance to the nearest other seed
    return sharpness * (other - dist) * q**0.5


def direct(low: torch.Tensor, meta: ImageMeta, scores: torch.Tensor, t: float) -> tuple:
    return panoptic_rule._assign_pixels(restore.restore_logits(low, meta), scores, t, from_logits=True)


SIZES = [(96, 128), (128, 96), (128, 128), (60, 80), (200, 266), (9, 200), (40, 36)]


@pytest.mark.parametrize("original", SIZES)
@pytest.mark.parametrize("sharpness,threshold", [(8.0, 0.5), (8.0, 0.7), (0.4, 0.5), (40.0, 0.3)])
def test_plan_equals_direct_assignment(original: tuple[int, int], sharpness: float, threshold: float) -> None:
    q, s = 12, 128
    low = voronoi_logits(q, s // 4, seed=sum(original), sharpness=sharpness)
    scores = 0.8 + 0.2 * torch.rand(q, generator=torch.Generator().manual_seed(1))
    meta = ImageMeta(original, scaled_size_longest(*original, s), (s, s))
    plan = plan_assignment(low, meta, scores, threshold)
    assert plan is not None  # smooth masks leave little open
    got = plan.resolve(restore.restore_logits(low, meta, restore.Workspace()))
    for a, b, name in zip(direct(low, meta, scores, threshold), got, ("winner", "inside", "mask area")):
        assert torch.equal(a, b), name
    assert plan.contested[0].numel() > 0 and plan.crossing[0].numel() > 0  # the exact part was exercised
    # Logits with queries innermost (the network's channels-last layout) plan the same.
    strided = low[None].contiguous(memory_format=torch.channels_last)[0]
    again = plan_assignment(strided, meta, scores, threshold)
    assert torch.equal(again.winner, plan.winner) and torch.equal(again.orig_area, plan.orig_area)


def test_plan_leaves_noise_to_the_direct_path() -> None:
    low = torch.randn(12, 16, 16, generator=torch.Generator().manual_seed(0))
    meta = ImageMeta((48, 64), (48, 64), (64, 64))
    assert plan_assignment(low, meta, torch.full((12,), 0.9), 0.5) is None
    assert plan_assignment(voronoi_logits(12, 16, 0), meta, torch.full((12,), 0.9), 0.999) is None


def test_panoptic_uses_the_plan_and_matches_the_direct_segments() -> None:
    q, c, s = 12, 5, 64
    low = voronoi_logits(q, s // 4, seed=3)[None]  # (1, Q, h, w)
    g = torch.Generator().manual_seed(4)
    classes = torch.randn(1, q, c + 1, generator=g)
    classes[0, torch.arange(q), torch.randint(0, c, (q,), generator=g)] += 8  # every query confident
    meta = ImageMeta((48, 64), (48, 64), (s, s))
    ours = postprocess.panoptic(low, classes, [meta], stuff_classes=[3, 4])[0]
    # The network's mask logits are channels-last; the result does not depend on the layout.
    channels_last = postprocess.panoptic(low.contiguous(memory_format=torch.channels_last), classes, [meta], [3, 4])[0]
    assert torch.equal(channels_last.segmentation, ours.segmentation)
    probs = classes.softmax(-1)[0]
    scores, labels = probs.max(-1)
    is_stuff = torch.zeros(c + 1, dtype=torch.bool)
    is_stuff[[3, 4]] = True
    ref = panoptic_rule._panoptic_one(restore.restore_logits(low[0], meta), scores, labels, is_stuff, 0.5, 0.8,
                                    from_logits=True)
    assert torch.equal(ours.segmentation, ref.segmentation)
    assert ours.segments == ref.segments
    assert len(ours.segments) > 3
