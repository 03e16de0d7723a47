"""Matching costs and the Hungarian assignment, checked against transformers' EoMT matcher."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers.models.eomt import modeling_eomt as hf

from eomt.structures import Target
from eomt.training.matcher import (
    class_cost,
    hungarian_match,
    matching_cost,
    pairwise_bce_cost,
    pairwise_dice_cost,
    stack_targets,
)
from eomt.training.points import point_sample, uncertain_points


class RandRecorder:
    """Wraps `torch.rand`, keeping every tensor it returns.

    transformers draws its points with plain `torch.rand` calls inside the matcher and the loss.
    Recording (not replacing) those draws lets us hand the very same coordinates to our functions
    through their explicit-points arguments, independent of how the RNG stream is consumed.
    """

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []
        self._rand = torch.rand

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        out = self._rand(*args, **kwargs)
        self.draws.append(out)
        return out


def make_batch(
    counts: tuple[int, ...], num_queries: int = 7, num_classes: int = 5, low: int = 8, full: int = 32
) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    """Random logits at `low` resolution and blob-like targets at `full` resolution."""
    batch = len(counts)
    mask_logits = torch.randn(batch, num_queries, low, low) * 3
    class_logits = torch.randn(batch, num_queries, num_classes + 1) * 2
    targets = []
    for n in counts:
        # Smooth random fields thresholded: connected regions, like real segments.
        field = F.interpolate(torch.randn(n, 1, 4, 4), size=(full, full), mode="bilinear")[:, 0]
        masks = field > 0.3
        targets.append(Target(masks, torch.randint(0, num_classes, (n,)), torch.zeros(n, dtype=torch.bool)))
    return mask_logits, class_logits, targets


def test_point_sample_reads_pixel_centres() -> None:
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    ys, xs = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    coords = torch.stack([(xs + 0.5) / 4, (ys + 0.5) / 3], -1).reshape(1, -1, 2)  # (1, 12, 2) as (x, y)
    assert torch.allclose(point_sample(image, coords)[0, 0], image.flatten(), atol=1e-5)


def test_pairwise_costs_equal_per_pair_losses() -> None:
    pred = torch.randn(2, 3, 50)
    tgt = (torch.rand(2, 4, 50) > 0.5).float()
    bce = pairwise_bce_cost(pred, tgt)
    dice = pairwise_dice_cost(pred, tgt)
    for b, q, n in itertools.product(range(2), range(3), range(4)):
        expected_bce = F.binary_cross_entropy_with_logits(pred[b, q], tgt[b, n])
        p = pred[b, q].sigmoid()
        expected_dice = 1 - (2 * (p * tgt[b, n]).sum() + 1) / (p.sum() + tgt[b, n].sum() + 1)
        assert torch.allclose(bce[b, q, n], expected_bce, atol=1e-6)
        assert torch.allclose(dice[b, q, n], expected_dice, atol=1e-6)
    # And the same numbers as transformers' pair-wise functions.
    assert torch.allclose(bce[1], hf.pair_wise_sigmoid_cross_entropy_loss(pred[1], tgt[1]), atol=1e-6)
    assert torch.allclose(dice[1], hf.pair_wise_dice_loss(pred[1], tgt[1]), atol=1e-6)


def test_class_cost_is_negative_probability_of_target_class() -> None:
    logits = torch.randn(2, 3, 6)
    labels = torch.tensor([[0, 5], [2, 2]])
    cost = class_cost(logits, labels)
    probs = logits.softmax(-1)
    for b, q, n in itertools.product(range(2), range(3), range(2)):
        assert cost[b, q, n] == pytest.approx(-probs[b, q, labels[b, n]].item(), abs=1e-7)


def test_non_finite_costs_are_clamped_like_the_official() -> None:
    mask_logits, class_logits, targets = make_batch((2,))
    class_logits[0, 0] = float("nan")
    mask_logits[0, 1] = float("inf")
    points = torch.rand(1, 64, 2)
    cost = matching_cost(class_logits, mask_logits, stack_targets(targets), points)
    assert torch.isfinite(cost).all()
    assert (cost[0, 0] == 0).all()  # NaN -> 0
    assert cost.abs().max() <= 1e10
    pred_idx, tgt_idx = hungarian_match(class_logits, mask_logits, targets, point_coords=points)[0]
    assert len(pred_idx) == len(tgt_idx) == 2


@pytest.mark.parametrize("counts", [(3, 2), (4, 0, 9)])
def test_assignment_equals_transformers_matcher(
    monkeypatch: pytest.MonkeyPatch, counts: tuple[int, ...]
) -> None:
    # Image 3 of the second case has more targets (9) than queries (7): only 7 get matched.
    mask_logits, class_logits, targets = make_batch(counts)
    matcher = hf.EomtHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544)
    recorder = RandRecorder()
    monkeypatch.setattr(torch, "rand", recorder)
    expected = matcher(
        mask_logits, class_logits, [t.masks.float() for t in targets], [t.labels for t in targets]
    )
    monkeypatch.undo()
    points = torch.cat(recorder.draws)  # one (1, P, 2) draw per image -> (B, P, 2)
    assert points.shape == (len(counts), 12544, 2)
    got = hungarian_match(class_logits, mask_logits, targets, point_coords=points)
    for (gp, gt), (ep, et), n in zip(got, expected, counts):
        assert len(gp) == min(n, 7)
        assert torch.equal(gp, ep) and torch.equal(gt, et)


def test_assignment_is_optimal_by_brute_force() -> None:
    mask_logits, class_logits, targets = make_batch((3,), num_queries=4)
    points = torch.rand(1, 256, 2)
    cost = matching_cost(class_logits, mask_logits, stack_targets(targets), points)[0]  # (4, 3)
    best = min(
        sum(cost[q, n].item() for n, q in enumerate(perm)) for perm in itertools.permutations(range(4), 3)
    )
    pred_idx, tgt_idx = hungarian_match(class_logits, mask_logits, targets, point_coords=points)[0]
    assert cost[pred_idx, tgt_idx].sum().item() == pytest.approx(best, abs=1e-5)


def test_generator_makes_matching_reproducible_and_accepts_tuples() -> None:
    mask_logits, class_logits, targets = make_batch((3, 3))
    pairs = [(t.masks, t.labels) for t in targets]
    a = hungarian_match(
        class_logits, mask_logits, pairs, num_points=100, generator=torch.Generator().manual_seed(1)
    )
    b = hungarian_match(
        class_logits, mask_logits, targets, num_points=100, generator=torch.Generator().manual_seed(1)
    )
    assert all(torch.equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def test_bad_targets_name_the_field() -> None:
    mask_logits, class_logits, _ = make_batch((1,))
    with pytest.raises(ValueError, match=r"targets\[0\]: expected masks \(N, H, W\) and labels \(N,\)"):
        hungarian_match(class_logits, mask_logits, [(torch.zeros(2, 4, 4), torch.zeros(3))])
    with pytest.raises(ValueError, match="expected 1 images"):
        hungarian_match(class_logits, mask_logits, [(torch.zeros(0, 4, 4), torch.zeros(0))] * 2)


def test_uncertain_points_keep_the_most_uncertain_candidates() -> None:
    logits = torch.randn(3, 8, 8) * 4
    gen = torch.Generator().manual_seed(0)
    candidates = torch.rand(3, 300, 2, generator=gen)
    extra = torch.rand(3, 25, 2, generator=gen)
    points = uncertain_points(logits, 100, 3.0, 0.75, candidates=candidates, extra=extra)
    assert points.shape == (3, 100, 2)
    assert torch.equal(points[:, 75:], extra)
    uncertainty = -point_sample(logits.unsqueeze(1), candidates)[:, 0].abs()  # (3, 300)
    chosen = -point_sample(logits.unsqueeze(1), points[:, :75])[:, 0].abs()  # (3, 75)
    kth = uncertainty.topk(75, dim=1).values[:, -1:]
    assert (chosen >= kth - 1e-6).all()
    again = uncertain_points(logits, 100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, uncertain_points(logits, 100, generator=torch.Generator().manual_seed(5)))
