"""ALGM token merging (eomt.models.merging): assignments, round trips, the batch rule, proportional
attention, and the merging network against the plain one."""

import pytest
import torch

from eomt.config import tiny_config
from eomt.models import EoMT
from eomt.models.backbones.dinov2 import Attention
from eomt.models.merging import (Merged, MergingRun, TokenMerging, as_token_merging, attention_bias,
                                 global_assignment, local_assignment, merge, unmerge, window_ids,
                                 window_similarity)


def _plain(backbone: str = "dinov2", **kw: object) -> EoMT:
    model = EoMT(tiny_config(backbone=backbone, **kw)).eval()
    model.set_attn_mask_probs([0.0] * model.config.num_blocks)
    return model


def _start(x: torch.Tensor) -> Merged:
    b, n, _ = x.shape
    return Merged(x, torch.ones(b, n), torch.zeros(b, n, 2), torch.arange(n).expand(b, n))


def _windowed(b: int, grid: tuple[int, int], same: list[list[int]], d: int = 8) -> torch.Tensor:
    """Random tokens (B, N, D) whose 2x2 windows listed per image hold one repeated token."""
    x = torch.randn(b, grid[0] * grid[1], d)
    ids = window_ids(grid)
    for i, windows in enumerate(same):
        for w in windows:
            where = (ids == w).nonzero().flatten()
            x[i, where] = x[i, where[0]].clone()
    return x


@pytest.mark.parametrize("backbone", ["dinov2", "dinov3"])
def test_a_threshold_that_merges_nothing_gives_the_plain_output_bit_for_bit(backbone: str) -> None:
    model = _plain(backbone)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        model.token_merging = TokenMerging(threshold=1.01)
        merged = model(x)
    assert torch.equal(plain.mask_logits, merged.mask_logits)
    assert torch.equal(plain.class_logits, merged.class_logits)


def test_local_merge_then_unmerge_restores_a_map_with_duplicate_windows() -> None:
    grid = (4, 6)  # 6 windows
    x = _windowed(2, grid, [[0, 2, 5], [1, 2, 4]])
    scores = window_similarity(x, grid)
    assert torch.allclose(scores[0, [0, 2, 5]], torch.ones(3)) and (scores[0, [1, 3, 4]] < 0.9).all()
    dest, m = local_assignment(scores, window_ids(grid), 3)
    state = merge(_start(x), dest, m)
    assert m == 24 - 9 and state.x.shape == (2, 15, 8)
    assert sorted(state.size[0].tolist()) == [1.0] * 12 + [4.0] * 3
    assert torch.allclose(unmerge(state.x, state.source), x, atol=1e-6)


def test_global_merge_then_unmerge_restores_duplicates_and_sums_sizes() -> None:
    x = torch.randn(1, 10, 16)
    x[0, 4] = x[0, 7]  # A token 4 duplicates B token 7
    x[0, 0] = x[0, 7]  # and so does A token 0: both land on 7
    dest, m = global_assignment(x, threshold=0.999)
    state = merge(_start(x), dest, m)
    assert m == 8 and state.size.sum() == 10 and state.size.max() == 3
    assert torch.allclose(unmerge(state.x, state.source), x, atol=1e-6)


@pytest.mark.parametrize("layer", [1, 6])
def test_adaptive_global_count_is_algm_mean_plus_std_over_layer_per_image_then_the_batch_minimum(layer: int) -> None:
    x = torch.randn(3, 40, 8)
    x[0, 0:8:2] = x[0, 1:9:2] + 0.01 * torch.randn(4, 8)  # image 0: four A tokens near-duplicate a B token
    f = torch.nn.functional.normalize(x, dim=-1)
    best = (f[:, 0::2] @ f[:, 1::2].transpose(1, 2)).amax(-1)  # (3, 20) node maxima
    per_image = (best >= best.mean(1, keepdim=True) + best.std(1, keepdim=True, correction=0) / layer).sum(1)
    dest, m = global_assignment(x, None, layer)
    r = int(per_image.min())
    assert r > 0 and m == 40 - r
    for i in range(3):  # the r A tokens with the highest node max left, each into its best B token
        gone = torch.zeros(20, dtype=torch.bool)
        gone[best[i].topk(r).indices] = True
        kept_a = dest[i, 0::2][~gone]
        assert kept_a.unique().numel() == 20 - r  # the kept A tokens keep their own places
        assert set(dest[i, 0::2][gone].tolist()) <= set(dest[i, 1::2].tolist())
    assert torch.equal(global_assignment(x, 2.0, layer)[0], torch.arange(40).expand(3, 40))  # a fixed tau: none


def test_odd_grids_keep_their_last_row_and_column_unmerged() -> None:
    grid = (3, 5)  # 2 windows; row 2 and column 4 belong to none
    x = torch.ones(1, 15, 4)
    scores = window_similarity(x, grid)
    dest, m = local_assignment(scores, window_ids(grid), 2)
    state = merge(_start(x), dest, m)
    assert m == 9 and sorted(state.size[0].tolist()) == [1.0] * 7 + [4.0, 4.0]
    assert torch.equal(unmerge(state.x, state.source), x)


def test_batch_rule_merges_the_smallest_mergeable_count_in_every_image() -> None:
    grid = (4, 4)
    x = _windowed(3, grid, [[0, 1, 3], [2], [0, 3]])
    run = MergingRun(TokenMerging(threshold=0.99, global_after=0), _plain().backbone, grid, 4, {})
    lead = torch.randn(3, 2, 8)
    out = run.after_block(0, torch.cat([lead, x], dim=1))
    assert out.shape == (3, 2 + 16 - 3, 8)  # one window each: image 1 has only one
    assert (run.state.size == 4).sum(1).tolist() == [1, 1, 1]
    assert torch.equal(out[:, :2], lead)  # queries / cls / registers untouched
    # Image 1 merged its one duplicate window; the others one of theirs, exactly restored.
    restored = unmerge(run.state.x, run.state.source)
    ids = window_ids(grid)
    for i, w in enumerate([None, 2, None]):
        if w is not None:
            assert torch.allclose(restored[i, ids == w], x[i, ids == w], atol=1e-6)
    bias = run.attn_bias(torch.cat([torch.zeros(3, 5, 8), out], dim=1))
    assert bias.shape == (3, 1, 1, 5 + 2 + 13)
    assert torch.equal(bias[..., :7], torch.zeros(3, 1, 1, 7))  # size 1: no weight change
    assert torch.allclose(bias[..., 7:].exp().sum(-1), torch.full((3, 1, 1), 16.0))


def test_proportional_attention_equals_attention_over_the_duplicated_tokens() -> None:
    attn = Attention(16, 2).eval()
    lead, tokens = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    sizes = torch.tensor([[1.0, 3.0, 2.0, 1.0]])
    duplicated = tokens.repeat_interleave(sizes[0].long(), dim=1)  # (1, 7, 16)
    with torch.no_grad():
        want = attn(torch.cat([lead, duplicated], dim=1))
        got = attn(torch.cat([lead, tokens], dim=1), attention_bias(sizes, 7, torch.float32))
    assert torch.allclose(got[:, :3], want[:, :3], atol=1e-6)  # queries / cls / registers
    first = torch.tensor([0, 1, 4, 6]) + 3  # each merged token = each of its copies
    assert torch.allclose(got[:, 3:], want[:, first], atol=1e-6)


def test_merged_network_equals_plain_one_when_merged_tokens_are_exact_duplicates() -> None:
    model = _plain(depth=6, num_blocks=2)
    with torch.no_grad():
        model.backbone.pos_embed.zero_()  # no position embedding: a uniform image gives equal tokens
    x = torch.full((2, 3, 64, 64), 0.3)
    x[1, :, 32:] = 0.8  # image 1: two uniform halves
    with torch.no_grad():
        plain = model(x)
        model.token_merging = TokenMerging(threshold=0.999)
        merged = model(x)
    assert torch.allclose(merged.mask_logits, plain.mask_logits, atol=1e-4)
    assert torch.allclose(merged.class_logits, plain.class_logits, atol=1e-4)


@pytest.mark.parametrize("backbone", ["dinov2", "dinov3"])
def test_merging_runs_in_bf16_close_to_fp32(backbone: str) -> None:
    model = _plain(backbone)
    model.token_merging = TokenMerging(threshold=0.0)  # merge a lot
    x = torch.rand(2, 3, 64, 64)
    x[:, :, :32] = 0.5
    with torch.no_grad():
        ref = model(x)
        out = model.to(torch.bfloat16)(x)
    assert out.mask_logits.dtype == torch.bfloat16 and out.mask_logits.shape == ref.mask_logits.shape
    assert (out.mask_logits.float() - ref.mask_logits).abs().max() < 0.1 * ref.mask_logits.abs().max()


def test_merging_traces_with_torch_compile() -> None:
    model = _plain()
    model.token_merging = TokenMerging(threshold=0.0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend="eager")(x)  # graph breaks at the counts, no fullgraph
    assert torch.allclose(got.mask_logits, want.mask_logits, atol=1e-5)


def test_training_and_masked_attention_refuse_merging() -> None:
    model = EoMT(tiny_config())
    model.token_merging = TokenMerging()
    with pytest.raises(ValueError, match="token_merging: inference only.*training mode"):
        model.train()(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="token_merging: inference only.*attn_mask_probs"):
        model.eval()(torch.rand(1, 3, 64, 64))


def test_settings_are_checked() -> None:
    assert as_token_merging(True) == TokenMerging() and as_token_merging(0.9) == TokenMerging(threshold=0.9)
    assert as_token_merging(None) is None and as_token_merging(False) is None
    with pytest.raises(ValueError, match="global_threshold: nan"):
        TokenMerging(global_threshold=float("nan"))
    with pytest.raises(ValueError, match="global_after=2 do not fit a 4-block ViT"):
        TokenMerging(local_after=2).blocks(4)
    with pytest.raises(ValueError, match="threshold"):
        TokenMerging(threshold=float("nan"))
    assert TokenMerging().blocks(24) == (1, 12) and TokenMerging(global_after=0).blocks(4) == (1, 0)
