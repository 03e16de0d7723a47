"""FLOP counting with `torch.utils.flop_counter` (one multiply-add = 2 FLOPs).

The paper's "GFLOPs" come from fvcore, which counts one multiply-add as one FLOP, so compare the
paper against `FlopCount.gmacs`. `meta_model` builds a network on the meta device, so the count
of even the largest configuration needs no memory and no compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from eomt.config import ModelConfig


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass (2 per multiply-add) with a per-operator breakdown."""

    flops: int
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        """Multiply-adds (= FLOPs / 2): the unit of fvcore and of the paper's "GFLOPs"."""
        return self.flops / 2

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "gflops": round(self.gflops, 3),
            "gmacs": round(self.gmacs, 3),
            "by_op_gflops": {k: round(v / 1e9, 3) for k, v in self.by_op.items()},
        }


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    if p is None:
        return torch.device("cpu"), torch.float32
    return p.device, p.dtype


def count_flops(model: nn.Module, input_shape: tuple[int, ...], inputs: torch.Tensor | None = None) -> FlopCount:
    """FLOPs of `model(x)` for x of `input_shape`, e.g. (1, 3, 640, 640), without gradients.

    The input is created on the model's device and dtype (zeros); a model on the meta device (see
    `meta_model`) is counted without allocating or computing anything. `inputs`: count on these
    images instead, for a network whose work depends on the content (token merging).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device, dtype = _model_device_dtype(model)
    x = torch.zeros(input_shape, device=device, dtype=dtype) if inputs is None else inputs.to(device, dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with counter, torch.no_grad():
        model(x)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(flops=int(counter.get_total_flops()), by_op=by_op)


def _cpu_attention_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU flash-attention kernels, which torch's counter does not know.

    Without them SDPA on the CPU counts as 0 FLOPs (the CUDA kernels and the math fallback used on
    the meta device are counted), so CPU and meta counts would disagree.
    """
    from torch.utils import flop_counter

    # Called with the shapes of the op's arguments: (query, key, value, ...) forward and
    # (grad_out, query, key, value, ...) backward, as the CUDA flash kernels.
    def forward(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
        return flop_counter.sdpa_flop_count(q, k, v)

    def backward(grad_out: Any, q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    formulas: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return formulas


def meta_model(config: ModelConfig, attn_mask_probs: float = 0.0) -> nn.Module:
    """An `EoMT` on the meta device (no memory, no compute) in eval mode, for FLOP counting.

    `attn_mask_probs` is set on every query block: 0 is the annealed inference network the paper
    measures; 1 adds the intermediate predictions and masked attention.
    """
    from eomt.models import EoMT

    with torch.device("meta"):
        model = EoMT(config).eval()
    # The probabilities are read on the host to decide the control flow, so the buffer is assigned
    # as a real CPU tensor (a meta tensor has no values); it is the only non-meta tensor.
    probs = torch.full((config.num_blocks,), float(attn_mask_probs))
    model.load_state_dict({"attn_mask_probs": probs}, strict=False, assign=True)
    return model
