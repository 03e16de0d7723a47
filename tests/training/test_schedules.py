"""Schedules against the official formulas, the official LLRD loop and the official configs'
absolute annealing steps."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from eomt.training.schedules import (
    annealing_steps,
    default_annealing_windows,
    llrd_param_groups,
    mask_annealing_probs,
    two_stage_warmup_poly,
    warmup_poly_lambdas,
)

COCO_T = 88692  # 12 COCO epochs at batch 16 = 6 * 14782


# --- the official rules, written out independently ------------------------------------------

def official_lr_factor(step: int, total: int, warmup: tuple[int, int], power: float, backbone: bool) -> float:
    """TwoStageWarmupPolySchedule.get_lr divided by base_lr (valid for step <= total)."""
    w1, w2 = warmup
    if not backbone:
        if w1 > 0 and step < w1:
            return step / w1
        return (1 - max(0, step - w1) / max(1, total - w1)) ** power
    if step < w1:
        return 0.0
    if step < w1 + w2:
        return (step - w1) / w2
    return (1 - max(0, step - w1 - w2) / max(1, total - w1 - w2)) ** power


def official_lrs(
    model: nn.Module, lr: float, llrd: float, l2: int, llrd_l2_enabled: bool
) -> dict[str, float]:
    """The official configure_optimizers loop: reversed parameter walk, block index carried over."""
    backbone_names = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    depth = len(model.backbone.blocks)
    block_i = depth
    out = {}
    for name, _ in reversed(list(model.named_parameters())):
        value = lr
        if name in backbone_names:
            parts = name.split(".")
            is_block = False
            for i, key in enumerate(parts):
                if key == "blocks":
                    block_i = int(parts[i + 1])
                    is_block = True
            if is_block or block_i == 0:
                value *= llrd ** (depth - 1 - block_i)
            if "backbone.norm" in name:
                value = lr
            if is_block and block_i >= depth - l2 and not llrd_l2_enabled:
                value = lr
        out[name] = value
    return out


def official_anneal(step: int, start: int, end: int, power: float = 0.9) -> float:
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1 - (step - start) / (end - start)) ** power


# --- a tiny model with the timm / official parameter names ------------------------------------

class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)


class _Mlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


class _LayerScale(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(d), _Attn(d), _LayerScale(d)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(d), _Mlp(d), _LayerScale(d)


class _PatchEmbed(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, d, 16, 16)


class _Backbone(nn.Module):
    def __init__(self, d: int, depth: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.reg_token = nn.Parameter(torch.zeros(1, 4, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 16, d))
        self.patch_embed = _PatchEmbed(d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)


class _Scale(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(d, d, 2, 2)
        self.conv2 = nn.Conv2d(d, d, 3, padding=1, groups=d, bias=False)
        self.norm = nn.LayerNorm(d)


class TinyEoMT(nn.Module):
    """Parameter names of EoMT ViT-L (24 blocks) with D = 8."""

    def __init__(self, depth: int = 24, d: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = _Backbone(d, depth)
        self.q = nn.Embedding(5, d)
        self.class_head = nn.Linear(d, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)
        )
        self.upscale = nn.Sequential(_Scale(d), _Scale(d))


# --- LR schedule ----------------------------------------------------------------------------

STEPS = [0, 1, 250, 499, 500, 501, 999, 1000, 1499, 1500, 1501, 10_000, 44_346, 88_000, COCO_T - 1, COCO_T]


@pytest.mark.parametrize("backbone", [False, True])
@pytest.mark.parametrize("warmup", [(500, 1000), (2000, 3000)])
def test_warmup_poly_equals_official(backbone: bool, warmup: tuple[int, int]) -> None:
    for step in STEPS:
        expected = official_lr_factor(step, COCO_T, warmup, 0.9, backbone)
        assert two_stage_warmup_poly(step, COCO_T, warmup, 0.9, is_backbone=backbone) == pytest.approx(
            expected, abs=1e-12
        ), step


def test_warmup_poly_stays_zero_past_the_end() -> None:
    assert two_stage_warmup_poly(COCO_T + 10, COCO_T, is_backbone=False) == 0.0
    assert two_stage_warmup_poly(COCO_T + 10, COCO_T, is_backbone=True) == 0.0


# --- LLRD -----------------------------------------------------------------------------------

@pytest.mark.parametrize("llrd_l2_enabled", [True, False])
def test_llrd_groups_equal_official_loop(llrd_l2_enabled: bool) -> None:
    model = TinyEoMT()
    groups = llrd_param_groups(
        model, 1e-4, depth=24, num_blocks_l2=4, llrd=0.8, weight_decay=0.05, llrd_l2_enabled=llrd_l2_enabled
    )
    got = {name: g["lr"] for g in groups for name in g["names"]}
    expected = official_lrs(model, 1e-4, 0.8, 4, llrd_l2_enabled)
    assert got.keys() == expected.keys()
    for name, lr in expected.items():
        assert got[name] == pytest.approx(lr, rel=1e-12), name
    # Spot values of the reference table, so the oracle above cannot drift unnoticed.
    assert got["backbone.blocks.23.attn.qkv.weight"] == pytest.approx(1e-4)
    block_20 = 0.8**3 * 1e-4 if llrd_l2_enabled else 1e-4
    assert got["backbone.blocks.20.mlp.fc1.bias"] == pytest.approx(block_20)
    assert got["backbone.blocks.19.norm1.weight"] == pytest.approx(0.8**4 * 1e-4)
    embeddings = ("cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight")
    for name in (f"backbone.{e}" for e in embeddings):
        assert got[name] == pytest.approx(0.8**23 * 1e-4)
    assert got["backbone.norm.weight"] == got["q.weight"] == got["upscale.1.conv2.weight"] == 1e-4
    for g in groups:
        assert g["base_lr"] == g["lr"] and g["weight_decay"] == 0.05
        assert g["is_backbone"] == all(n.startswith("backbone.") for n in g["names"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_llrd_rejects_block_outside_depth() -> None:
    message = r"'backbone.blocks.12.norm1.weight': block index 12 outside the model depth 12"
    with pytest.raises(ValueError, match=message):
        llrd_param_groups(TinyEoMT(depth=24), 1e-4, depth=12, num_blocks_l2=3)


def test_lambda_lr_applies_warmup_per_group() -> None:
    model = TinyEoMT(depth=12)
    groups = llrd_param_groups(model, 1e-3, depth=12, num_blocks_l2=3)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    total, warmup = 40, (5, 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_poly_lambdas(groups, total, warmup))
    expected_base = official_lrs(model, 1e-3, 0.8, 3, True)
    for step in range(total):
        for g in optimizer.param_groups:
            factor = official_lr_factor(step, total, warmup, 0.9, g["is_backbone"])
            for name in g["names"]:
                assert g["lr"] == pytest.approx(expected_base[name] * factor, rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()


# --- mask annealing -------------------------------------------------------------------------

# (num_blocks, total steps, official starts, official ends) from the official configs.
OFFICIAL_WINDOWS = [
    (4, COCO_T, [14782, 29564, 44346, 59128], [29564, 44346, 59128, 73910]),  # COCO L
    (3, COCO_T, [14782, 36955, 59128], [29564, 51737, 73910]),  # COCO S/B 1x
    (5, COCO_T, [14782, 25869, 36955, 48042, 59128], [29564, 40651, 51737, 62824, 73910]),  # COCO g
    (3, 2 * COCO_T, [29564, 73910, 118256], [59128, 103474, 147820]),  # COCO S/B 2x
    (4, 6 * 6520, [6520, 13040, 19560, 26080], [13040, 19560, 26080, 32600]),  # ADE L
    (5, 6 * 6520, [6520, 11410, 16300, 21190, 26080], [13040, 17930, 22820, 27710, 32600]),  # ADE g
    (4, 6 * 3317, [3317, 6634, 9951, 13268], [6634, 9951, 13268, 16585]),  # Cityscapes L
]


@pytest.mark.parametrize(("num_blocks", "total", "starts", "ends"), OFFICIAL_WINDOWS)
def test_default_windows_reproduce_official_configs(
    num_blocks: int, total: int, starts: list[int], ends: list[int]
) -> None:
    steps = annealing_steps(total, num_blocks)
    for (start, end), s, e in zip(steps, starts, ends, strict=True):
        assert abs(start - s) <= 1 and abs(end - e) <= 1
    edges = {x + d for x in starts + ends for d in (-1, 0, 1)}
    middles = {(s + e) // 2 for s, e in zip(starts, ends)}
    probe = sorted({0, total - 1} | edges | middles)
    for step in probe:
        got = mask_annealing_probs(step, total, num_blocks)
        expected = [official_anneal(step, s, e) for s, e in zip(starts, ends)]
        # Exact where our rounded windows coincide with the configs' steps (they all do today);
        # a one-step shift would move P by at most one step of the poly curve.
        assert got == pytest.approx(expected, abs=1e-12 if steps == list(zip(starts, ends)) else 2e-4), step


def test_vit_large_windows_are_consecutive_sixths() -> None:
    assert default_annealing_windows(4) == [(Fraction(k + 1, 6), Fraction(k + 2, 6)) for k in range(4)]


def test_explicit_windows_reproduce_dinov3_schedule() -> None:
    starts, ends = [0, 29564, 44346, 59128], [3000, 44346, 59128, 73910]
    windows = [(s / COCO_T, e / COCO_T) for s, e in zip(starts, ends)]
    assert annealing_steps(COCO_T, 4, windows) == list(zip(starts, ends))
    for step in (0, 1, 1500, 2999, 3000, 29564, 50000, 73909, 73910):
        expected = [official_anneal(step, s, e) for s, e in zip(starts, ends)]
        assert mask_annealing_probs(step, COCO_T, 4, windows) == pytest.approx(expected, abs=1e-12)


def test_annealing_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="expected 4 \\(one per block\\), got 2"):
        mask_annealing_probs(0, 100, 4, [(0.1, 0.2), (0.2, 0.3)])
    with pytest.raises(ValueError, match="annealing window 0: expected 0 <= start <= end"):
        mask_annealing_probs(0, 100, 1, [(0.5, 0.2)])
