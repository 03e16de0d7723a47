"""Parity with transformers' EomtForUniversalSegmentation: same weights, same logits.

A random HF model is saved with `save_pretrained` and loaded with `EoMT.from_pretrained`; both
run on the same images (HF on ImageNet-normalised pixels, ours on [0, 1]) with attn_mask_probs
= 0 (plain ViT) and = 1 (masked attention in every query block; deterministic).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from eomt import EoMT  # noqa: E402
from eomt.models.eomt import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

TOL = 1e-4

CASES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                 num_queries=8, num_blocks=2, num_labels=5, layerscale_value=0.5),
    "tiny-swiglu": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                        num_queries=8, num_blocks=2, num_labels=5, layerscale_value=0.5, use_swiglu_ffn=True),
    "wider": dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, image_size=96,
                  num_queries=8, num_blocks=3, num_labels=7, layerscale_value=0.5),
}


def _hf_model(case: str, prob: float) -> torch.nn.Module:
    cfg = transformers.EomtConfig(**CASES[case])
    model = transformers.EomtForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        # Perturb every parameter so that constants of the initialisation (LayerNorm 1/0, zero
        # register tokens, constant LayerScale) cannot hide a mis-mapped tensor.
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.attn_mask_probs.fill_(prob)
    return model


@pytest.mark.parametrize("prob", [0.0, 1.0])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case: str, prob: float, tmp_path: Path) -> None:
    hf = _hf_model(case, prob)
    hf.save_pretrained(tmp_path)
    ours = EoMT.from_pretrained(tmp_path)
    cfg = CASES[case]
    assert ours.config.swiglu == cfg.get("use_swiglu_ffn", False)
    assert ours.attn_mask_probs.tolist() == [prob] * cfg["num_blocks"]

    size = cfg["image_size"]
    images = torch.rand(2, 3, size, size)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = hf(pixel_values=(images - mean) / std)
        out = ours(images)

    assert out.class_logits.shape == expected.class_queries_logits.shape
    assert out.mask_logits.shape == expected.masks_queries_logits.shape == (2, cfg["num_queries"], size // 4, size // 4)
    assert (out.class_logits - expected.class_queries_logits).abs().max() <= TOL
    assert (out.mask_logits - expected.masks_queries_logits).abs().max() <= TOL
    # Masked attention runs (and reports one intermediate prediction per query block) iff p > 0.
    assert len(out.mask_logits_per_block) == (cfg["num_blocks"] if prob > 0 else 0)
    assert len(out.class_logits_per_block) == len(out.mask_logits_per_block)


def test_masked_attention_changes_the_output(tmp_path: Path) -> None:
    """The p = 1 comparison above is only meaningful if the mask restricts some queries."""
    hf = _hf_model("tiny", 1.0)
    hf.save_pretrained(tmp_path)
    ours = EoMT.from_pretrained(tmp_path)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        masked = ours(images)
        first = masked.mask_logits_per_block[0]
        ours.set_attn_mask_probs([0.0, 0.0])
        plain = ours(images)
    coarse = torch.nn.functional.interpolate(first, size=(4, 4), mode="bilinear") > 0
    assert coarse.any() and not coarse.all()  # some query-patch pairs are masked, some are not
    assert (masked.mask_logits - plain.mask_logits).abs().max() > 1e-3
