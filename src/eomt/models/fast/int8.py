"""Contract: approximates the fp32 ViT (>= 99 % of panoptic pixels as fp32 on a trained model); guarded by tests/inference/test_int8.py.

int8 linear layers for CPU inference: dynamic quantisation of the ViT blocks' linear layers.

Each linear layer of the backbone's blocks (attention qkv / q, k, v / proj, MLP fc1 / fc2 / SwiGLU)
is replaced by an `Int8Linear`: its weight is quantised once, symmetrically per output channel
(scale = max |w| / 127 per row), and prepacked for the CPU's int8 GEMM (fbgemm on x86, through
PyTorch's `x86` engine; qnnpack on ARM); each call quantises its input per tensor (scale and zero
point from the input's min and max, 7-bit range as PyTorch does for fbgemm, which keeps the AVX2
u8 x s8 pair sums from saturating), multiplies in int32 and returns fp32 with the bias added.
Everything else (patch embedding, LayerNorm, attention's SDPA, the mask module) stays fp32.

Why this path (measured on EoMT-S 640, 2-core AVX2 CPU, `benchmarks/RESULTS.md`, section int8):
PyTorch's dynamic int8 linear (`torch.ops.quantized.linear_dynamic`) was as fast as onnxruntime's
`quantize_dynamic` of the exported graph (MatMulInteger), and the fp32 ONNX graph was slower than
our eager fp32, so the ONNX route gives nothing for its costs (an export per input size, the
`onnx` extra). The int8 model stays an `EoMT`: any input size, batching, sliding windows and tiling
work unchanged. A plain `torch._int_mm` (int8 x int8 -> int32) was 25x slower than fp32 here.

The backbone calls `eomt.models.fast.linear.linear(x, layer.weight, layer.bias)` functionally; the
`weight` of an `Int8Linear` is an `Int8Weight`, which those functions recognise and run.
PyTorch marks its quantised tensor types deprecated (pytorch issue 184982); the one quantised
tensor made here lives only inside `Int8Weight.__init__` (its warning is silenced there) and the
tests fail if the kernels go away.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

# 7-bit activations (PyTorch's default for fbgemm/x86 dynamic quantisation): AVX2's u8 x s8
# multiply-add saturates int16 pair sums with full 8-bit activations.
REDUCE_RANGE = True


def int8_available() -> bool:
    """True when this PyTorch build has the dynamic int8 linear kernels for the current engine."""
    try:
        return bool(hasattr(torch.ops.quantized, "linear_dynamic")
                    and torch.backends.quantized.engine in ("x86", "fbgemm", "onednn", "qnnpack"))
    except (AttributeError, RuntimeError):
        return False


class Int8Weight:
    """A linear layer's weight (out, in) in int8, per output channel, prepacked with its fp32 bias.

    `linear(x, bias)` computes x (..., in) -> (..., out) in fp32. The bias was packed with the
    weight; when the caller passes another tensor than `self.bias` it is added afterwards.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        w = weight.detach().float().cpu()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()  # (out,)
        q = torch.round(w / scale[:, None].float()).clamp_(-127, 127).to(torch.int8)  # (out, in)
        self.bias = None if bias is None else bias.detach().float().cpu()
        self.shape = tuple(w.shape)
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # PyTorch's deprecation notice for quantised tensor types
            warnings.simplefilter("ignore", UserWarning)
            qw = torch._make_per_channel_quantized_tensor(q, scale, zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(qw, self.bias)

    def dequantized(self) -> Tensor:
        """The weight as the kernel sees it, in fp32 (out, in) (for tests and error estimates)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize()

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """`F.linear(x, W, bias)` with int8 W and x quantised per call: (..., in) -> (..., out) fp32."""
        y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, REDUCE_RANGE)
        if bias is not self.bias:  # another bias than the packed one
            if self.bias is not None:
                y = y - self.bias
            if bias is not None:
                y = y + bias
        return y


class Int8Linear(nn.Module):
    """An `nn.Linear` for inference with an int8 weight (`Int8Weight`); the fp32 bias is kept.

    Called as a module or through `eomt.models.fast.linear.linear(x, m.weight, m.bias)`.
    """

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight = Int8Weight(layer.weight, layer.bias)
        self.bias = self.weight.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.weight.linear(x, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_linear_layers(blocks: nn.Module) -> int:
    """Replace every `nn.Linear` inside `blocks` by an `Int8Linear`, in place; returns how many.

    `blocks`: the backbone's transformer blocks (`model.backbone.blocks`). The module must be in
    eval mode on the CPU (the int8 kernels are CPU only); its fp32 weights are read once.
    Raises RuntimeError when this PyTorch build lacks the int8 kernels.
    """
    if not int8_available():
        raise RuntimeError(
            f"int8: this PyTorch build has no dynamic int8 linear kernels for engine "
            f"{torch.backends.quantized.engine!r}")
    targets = [(parent, name, child) for parent in blocks.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child))
    return len(targets)

