"""The CPU inference fast paths (fused bf16 kernels, banded upscale) against the reference path."""

from __future__ import annotations

import pytest
import torch

from eomt.config import tiny_config
from eomt.models import EoMT
from eomt.models import eomt as eomt_module
from eomt.models.fast import upscale as fast_upscale
from eomt.models.fast.linear import fused_kernels_enabled, set_fused_kernels

needs_fused = pytest.mark.skipif(not fused_kernels_enabled(), reason="no oneDNN bf16 kernels on this CPU")


@pytest.fixture
def reference_path():
    """Run a block of code with the fast paths switched off; restores the setting afterwards."""
    previous = set_fused_kernels(True)
    yield lambda: set_fused_kernels(False)
    set_fused_kernels(previous)


def _model(dtype: torch.dtype = torch.float32, **overrides) -> EoMT:
    torch.manual_seed(0)
    model = EoMT(tiny_config(**overrides)).eval()
    model.set_attn_mask_probs([0.0] * model.config.num_blocks)
    with torch.no_grad():  # LayerScale 1: every block matters for the comparison
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    return model.to(dtype)


@pytest.mark.parametrize("band_bytes", [1, 3000, 20000, 1 << 30])
@pytest.mark.parametrize("size", [(7, 5), (8, 6), (1, 3)])
def test_banded_upscale_equals_the_full_block(band_bytes: int, size: tuple[int, int]) -> None:
    # One input row per band, a few rows, and everything in one band; odd and even heights.
    torch.manual_seed(0)
    block = eomt_module.ScaleBlock(16).eval()
    x = torch.randn(2, *size, 16)
    embed_t = torch.randn(2, 16, 5)
    with torch.no_grad():
        want = (block(x).flatten(1, 2) @ embed_t).unflatten(1, (2 * size[0], 2 * size[1]))
        got = fast_upscale._banded_mask_logits(block, x, embed_t, band_bytes=band_bytes)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fast_path_is_exact_in_fp32(reference_path) -> None:
    model = _model(img_size=(48, 80))
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        fast = model(x)
        reference_path()
        ref = model(x)
    torch.testing.assert_close(fast.mask_logits, ref.mask_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.class_logits, ref.class_logits, rtol=1e-5, atol=1e-5)
    assert fast.mask_logits.stride() == ref.mask_logits.stride()  # same channels-last layout


@needs_fused
def test_fused_bf16_path_stays_within_the_stated_tolerance(reference_path) -> None:
    # Stated tolerance of the bf16 fast path against the fp32 reference: it may not be further
    # from fp32 than the plain bf16 path is (plus 25 %), and mask signs agree on >= 98 % of pixels.
    model = _model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
        model.to(torch.bfloat16)
        with torch.profiler.profile() as prof:
            fast = model(x.bfloat16())
        reference_path()
        plain = model(x.bfloat16())
    for name in ("mask_logits", "class_logits"):
        want = getattr(fp32, name)
        err_fast = (getattr(fast, name).float() - want).abs().max().item()
        err_plain = (getattr(plain, name).float() - want).abs().max().item()
        assert err_fast <= 1.25 * err_plain + 1e-3, (name, err_fast, err_plain)
    agree = ((fast.mask_logits.float() > 0) == (fp32.mask_logits > 0)).float().mean().item()
    assert agree >= 0.98
    assert fast.mask_logits.dtype == torch.bfloat16
    assert any("_linear_pointwise" in e.name for e in prof.events())  # the fused kernels ran


@needs_fused
def test_graph_capture_and_training_take_the_portable_path() -> None:
    model = _model(torch.bfloat16)
    x = torch.rand(1, 3, 64, 64, dtype=torch.bfloat16)
    program = torch.export.export(model, (x,))
    graph = str(program.graph)
    assert "mkldnn" not in graph and "linear" in graph
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x).mask_logits, model(x).mask_logits, rtol=0.05, atol=0.1)
    # With autograd on (training) the fused op (which has no backward) is not used.
    model.train()
    out = model(x)
    out.mask_logits.float().sum().backward()
    assert model.backbone.blocks[0].mlp.fc1.weight.grad is not None


def test_switch_reports_the_previous_setting() -> None:
    previous = set_fused_kernels(False)
    try:
        assert not fused_kernels_enabled()
        assert set_fused_kernels(True) is False
    finally:
        set_fused_kernels(previous)
