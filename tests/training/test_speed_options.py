"""Training speed/memory options: activation checkpointing and the fused AdamW step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eomt.config import load_experiment, tiny_config
from eomt.models import EoMT
from eomt.training.module import EoMTModule

ROOT = Path(__file__).resolve().parents[2]


def _grads(model: EoMT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = out.mask_logits.square().mean() + out.class_logits.square().mean()
    loss = loss + sum(m.square().mean() for m in out.mask_logits_per_block)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("probs", [[1.0, 1.0], [0.0, 0.0]])
def test_activation_checkpointing_gives_the_same_gradients(probs: list[float]) -> None:
    torch.manual_seed(0)
    model = EoMT(tiny_config()).train()
    model.set_attn_mask_probs(probs)  # p = 1: every query masked, no random lifting
    x = torch.rand(2, 3, 64, 64)
    want = _grads(model, x)
    model.gradient_checkpointing = True
    got = _grads(model, x)
    assert want.keys() == got.keys() and len(got) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_recomputes_the_blocks_in_backward() -> None:
    model = EoMT(tiny_config()).train()
    model.gradient_checkpointing = True
    calls = []
    block = model.backbone.blocks[0]
    forward = block.forward
    block.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # counts every run
    model(torch.rand(1, 3, 64, 64)).mask_logits.sum().backward()
    assert len(calls) == 2  # forward, and again during backward
    with torch.no_grad():  # inference never recomputes
        calls.clear()
        model.eval()(torch.rand(1, 3, 64, 64))
    assert len(calls) == 1


def test_module_wires_checkpointing_and_uses_fused_adamw_on_cpu() -> None:
    cfg = load_experiment(str(ROOT / "configs/synthetic/panoptic.yaml"),
                          ["train.activation_checkpointing=true", "train.max_steps=10"])
    module = EoMTModule(cfg.to_dict())
    assert module.network.gradient_checkpointing
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
