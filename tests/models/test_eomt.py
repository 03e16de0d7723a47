import pytest
import torch

from eomt.config import ConfigError, ModelConfig, preset, tiny_config
from eomt.models import EoMT
from eomt.models.backbones.dinov2 import resize_pos_embed


def test_output_shapes_and_plain_inference() -> None:
    model = EoMT(tiny_config()).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    out = model(torch.rand(2, 3, 64, 64))
    assert out.mask_logits.shape == (2, 8, 16, 16)
    assert out.class_logits.shape == (2, 8, 6)
    assert out.mask_logits_per_block == [] and not model.masked_attention_active


def test_training_mode_predicts_before_every_query_block() -> None:
    model = EoMT(tiny_config(depth=5, num_blocks=3)).train()
    model.set_attn_mask_probs([0.0, 0.5, 1.0])
    out = model(torch.rand(1, 3, 64, 64))
    assert len(out.mask_logits_per_block) == 3 and len(out.class_logits_per_block) == 3
    # Queries are joined before block depth - num_blocks, so the first intermediate prediction
    # sees the raw query embeddings through the shared final norm.
    first = model.class_head(model.backbone.norm(model.q.weight))[None]
    torch.testing.assert_close(out.class_logits_per_block[0], first)


def test_mask_restricts_query_to_patch_attention() -> None:
    torch.manual_seed(1)
    model = EoMT(tiny_config(depth=2, num_blocks=1)).eval()
    model.set_attn_mask_probs([1.0])
    x = torch.rand(1, 3, 64, 64)
    grid = model.config.grid_size
    logits = torch.randn(1, 8, 16, 16)
    mask = model._attn_mask(logits, grid, model.attn_mask_probs[0], 8 + 5 + 16)
    allowed = torch.nn.functional.interpolate(logits, size=grid, mode="bilinear").flatten(2) > 0
    assert torch.equal(mask[0, 0, :8, 13:], allowed[0])
    assert mask[0, 0, 8:].all() and mask[0, 0, :8, :13].all()
    # Probability 0 lifts every query's restriction.
    lifted = model._attn_mask(logits, grid, torch.tensor(0.0), 29)
    assert lifted.all()
    _ = model(x)


def test_other_input_sizes_resize_the_position_embedding() -> None:
    model = EoMT(tiny_config()).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    out = model(torch.rand(1, 3, 96, 48))
    assert out.mask_logits.shape == (1, 8, 24, 12)
    pos = model.backbone.pos_embed
    assert torch.equal(resize_pos_embed(pos, (4, 4), (4, 4)), pos)
    # A smooth (linear) embedding stays close to linear after bicubic resizing.
    ramp = torch.linspace(0, 1, 4)
    grid = (ramp[:, None] + ramp[None, :]).reshape(1, 16, 1)
    big = resize_pos_embed(grid, (4, 4), (8, 8)).reshape(8, 8)
    assert big[0, 0] < big[3, 3] < big[7, 7]


def test_bad_input_size_is_a_clear_error() -> None:
    model = EoMT(tiny_config()).eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 70, 64))


def test_presets_match_paper_sizes() -> None:
    sizes = {"small": (384, 12, 3), "base": (768, 12, 3), "large": (1024, 24, 4), "giant": (1536, 40, 5)}
    for size, (d, depth, l2) in sizes.items():
        cfg = preset(f"coco_panoptic_eomt_{size}_640")
        assert (cfg.embed_dim, cfg.depth, cfg.num_blocks, cfg.num_queries) == (d, depth, l2, 200)
    assert preset("ade20k_semantic_eomt_large_512").num_queries == 100
    assert preset("cityscapes_semantic_eomt_large_1024").img_size == (1024, 1024)
    assert preset("coco_panoptic_eomt_giant_640").mlp_hidden == 4096
    with pytest.raises(ConfigError, match="did you mean 'coco_panoptic_eomt_large_640'"):
        preset("coco_panoptic_eomt_larg_640")


def test_parameter_count_of_small_matches_official() -> None:
    # official-eomt.md: ViT-S COCO panoptic 640 has 23.98M elements (including 3 small buffers).
    with torch.device("meta"):
        model = EoMT(preset("coco_panoptic_eomt_small_640"))
    n = sum(p.numel() for p in model.parameters()) + model.attn_mask_probs.numel() + 6
    assert abs(n / 1e6 - 23.98) < 0.01


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="model.img_size"):
        tiny_config(img_size=(70, 64))
    with pytest.raises(ConfigError, match="did you mean 'num_queries'"):
        ModelConfig.from_dict({"num_querys": 3})
    with pytest.raises(ConfigError, match="model.depth"):
        ModelConfig.from_dict({"depth": "deep"})
