"""The DINOv3 rows: presets against the official model zoo and backbones, the bundled configs
against the official configs' numbers (tue-mps/eomt `configs/dinov3`), and the recipe's LLRD rule
(the query blocks at the full LR) in the optimizer the module builds."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from eomt.config import DINOV2_PRESET_NAMES, DINOV3_PRESET_NAMES, PRESET_NAMES, ConfigError, load_experiment, preset, tiny_config
from eomt.config.presets import PRESET_ALIASES
from eomt.config_files import bundled_configs, resolve_config, summary
from eomt.models import EoMT
from eomt.training.module import EoMTModule
from eomt.training.schedules import annealing_steps, mask_annealing_probs, windows_from_steps

COCO_1X, COCO_2X, ADE_GRID = 88692, 177384, 19560  # the official configs' step totals (ADE: 1/6 grid)
L4_DINOV3 = ([0, 29564, 44346, 59128], [3000, 44346, 59128, 73910])
# Every official DINOv3 row: (config, preset, result, backbone id, L2, K, input, total, windows or
# None for the DINOv2 windows, which the instance configs keep).
ROWS = [
    ("coco/panoptic/eomt_small_640_dinov3", "coco_panoptic_eomt_small_640_dinov3", "PQ 47.2", "vits16", 3, 200, 640,
     COCO_2X, ([0, 73910, 118256], [3000, 103474, 147820])),
    ("coco/panoptic/eomt_base_640_dinov3", "coco_panoptic_eomt_base_640_dinov3", "PQ 53.1", "vitb16", 3, 200, 640,
     COCO_2X, ([0, 73910, 118256], [3000, 103474, 147820])),
    ("coco/panoptic/eomt_large_640_dinov3", "coco_panoptic_eomt_large_640_dinov3", "PQ 56.8", "vitl16", 4, 200, 640,
     COCO_1X, L4_DINOV3),
    ("coco/panoptic/eomt_large_1280_dinov3", "coco_panoptic_eomt_large_1280_dinov3", "PQ 58.9", "vitl16", 4, 200, 1280,
     COCO_1X, L4_DINOV3),
    ("coco/instance/eomt_large_640_dinov3", "coco_instance_eomt_large_640_dinov3", "mask AP 45.9", "vitl16", 4, 200, 640,
     COCO_1X, None),
    ("coco/instance/eomt_large_1280_dinov3", "coco_instance_eomt_large_1280_dinov3", "mask AP 49.9", "vitl16", 4, 200,
     1280, COCO_1X, None),
    ("ade20k/semantic/eomt_large_512_dinov3", "ade20k_semantic_eomt_large_512_dinov3", "mIoU 59.5", "vitl16", 4, 100,
     512, ADE_GRID, ([0, 6520, 9780, 13040], [3000, 9780, 13040, 16300])),
]
INSTANCE_DINOV2 = ([14782, 29564, 44346, 59128], [29564, 44346, 59128, 73910])
# facebook/dinov3-vit{s,b,l}16-pretrain-lvd1689m: (hidden, layers, heads, MLP width).
HUB_BACKBONES = {"vits16": (384, 12, 6, 1536), "vitb16": (768, 12, 12, 3072), "vitl16": (1024, 24, 16, 4096)}


def test_the_dinov3_presets_are_the_official_rows() -> None:
    assert DINOV3_PRESET_NAMES == tuple(row[1] for row in ROWS)
    assert not set(DINOV3_PRESET_NAMES) & set(DINOV2_PRESET_NAMES)
    assert PRESET_NAMES == DINOV2_PRESET_NAMES + DINOV3_PRESET_NAMES
    for _, name, _, hub, l2, queries, size, _, _ in ROWS:
        cfg = preset(name)
        hidden, depth, heads, _ = HUB_BACKBONES[hub]
        assert (cfg.name, cfg.backbone, cfg.layer_norm_eps) == (name, "dinov3", 1e-5)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_blocks) == (hidden, depth, heads, l2)
        assert (cfg.patch_size, cfg.num_register_tokens, cfg.num_queries) == (16, 4, queries)
        assert cfg.img_size == (size, size)  # 1280 rows at 1280, not the official configs' 640
        dinov2 = preset(name.removesuffix("_dinov3"))  # the same row on DINOv2: same labels and task
        assert (cfg.task, cfg.class_names, cfg.stuff_classes) == (dinov2.task, dinov2.class_names, dinov2.stuff_classes)


def test_the_hub_spellings_resolve_to_the_presets() -> None:
    assert preset("tue-mps/ade_semantic_eomt_large_512_dinov3").name == "ade20k_semantic_eomt_large_512_dinov3"
    assert preset("eomt_small_640_dinov3").name == "coco_panoptic_eomt_small_640_dinov3"  # short: COCO panoptic
    assert all(target in DINOV3_PRESET_NAMES for target in PRESET_ALIASES.values())
    with pytest.raises(ConfigError, match="did you mean 'coco_panoptic_eomt_small_640_dinov3'"):
        preset("coco_panoptic_eomt_smal_640_dinov3")
    assert resolve_config("ade_semantic_eomt_large_512_dinov3") == bundled_configs()["ade20k/semantic/eomt_large_512_dinov3"]


@pytest.mark.parametrize("hub", sorted(HUB_BACKBONES))
def test_each_preset_backbone_has_the_official_backbones_parameters(hub: str) -> None:
    """Name -> shape of our ViT equals transformers' DINOv3 ViT of the hub config (mask token dropped
    and `embeddings.`/`layer.` renamed, as the official EoMT does)."""
    hidden, depth, heads, mlp = HUB_BACKBONES[hub]
    name = next(row[1] for row in ROWS if row[3] == hub)
    with torch.device("meta"):
        ours = EoMT(preset(name))
        theirs = DINOv3ViTModel(DINOv3ViTConfig(
            hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp,
            num_register_tokens=4, patch_size=16, layer_norm_eps=1e-5,
        ))
    expected = {
        re.sub(r"^(model\.)?layer\.", "blocks.", k.replace("embeddings.", "patch_embed.", 1)): tuple(p.shape)
        for k, p in theirs.named_parameters() if k != "embeddings.mask_token"
    }
    got = {k.removeprefix("backbone."): tuple(p.shape) for k, p in ours.named_parameters() if k.startswith("backbone.")}
    assert got == expected


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_each_config_loads_with_the_official_recipe_and_windows(row: tuple) -> None:
    config, name, result, _, l2, _, _, total, official = row
    cfg = load_experiment(config)
    assert cfg.model == preset(name) and cfg.train.out_dir == f"runs/{name}"
    assert load_experiment(name).model == cfg.model  # the preset name finds this config
    t = cfg.train
    assert (t.lr, t.warmup(total), t.weight_decay, t.poly_power) == (2e-4, (2000, 3000), 0.05, 0.9)
    if name.startswith("ade20k"):  # official: llrd 1.0 (lr_mult 0.1 is unused by its code)
        assert t.llrd == 1.0 and t.llrd_l2_enabled
    else:
        assert t.llrd == 0.8 and not t.llrd_l2_enabled
    windows = list(t.anneal_windows) or None
    starts, ends = map(list, zip(*annealing_steps(total, l2, windows)))
    assert [starts, ends] == list(official or INSTANCE_DINOV2)
    assert summary(bundled_configs()[config]).startswith(f"reproduces {result}")
    if official:  # written in the config as the fractions `windows_from_steps` gives, to 1e-10
        exact = windows_from_steps(*official, total)
        assert all(abs(float(e) - w) < 1e-10 for pair, got in zip(exact, t.anneal_windows) for e, w in zip(pair, got))


def test_windows_from_steps_round_trips_and_rejects_bad_windows() -> None:
    exact = windows_from_steps(*L4_DINOV3, COCO_1X)
    assert annealing_steps(COCO_1X, 4, exact) == list(zip(*L4_DINOV3))
    with pytest.raises(ValueError, match="2 starts, 1 ends"):
        windows_from_steps([0, 1], [2], 10)
    with pytest.raises(ValueError, match=r"window 0: expected 0 <= start <= end, got \(5, 3\)"):
        windows_from_steps([5], [3], 10)


def test_the_first_query_block_anneals_during_the_warmup() -> None:
    t = load_experiment("coco/panoptic/eomt_large_640_dinov3").train
    windows = list(t.anneal_windows)
    assert mask_annealing_probs(0, COCO_1X, 4, windows) == [1.0, 1.0, 1.0, 1.0]
    mid = mask_annealing_probs(1500, COCO_1X, 4, windows)
    assert mid[0] == pytest.approx(0.5 ** 0.9) and mid[1:] == [1.0, 1.0, 1.0]
    assert mask_annealing_probs(3000, COCO_1X, 4, windows) == [0.0, 1.0, 1.0, 1.0]
    assert sum(t.warmup(COCO_1X)) > 3000  # still inside the two-stage warm-up


def _groups(config: str, backbone: str, *overrides: str) -> tuple[list[dict], float]:
    """The optimizer's param groups of `config`'s recipe on a tiny network (D=64, 4 blocks, L2=2)."""
    cfg = load_experiment(config, list(overrides))
    cfg = dataclasses.replace(cfg, model=tiny_config(backbone=backbone, layer_norm_eps=cfg.model.layer_norm_eps))
    module = EoMTModule(cfg, total_steps=100)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.network.named_parameters()}
    return [{**g, "names": [names[id(p)] for p in g["params"]]} for g in optimizer.param_groups], cfg.train.lr


def _lr_of(groups: list[dict], name: str) -> float:
    return next(g["initial_lr"] for g in groups if name in g["names"])


@pytest.mark.parametrize("backbone", ["dinov2", "dinov3"])
def test_llrd_off_in_the_query_blocks_gives_them_the_full_lr(backbone: str) -> None:
    groups, lr = _groups("coco/panoptic/eomt_large_640_dinov3", backbone)
    assert lr == 2e-4
    for block in (2, 3):  # the L2 = 2 query blocks of the tiny network: full LR
        assert _lr_of(groups, f"backbone.blocks.{block}.norm1.weight") == pytest.approx(lr)
    assert _lr_of(groups, "backbone.blocks.1.norm1.weight") == pytest.approx(lr * 0.8 ** 2)  # decayed below them
    assert _lr_of(groups, "backbone.blocks.0.norm1.weight") == pytest.approx(lr * 0.8 ** 3)
    assert _lr_of(groups, "backbone.norm.weight") == pytest.approx(lr) and _lr_of(groups, "q.weight") == pytest.approx(lr)
    # The DINOv2 default decays inside the query blocks too.
    groups, _ = _groups("coco/panoptic/eomt_large_640_dinov3", backbone, "train.llrd_l2_enabled=true")
    assert _lr_of(groups, "backbone.blocks.2.norm1.weight") == pytest.approx(lr * 0.8)


def test_the_ade20k_recipe_has_no_layer_wise_decay() -> None:
    groups, lr = _groups("ade20k/semantic/eomt_large_512_dinov3", "dinov3")
    assert all(g["initial_lr"] == pytest.approx(lr) for g in groups)


@pytest.mark.parametrize("name", DINOV2_PRESET_NAMES)
def test_the_dinov2_configs_keep_the_dinov2_recipe(name: str) -> None:
    cfg = load_experiment(name)
    assert (cfg.model.backbone, cfg.model.layer_norm_eps) == ("dinov2", 1e-6)
    t = cfg.train
    assert (t.lr, t.warmup_steps, t.llrd, t.llrd_l2_enabled, t.anneal_windows) == (1e-4, (500, 1000), 0.8, True, ())
