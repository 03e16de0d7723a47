"""The EoMT criterion against transformers' EomtLoss, the block sum, edge cases and the
cross-process mask count."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from transformers import EomtConfig
from transformers.models.eomt.modeling_eomt import EomtLoss

from eomt.structures import Target
from eomt.training.losses import (
    MaskClassificationLoss,
    average_num_masks,
    block_suffix,
    classification_loss,
    dice_loss,
    sigmoid_bce_loss,
)

from .test_matcher import RandRecorder, make_batch

NUM_CLASSES = 5
DRAWS_PER_BLOCK = 2  # per image one matcher draw, then two draws for the loss points


def transformers_loss(
    monkeypatch: pytest.MonkeyPatch,
    mask_logits: torch.Tensor,
    class_logits: torch.Tensor,
    targets: list[Target],
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """EomtLoss with the official constants (EomtConfig defaults), recording its random draws."""
    criterion = EomtLoss(EomtConfig(num_labels=NUM_CLASSES), weight_dict={})
    recorder = RandRecorder()
    monkeypatch.setattr(torch, "rand", recorder)
    masks, labels = [t.masks.float() for t in targets], [t.labels for t in targets]
    out = criterion(mask_logits, class_logits, masks, labels)
    monkeypatch.undo()
    return out, recorder.draws


def replay(draws: list[torch.Tensor], batch: int) -> dict[str, object]:
    """Our explicit-points arguments from transformers' draws of one prediction, in call order:
    `batch` matcher draws (1, P, 2), then loss candidates (M, 3P, 2) and uniform points (M, P/4, 2)."""
    assert len(draws) == batch + 2
    return {"match_points": torch.cat(draws[:batch]), "loss_points": (draws[batch], draws[batch + 1])}


@pytest.mark.parametrize("counts", [(3, 2), (4, 0, 6)])
def test_single_prediction_equals_transformers(
    monkeypatch: pytest.MonkeyPatch, counts: tuple[int, ...]
) -> None:
    mask_logits, class_logits, targets = make_batch(counts, num_classes=NUM_CLASSES)
    ours_in = [t.clone().requires_grad_() for t in (mask_logits, class_logits)]
    theirs_in = [t.clone().requires_grad_() for t in (mask_logits, class_logits)]
    expected, draws = transformers_loss(monkeypatch, *theirs_in, targets)
    assert draws[len(counts)].shape == (sum(counts), 37632, 2)  # 12544 * 3 candidates per mask
    assert draws[len(counts) + 1].shape == (sum(counts), 3136, 2)  # 12544 - int(0.75 * 12544)
    got = MaskClassificationLoss(NUM_CLASSES)(*ours_in, targets, **replay(draws, len(counts)))
    assert set(got) == set(expected) == {"loss_mask", "loss_dice", "loss_cross_entropy"}
    for key in got:
        assert torch.allclose(got[key], expected[key], atol=1e-5, rtol=1e-5), key
    sum(got.values()).backward()
    sum(expected.values()).backward()
    for ours, theirs in zip(ours_in, theirs_in):
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)


def test_block_total_equals_transformers_weighted_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = (3, 2)
    blocks = [make_batch(counts, num_classes=NUM_CLASSES)[:2] for _ in range(3)]
    targets = make_batch(counts, num_classes=NUM_CLASSES)[2]
    criterion = MaskClassificationLoss(NUM_CLASSES)
    weights = {"loss_mask": 5.0, "loss_dice": 5.0, "loss_cross_entropy": 2.0}  # EomtConfig weights
    expected_total = torch.tensor(0.0)
    ours: dict[str, torch.Tensor] = {}
    for i, (mask_logits, class_logits) in enumerate(blocks):
        theirs, draws = transformers_loss(monkeypatch, mask_logits, class_logits, targets)
        expected_total = expected_total + sum(weights[k] * v for k, v in theirs.items())
        block = criterion(mask_logits, class_logits, targets, **replay(draws, len(counts)))
        ours.update({f"{k}{block_suffix(i, len(blocks))}": v for k, v in block.items()})
    assert sorted(ours) == sorted(
        f"{k}{s}" for k in weights for s in ("_block_-2", "_block_-1", "")
    )
    assert torch.allclose(criterion.weighted_total(ours), expected_total, atol=1e-5)


def test_forward_blocks_is_the_weighted_sum_of_each_block() -> None:
    counts = (3, 1)
    blocks = [make_batch(counts, num_classes=NUM_CLASSES)[:2] for _ in range(5)]
    targets = make_batch(counts, num_classes=NUM_CLASSES)[2]
    criterion = MaskClassificationLoss(NUM_CLASSES, num_points=400)
    masks, classes = [b[0] for b in blocks], [b[1] for b in blocks]
    gen = torch.Generator().manual_seed(3)
    total, losses = criterion.forward_blocks(masks, classes, targets, generator=gen)
    assert list(losses) == [
        f"{k}{s}"
        for s in ("_block_-4", "_block_-3", "_block_-2", "_block_-1", "")
        for k in ("loss_mask", "loss_dice", "loss_cross_entropy")
    ]
    # The same generator stream, consumed block by block in the same order.
    gen = torch.Generator().manual_seed(3)
    expected = torch.tensor(0.0)
    for i, (m, c) in enumerate(zip(masks, classes)):
        block = criterion(m, c, targets, generator=gen)
        expected = expected + 5 * block["loss_mask"] + 5 * block["loss_dice"]
        expected = expected + 2 * block["loss_cross_entropy"]
        for key, value in block.items():
            assert torch.equal(losses[f"{key}{block_suffix(i, 5)}"], value)
    assert torch.allclose(total, expected, atol=1e-6)


def test_weighted_total_rejects_unknown_keys() -> None:
    criterion = MaskClassificationLoss(NUM_CLASSES)
    with pytest.raises(ValueError, match="loss key 'loss_focal_block_-1'"):
        criterion.weighted_total({"loss_focal_block_-1": torch.tensor(1.0)})


def test_pointwise_losses_match_definitions() -> None:
    logits = torch.randn(4, 30)
    labels = (torch.rand(4, 30) > 0.5).float()
    expected_bce = sum(F.binary_cross_entropy_with_logits(logits[i], labels[i]) for i in range(4)) / 2.5
    assert torch.allclose(sigmoid_bce_loss(logits, labels, 2.5), expected_bce, atol=1e-6)
    p = logits.sigmoid()
    per_mask = 1 - (2 * (p * labels).sum(1) + 1) / (p.sum(1) + labels.sum(1) + 1)
    assert torch.allclose(dice_loss(logits, labels, 2.5), per_mask.sum() / 2.5, atol=1e-6)


def test_classification_loss_weights_no_object_by_a_tenth() -> None:
    logits = torch.randn(2, 3, 4)  # 3 classes + no-object
    loss = classification_loss(logits, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([1, 2]), 0.1)
    target = torch.tensor([[3, 3, 1], [2, 3, 3]])
    nll = -logits.log_softmax(-1).gather(2, target.unsqueeze(-1)).squeeze(-1)  # (2, 3)
    weight = torch.where(target == 3, 0.1, 1.0)
    assert torch.allclose(loss, (weight * nll).sum() / weight.sum(), atol=1e-6)


def test_batch_without_targets_is_finite_and_differentiable() -> None:
    mask_logits, class_logits, targets = make_batch((0, 0), num_classes=NUM_CLASSES)
    mask_logits.requires_grad_()
    class_logits.requires_grad_()
    total, losses = MaskClassificationLoss(NUM_CLASSES, num_points=64).forward_blocks(
        [mask_logits], [class_logits], targets
    )
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    no_object = torch.full((2 * 7,), NUM_CLASSES)
    expected_ce = F.cross_entropy(class_logits.flatten(0, 1), no_object)
    assert torch.allclose(losses["loss_cross_entropy"], expected_ce)
    total.backward()
    assert mask_logits.grad is not None and torch.isfinite(class_logits.grad).all()


def _average_on_rank(rank: int, init_file: str, results: "mp.SimpleQueue") -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results.put((rank, average_num_masks([3, 8][rank], torch.device("cpu")).item()))
    finally:
        dist.destroy_process_group()


def test_num_masks_is_averaged_across_processes(tmp_path: object) -> None:
    assert average_num_masks(0, torch.device("cpu")).item() == 1.0  # clamped when alone and empty
    # fork: the children reuse the imported modules instead of re-importing transformers.
    ctx = mp.get_context("fork")
    results = ctx.SimpleQueue()
    mp.start_processes(
        _average_on_rank, args=(str(tmp_path / "init"), results), nprocs=2, start_method="fork"
    )
    values = dict(results.get() for _ in range(2))
    assert values == {0: 5.5, 1: 5.5}  # (3 + 8) / 2 on both ranks
