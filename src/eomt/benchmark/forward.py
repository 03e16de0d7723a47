"""The network forwards a benchmark times: one precision (the precision table's benchmark names)
times one mode (eager, torch.compile, max-autotune, CUDA-graph replay).

`inference_forward` returns a no-argument callable for `time_fn`; `capture_cuda_graph` records
one call of a forward and returns its replay. Combinations a device cannot run are named by
`skip_reason` instead of failing.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch
from torch import nn

from eomt.config import precision as precision_table
from eomt.errors import OptionError

MODES = ("eager", "compile", "max-autotune", "cudagraphs")
# Benchmark precision name -> (weights dtype, autocast dtype or None), by torch name, from the one
# precision table; "bf16" is weights and activations in bf16 (what Predictor uses).
PRECISIONS: dict[str, tuple[str, str | None]] = {
    p.name: (p.weights_dtype, p.dtype if p.autocast else None) for p in precision_table.TABLE
}


def skip_reason(precision: str, mode: str, device: torch.device) -> str | None:
    """Why `precision` x `mode` cannot run on `device` (fp16 and CUDA graphs need CUDA), or None."""
    if "fp16" in precision and device.type != "cuda":
        return "fp16 needs CUDA"
    if mode == "cudagraphs" and device.type != "cuda":
        return "CUDA graphs need CUDA"
    if precision_table.by_name(precision).int8 and (device.type != "cpu" or mode != "eager"):
        return "int8 runs eager on the CPU"
    return None


def capture_cuda_graph(forward: Callable[[], Any], warmup: int = 3) -> Callable[[], Any]:
    """Record one call of `forward` (static inputs) as a CUDA graph; returns its replay.

    `forward` runs `warmup` times on a side stream first (as torch.cuda.graphs asks, so that lazy
    initialisation and autotuning happen outside the capture). The replay returns the output
    tensors of the captured call, overwritten in place by each replay.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()

    def replay() -> Any:
        graph.replay()
        return out

    return replay


def inference_forward(model: nn.Module, x: torch.Tensor, precision: str, mode: str) -> Callable[[], Any]:
    """A no-argument callable running one inference forward of `model` on `x` in `precision`
    (a benchmark name: fp32, bf16, bf16-autocast, fp16, fp16-autocast, int8) and `mode` (`MODES`).

    Weights in another dtype than fp32 are a converted copy (the model is left as it is); `x`
    (B, 3, H, W) is converted alike. int8 runs a copy whose ViT linear layers are int8
    (`eomt.models.fast.int8`). Raises `OptionError` for an unknown precision or mode.
    """
    if precision not in PRECISIONS:
        raise OptionError(f"precision: found {precision!r}, expected one of {', '.join(PRECISIONS)}")
    if mode not in MODES:
        raise OptionError(f"mode: found {mode!r}, expected one of {', '.join(MODES)}")
    weights, autocast = (getattr(torch, d) if d else None for d in PRECISIONS[precision])
    net = model if weights == torch.float32 else copy.deepcopy(model).to(weights)
    if precision_table.by_name(precision).int8:
        from eomt.models.fast.int8 import quantize_linear_layers

        net = copy.deepcopy(model)
        quantize_linear_layers(net.backbone.blocks)
    x = x.to(weights)
    ctx = (lambda: torch.autocast(x.device.type, dtype=autocast)) if autocast else contextlib.nullcontext
    if mode in ("compile", "max-autotune"):
        net = torch.compile(net, fullgraph=True, mode="max-autotune" if mode == "max-autotune" else None)

    def forward() -> Any:
        with torch.inference_mode(), ctx():
            return net(x)

    return capture_cuda_graph(forward) if mode == "cudagraphs" else forward
