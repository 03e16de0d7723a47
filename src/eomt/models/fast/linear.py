"""Contract: equals F.linear / F.gelu(F.linear) up to bf16 rounding; guarded by tests/models/test_fast_paths.py.

Fused CPU kernels for bf16 inference, with a plain PyTorch fallback everywhere else.

On a CPU with oneDNN bf16 support, `torch.ops.mkldnn._linear_pointwise` runs a linear layer with its
bias (and optionally an exact GELU) fused into the AMX/AVX-512 matmul: no bias broadcast copy into
the output and no second pass over the activations for the GELU. The fast path is taken only when
it cannot change what the caller can observe beyond bf16 rounding:

- eager inference (no autograd: the op has no backward), CPU tensors in bf16;
- not while torch.compile, torch.export, TorchScript tracing or ONNX export is capturing a graph
  (the graph must hold portable aten ops);
- `set_fused_kernels(False)` switches it off process-wide, with every other fast path of
  `eomt.models.fast` (the reference paths, for tests).

Everything else calls `F.linear` / `F.gelu`, which is also what the fused path computes up to the
rounding of the intermediate: the GELU reads the fp32 matmul result instead of its bf16 rounding.

A weight that is an `eomt.models.fast.int8.Int8Weight` (a layer replaced for int8 CPU inference)
runs its int8 kernel instead, whatever the switch says: the int8 model has no fp32 weight to fall
back on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eomt.models.fast.int8 import Int8Weight

_ENABLED = True


def _mkldnn_bf16_available() -> bool:
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


_AVAILABLE = _mkldnn_bf16_available()


def set_fused_kernels(enabled: bool) -> bool:
    """Switch the fused CPU kernels on or off for the whole process; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def fused_kernels_enabled() -> bool:
    """True when the switch is on and this CPU has the oneDNN bf16 kernels."""
    return _ENABLED and _AVAILABLE


def fast_paths_on() -> bool:
    """The process-wide switch (`set_fused_kernels`): False selects the plain reference paths."""
    return _ENABLED


def _capturing() -> bool:
    """True while a graph is being captured (compile, export, TorchScript, ONNX)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return True
    return bool(torch.onnx.is_in_onnx_export())


def cpu_inference(x: Tensor) -> bool:
    """True for eager CPU inference with the fused kernels on (the cache-blocked paths apply)."""
    return _ENABLED and x.device.type == "cpu" and not torch.is_grad_enabled() and not _capturing()


def _use_fused(x: Tensor, weight: Tensor) -> bool:
    return _AVAILABLE and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and cpu_inference(x)


def linear(x: Tensor, weight: Tensor | Int8Weight, bias: Tensor | None) -> Tensor:
    """`F.linear(x, weight, bias)`, with the bias fused into the matmul on the bf16 CPU path."""
    if isinstance(weight, Int8Weight):
        return weight.linear(x, bias)
    if _use_fused(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_gelu(x: Tensor, weight: Tensor | Int8Weight, bias: Tensor | None) -> Tensor:
    """`F.gelu(F.linear(x, weight, bias))` (exact GELU), fused on the bf16 CPU path."""
    if isinstance(weight, Int8Weight):
        return F.gelu(weight.linear(x, bias))
    if _use_fused(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return F.gelu(F.linear(x, weight, bias))
