"""Post-processing parity: transformers' `EomtImageProcessorPil` and the official rules, on crafted
logits where many queries pass the thresholds, overlap, merge (stuff) and get occluded."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eomt.inference import postprocess
from eomt.inference.postprocess import instance_rule
from eomt.inference.postprocess.blocks import count_true as _count_true
from eomt.inference.postprocess.panoptic_rule import _panoptic_one
from eomt.inference.preprocess import scaled_size_longest, scaled_size_shortest
from eomt.structures import ImageMeta, Windows

transformers = pytest.importorskip("transformers")
from transformers import EomtImageProcessorPil  # noqa: E402
from transformers.image_transforms import get_size_with_aspect_ratio  # noqa: E402
from transformers.models.eomt.image_processing_pil_eomt import compute_segments  # noqa: E402


def crafted_logits(b: int, q: int, c: int, hw: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits (B, Q, hw, hw): each query owns random blocks of a 4x4 grid (several queries
    may own the same block, some own none), plus noise; class logits (B, Q, C+1) with one
    confident class per query (sometimes no-object) and confidences spread around 0.8."""
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, q, (b, 16), generator=g)
    blocks = F.one_hot(owner, q).float().transpose(1, 2).reshape(b, q, 4, 4)  # (B, Q, 4, 4)
    extra = (torch.rand(b, q, 4, 4, generator=g) < 0.08).float()  # overlapping claims
    masks = (blocks + extra).clamp(max=1) * 8 - 4
    masks = F.interpolate(masks, size=(hw, hw), mode="nearest") + torch.randn(b, q, hw, hw, generator=g) * 1.5
    cls = torch.randint(0, c + 1, (b, q), generator=g)
    logits = torch.randn(b, q, c + 1, generator=g) * 0.3
    conf = 1.5 + 5 * torch.rand(b, q, generator=g)
    logits.scatter_add_(2, cls[..., None], conf[..., None])
    return masks, logits


def hf_outputs(masks: torch.Tensor, classes: torch.Tensor, patch_offsets=None) -> SimpleNamespace:
    return SimpleNamespace(masks_queries_logits=masks, class_queries_logits=classes, patch_offsets=patch_offsets)


SIZES = [(48, 64), (64, 40), (64, 64), (45, 96)]


def metas_for(sizes: list[tuple[int, int]], s: int) -> list[ImageMeta]:
    metas = []
    for h, w in sizes:
        # transformers crops the padding with its own sizing rule; these sizes agree with ours.
        assert get_size_with_aspect_ratio((h, w), s, s) == scaled_size_longest(h, w, s)
        metas.append(ImageMeta((h, w), scaled_size_longest(h, w, s), (s, s)))
    return metas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panoptic_matches_transformers(seed: int) -> None:
    s, c = 64, 6
    masks, classes = crafted_logits(len(SIZES), 12, c, 16, seed)
    counts = {}
    for stuff in ([4, 5], []):
        ours = postprocess.panoptic(masks, classes, metas_for(SIZES, s), stuff, threshold=0.8)
        proc = EomtImageProcessorPil(size={"shortest_edge": s, "longest_edge": s})
        ref = proc.post_process_panoptic_segmentation(
            hf_outputs(masks, classes), target_sizes=SIZES, stuff_classes=stuff
        )
        for o, r in zip(ours, ref):
            # transformers: -1 = void and ids from 0; ours: 0 = void and ids from 1.
            assert torch.equal(o.segmentation, r["segmentation"].long() + 1)
            got = [(x["id"] - 1, x["category_id"]) for x in o.segments]
            assert got == [(x["id"], x["label_id"]) for x in r["segments_info"]]
            np.testing.assert_allclose(
                [x["score"] for x in o.segments], [x["score"] for x in r["segments_info"]], atol=1e-6
            )
            areas = torch.bincount(o.segmentation.flatten(), minlength=len(o.segments) + 1)[1:]
            assert [x["area"] for x in o.segments] == areas.tolist()
            assert all(x["isthing"] == (x["category_id"] not in stuff) for x in o.segments)
        counts[len(stuff)] = sum(len(o.segments) for o in ours)
    # The crafted logits exercise real segments, and stuff merging changes the result.
    assert counts[0] >= 10 and counts[2] < counts[0]


def test_panoptic_merges_stuff_and_keeps_things_apart() -> None:
    # Two queries of stuff class 1 and two of thing class 0, side by side, all confident.
    q, h = 4, 8
    probs = torch.zeros(q, h, 4 * h)
    for k in range(q):
        probs[k, :, k * h : (k + 1) * h] = 0.9
    res = _panoptic_one(probs, torch.full((q,), 0.95), torch.tensor([1, 0, 1, 0]), torch.tensor([False, True, False]), 0.5, 0.8)
    ids = res.segmentation[0, :: h].tolist()
    assert ids == [1, 2, 1, 3]  # stuff queries 0 and 2 share the first stuff id
    assert [(x["id"], x["category_id"], x["isthing"], x["area"]) for x in res.segments] == [
        (1, 1, False, 2 * h * h), (2, 0, True, h * h), (3, 0, True, h * h)
    ]


def test_panoptic_overlap_tie_is_kept_as_in_the_official_code() -> None:
    # Query 0 owns 10 pixels; query 1 (higher score) takes 3 of them: area(new)/area(orig) = 0.7.
    probs = torch.zeros(2, 1, 20)
    probs[0, 0, :10] = 0.9
    probs[1, 0, 7:20] = 0.9
    scores, labels = torch.tensor([0.9, 0.95]), torch.tensor([0, 1])
    res = _panoptic_one(probs, scores, labels, torch.zeros(3, dtype=torch.bool), 0.5, 0.7)
    assert [x["category_id"] for x in res.segments] == [0, 1]  # official: skip only if ratio < 0.7
    assert (res.segmentation == 1).sum() == 7
    # transformers keeps a segment only if the float32 ratio is > the threshold, so it drops
    # query 0 here. (At the default 0.8 it keeps the tie: float32(0.8) > 0.8.)
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    _, hf = compute_segments(logits, scores, labels, [], 0.5, 0.7)
    assert [x["label_id"] for x in hf] == [1]
    probs[1, 0, 7] = 0.0  # ratio 0.8 at threshold 0.8: both keep it
    res = _panoptic_one(probs, scores, labels, torch.zeros(3, dtype=torch.bool), 0.5, 0.8)
    _, hf = compute_segments(torch.logit(probs.clamp(1e-6, 1 - 1e-6)), scores, labels, [], 0.5, 0.8)
    assert [x["category_id"] for x in res.segments] == [x["label_id"] for x in hf] == [0, 1]


def test_panoptic_with_nothing_kept_is_all_void() -> None:
    masks, classes = crafted_logits(1, 5, 3, 16, 0)
    classes[..., -1] = 50.0  # every query says no-object
    res = postprocess.panoptic(masks, classes, metas_for([(30, 64)], 64))[0]
    assert res.segmentation.shape == (30, 64) and res.segmentation.max() == 0 and res.segments == []


def official_instance(mask_logits, class_logits, meta: ImageMeta, top_k: int = 100):
    """The official instance post-processing, written out as in its eval step (one image)."""
    x = F.interpolate(mask_logits[None], size=meta.input_size, mode="bilinear")[0]
    x = x[:, : meta.scaled_size[0], : meta.scaled_size[1]]
    x = F.interpolate(x[None], size=meta.original_size, mode="bilinear")[0]
    scores = class_logits.softmax(-1)[:, :-1]
    c = scores.shape[-1]
    top, idx = scores.flatten().topk(top_k, sorted=False)
    out = []
    for score, i in zip(top.tolist(), idx.tolist()):
        logits = x[i // c]
        m = logits > 0
        mask_score = (logits.sigmoid() * m).sum() / (m.sum() + 1e-6)
        out.append((score * float(mask_score), i % c, m))
    return sorted(out, key=lambda t: -t[0])


def test_instance_matches_the_official_top_k_rule() -> None:
    masks, classes = crafted_logits(2, 20, 7, 16, 3)
    metas = metas_for([(48, 64), (64, 40)], 64)
    ours = postprocess.instance(masks, classes, metas, top_k=30)
    for i, meta in enumerate(metas):
        ref = official_instance(masks[i], classes[i], meta, top_k=30)
        o = ours[i]
        assert len(o.scores) == 30
        assert (o.scores[:-1] >= o.scores[1:]).all()
        # Equal scores (e.g. empty masks score 0) come in any order: compare canonically sorted.
        def canon(items):
            return sorted(items, key=lambda t: (-round(t[0], 5), t[1], t[2].numpy().tobytes()))
        got = canon(list(zip(o.scores.tolist(), o.labels.tolist(), o.masks)))
        ref = canon(ref)
        np.testing.assert_allclose([g[0] for g in got], [r[0] for r in ref], rtol=1e-5, atol=1e-7)
        assert [g[1] for g in got] == [r[1] for r in ref]
        assert all(torch.equal(g[2], r[2]) for g, r in zip(got, ref))
        assert len(set(o.labels.tolist())) > 1  # several classes per image


def test_instance_matches_transformers_when_rules_coincide() -> None:
    # With one class, top-k over (query, class) keeps every query and transformers' per-query max
    # picks the same class; transformers drops empty masks and paints later queries on top.
    masks, classes = crafted_logits(2, 12, 1, 16, 4)
    masks[0, 3] = -5.0  # an empty mask
    metas = metas_for([(48, 64), (64, 40)], 64)
    ours = postprocess.instance(masks, classes, metas, top_k=100)
    proc = EomtImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64})
    ref = proc.post_process_instance_segmentation(hf_outputs(masks, classes), target_sizes=[m.original_size for m in metas], threshold=0.0)
    for o, r in zip(ours, ref):
        nonempty = o.masks.flatten(1).any(1)
        hf_scores = torch.tensor([x["score"] for x in r["segments_info"]])
        torch.testing.assert_close(o.scores[nonempty].sort().values, hf_scores.sort().values, atol=1e-6, rtol=0)
        # Paint our masks in transformers' (query) order: the maps must agree.
        painted = torch.full(o.masks.shape[1:], -1.0)
        for x in r["segments_info"]:
            j = int((o.scores - x["score"]).abs().argmin())
            painted[o.masks[j]] = x["id"]
        assert torch.equal(painted, r["segmentation"])
    assert len(ours[0].scores) == 12 and not ours[0].masks[ours[0].scores == 0].any()


def test_instance_threshold_filters_and_sorts() -> None:
    masks, classes = crafted_logits(1, 10, 4, 16, 5)
    meta = metas_for([(40, 64)], 64)
    all_ = postprocess.instance(masks, classes, meta, top_k=100)[0]
    some = postprocess.instance(masks, classes, meta, top_k=100, threshold=0.3)[0]
    assert torch.equal(some.scores, all_.scores[all_.scores >= 0.3])
    assert (all_.scores[:-1] >= all_.scores[1:]).all()


@pytest.mark.parametrize("sizes", [[(48, 100), (100, 40)], [(64, 64), (50, 200)]])
def test_semantic_matches_transformers_with_its_own_windows(sizes: list[tuple[int, int]]) -> None:
    s, q, c = 64, 10, 5
    proc = EomtImageProcessorPil(do_split_image=True, do_pad=False, size={"shortest_edge": s, "longest_edge": None})
    pre = proc([np.zeros((h, w, 3), np.uint8) for h, w in sizes], return_tensors="pt")
    offsets = [tuple(int(v) for v in o) for o in pre["patch_offsets"]]
    metas = []
    for h, w in sizes:
        # transformers truncates the resized long side, the official code rounds: equal here.
        assert get_size_with_aspect_ratio((h, w), s, None) == scaled_size_shortest(h, w, s)
        metas.append(ImageMeta((h, w), scaled_size_shortest(h, w, s), (s, s)))
    masks, classes = crafted_logits(len(offsets), q, c, 16, 6)
    ours = postprocess.semantic(masks, classes, Windows(offsets, metas), return_scores=True)
    ref = proc.post_process_semantic_segmentation(
        hf_outputs(masks, classes, pre["patch_offsets"]), target_sizes=sizes, return_segmentation_scores=True
    )
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o.scores, r["segmentation_scores"], atol=1e-5, rtol=1e-5)
        agree = (o.labels == r["segmentation"]).float().mean()
        assert agree > 0.999  # argmax ties aside, identical
        assert len(o.labels.unique()) > 1


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 4096 + 7])
def test_count_true_equals_a_plain_column_sum(rows: int) -> None:
    mask = torch.rand(rows, 93, generator=torch.Generator().manual_seed(rows)) > 0.3
    mask[:, 5] = True  # a full column: 64 ones per group must not overflow the int16 partial sums
    assert torch.equal(_count_true(mask), mask.sum(0))


@pytest.mark.parametrize("block", [64, 100, 4096])
def test_masks_and_scores_in_blocks_equal_the_direct_formula(block: int) -> None:
    logits = torch.randn(37, 19, 5).permute(2, 0, 1)  # (5, 37, 19), queries innermost in memory
    logits[2] = -1.0  # an empty mask scores 0
    masks, scores = instance_rule._masks_and_scores(logits, block=block)
    want = logits > 0
    assert masks.is_contiguous() and torch.equal(masks, want)
    ref = (logits.sigmoid() * want).flatten(1).sum(1) / (want.flatten(1).sum(1) + 1e-6)
    torch.testing.assert_close(scores, ref, rtol=1e-6, atol=1e-7)
    assert scores[2] == 0


def test_stuff_classes_are_never_instances() -> None:
    from eomt.inference.postprocess import instance
    from eomt.structures import ImageMeta

    g = torch.Generator().manual_seed(4)
    low = torch.randn(2, 6, 16, 16, generator=g) * 4
    cls = torch.randn(2, 6, 5 + 1, generator=g) * 3  # 5 classes + no-object
    cls[:, :, 1] += 5.0  # class 1 (stuff below) is every query's best class
    metas = [ImageMeta((40, 30), (32, 24), (32, 32))] * 2
    every = instance(low, cls, metas, top_k=12)
    things = instance(low, cls, metas, top_k=12, stuff_classes=(1, 3))
    for a, b in zip(every, things):
        assert (a.labels == 1).any()  # without the rule, stuff comes first
        assert len(b.labels) == 12 and not torch.isin(b.labels, torch.tensor([1, 3])).any()
        # The thing instances found without the rule are among them, scored the same, in order.
        kept = (~torch.isin(a.labels, torch.tensor([1, 3]))).nonzero()[:, 0].tolist()
        assert kept
        pairs_b = list(zip(b.labels.tolist(), b.scores.tolist()))
        at = [pairs_b.index((int(a.labels[j]), float(a.scores[j]))) for j in kept]
        assert at == sorted(at)
        assert all(torch.equal(b.masks[i], a.masks[j]) for i, j in zip(at, kept))
    none = instance(low, cls, metas, stuff_classes=range(5))
    assert [len(r.labels) for r in none] == [0, 0] and none[0].masks.shape == (0, 40, 30)
