"""The seams of `eomt.models`: the backbone interface and registry, the reference upscale block,
the pretrained-loader hook and `unwrap_compiled`."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import eomt
from eomt.config import ConfigError, ModelConfig, tiny_config
from eomt.models import EoMT, unwrap_compiled
from eomt.models import eomt as eomt_module
from eomt.models.backbones import BACKBONES, Backbone, DINOv2
from eomt.models.backbones.dinov2 import Block
from eomt.models.fast import set_fused_kernels
from eomt.models.fast import upscale as fast_upscale
from eomt.models.upscale import ScaleBlock


def test_dinov2_is_the_default_backbone_and_old_configs_name_none() -> None:
    cfg = tiny_config()
    assert cfg.backbone == "dinov2"
    stored = {k: v for k, v in cfg.to_dict().items() if k != "backbone"}  # a config saved before the field
    assert ModelConfig.from_dict(stored) == cfg
    model = EoMT(cfg)
    assert isinstance(model.backbone, DINOv2) and isinstance(model.backbone, Backbone)
    assert model.backbone.block_inputs(cfg.grid_size) == {}
    assert any(k.startswith("backbone.blocks.0.attn.qkv.") for k in model.state_dict())  # names unchanged


def test_an_unknown_backbone_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dinov2'"):
        EoMT(tiny_config(backbone="dinov2x"))


class _PositionalBlock(Block):
    """A DINOv2 block that takes a per-block position input, as a RoPE block takes cos / sin."""

    seen: list[tuple[int, int]] = []

    def forward(self, x: Tensor, mask: Tensor | None = None, *, positions: Tensor) -> Tensor:
        n = positions.shape[0]
        self.seen.append((x.shape[1], n))
        x = torch.cat([x[:, :-n], x[:, -n:] + positions], dim=1)  # patches are the trailing N tokens
        return super().forward(x, mask)


class _PositionalBackbone(DINOv2):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.blocks = torch.nn.ModuleList(_PositionalBlock(cfg) for _ in range(cfg.depth))

    def block_inputs(self, grid: tuple[int, int]) -> dict[str, Tensor]:
        return {"positions": torch.zeros(grid[0] * grid[1], 1)}


@pytest.mark.parametrize("annealed", [False, True])
def test_a_backbone_with_per_block_inputs_plugs_in_unchanged(monkeypatch, annealed: bool) -> None:
    monkeypatch.setitem(BACKBONES, "positional", _PositionalBackbone)
    cfg = tiny_config(backbone="positional", img_size=(32, 48))
    torch.manual_seed(0)
    model = EoMT(cfg).eval()
    torch.manual_seed(0)
    plain = EoMT(tiny_config(img_size=(32, 48))).eval()
    plain.load_state_dict(model.state_dict())  # same parameter names, zero positions: same outputs
    if annealed:
        model.set_attn_mask_probs([0.0] * cfg.num_blocks)
        plain.set_attn_mask_probs([0.0] * cfg.num_blocks)
    _PositionalBlock.seen.clear()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.manual_seed(1)
        got = model(x)
        torch.manual_seed(1)
        want = plain(x)
    n = cfg.grid_size[0] * cfg.grid_size[1]
    prefix = 1 + cfg.num_register_tokens
    first = cfg.depth - cfg.num_blocks
    assert _PositionalBlock.seen == [(prefix + n + cfg.num_queries * (i >= first), n) for i in range(cfg.depth)]
    torch.testing.assert_close(got.mask_logits, want.mask_logits)
    assert len(got.mask_logits_per_block) == (0 if annealed else cfg.num_blocks)


def test_the_reference_scale_block_equals_its_matmul_form() -> None:
    torch.manual_seed(0)
    block = ScaleBlock(16).eval()
    x = torch.randn(2, 5, 7, 16)
    with torch.no_grad():
        want = block(x)
        got = fast_upscale.scale_block(block, x)
    assert want.shape == (2, 10, 14, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_uses_the_matmul_form_unless_the_fast_paths_are_off() -> None:
    torch.manual_seed(0)
    model = EoMT(tiny_config(img_size=(32, 32))).train()
    x = torch.rand(1, 3, 32, 32)
    previous = set_fused_kernels(True)
    try:
        torch.manual_seed(1)
        fast = model(x).mask_logits
        set_fused_kernels(False)
        torch.manual_seed(1)
        reference = model(x).mask_logits
    finally:
        set_fused_kernels(previous)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_from_pretrained_without_a_registered_loader_says_so(monkeypatch) -> None:
    monkeypatch.setattr(eomt_module, "_PRETRAINED_LOADER", None)
    with pytest.raises(RuntimeError, match="no checkpoint loader registered"):
        EoMT.from_pretrained("anything")


def test_from_pretrained_calls_the_registered_loader(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(eomt_module, "_PRETRAINED_LOADER", lambda source, **kw: calls.append((source, kw)) or "m")
    assert EoMT.from_pretrained("x.safetensors", map_location="cpu") == "m"
    assert calls == [("x.safetensors", {"map_location": "cpu"})]
    assert eomt.checkpoints.load_pretrained.__module__ == "eomt.checkpoints.pretrained"


def test_unwrap_compiled_returns_the_original_module() -> None:
    model = EoMT(tiny_config())
    assert unwrap_compiled(model) is model
    assert unwrap_compiled(torch.compile(model)) is model  # compiles nothing until called
