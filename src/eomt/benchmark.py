"""Measuring the network: wall-clock timing, FLOP counting, peak memory, environment.

The benchmark scripts in `benchmarks/` and `eomt bench` build on these helpers. FLOPs follow
`torch.utils.flop_counter` (one multiply-add = 2 FLOPs); the paper's "GFLOPs" come from fvcore,
which counts one multiply-add as one FLOP, so compare the paper against `FlopCount.gmacs`.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from eomt.config import ModelConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated wall-clock measurements, in milliseconds per call."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    iters: int
    samples_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "min_ms": round(self.min_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "iters": self.iters,
            "samples_ms": [round(s, 3) for s in self.samples_ms],
        }


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    warmup: int = 2,
    iters: int = 10,
    device: torch.device | str | None = None,
) -> TimingStats:
    """Time `fn()` with `time.perf_counter`: `warmup` untimed calls, then `iters` timed calls.

    On a CUDA `device` the queue is synchronised before and after every call so that the wall
    time covers the kernels, not just their launch. Returns per-call milliseconds.
    """
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters}")
    dev = torch.device(device) if device is not None else None
    for _ in range(max(0, warmup)):
        fn()
    _sync(dev)
    samples = []
    for _ in range(iters):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        samples.append((time.perf_counter() - t0) * 1e3)
    return _stats(samples)


def time_round_robin(
    fns: dict[str, Callable[[], Any]],
    warmup: int = 2,
    iters: int = 10,
    device: torch.device | str | None = None,
) -> dict[str, TimingStats]:
    """Time several functions in turns (A, B, C, A, B, C, ...) rather than one after the other.

    On a shared machine the load drifts; interleaving gives every function the same conditions,
    so their ratios stay meaningful even when the absolute times are noisy.
    """
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters}")
    dev = torch.device(device) if device is not None else None
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _stats(s) for name, s in samples.items()}


def _stats(samples: list[float]) -> TimingStats:
    ordered = sorted(samples)
    # Nearest-rank 90th percentile: the smallest sample with at least 90% of samples <= it.
    p90 = ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]
    return TimingStats(
        median_ms=statistics.median(samples),
        p90_ms=p90,
        min_ms=ordered[0],
        mean_ms=statistics.fmean(samples),
        iters=len(samples),
        samples_ms=tuple(samples),
    )


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


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


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCount:
    """FLOPs of `model(x)` for x of `input_shape`, e.g. (1, 3, 640, 640), without gradients.

    The input is created on the model's device and dtype; a model on the meta device (see
    `meta_model`) is counted without allocating or computing anything.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device, dtype = _model_device_dtype(model)
    x = torch.zeros(input_shape, device=device, dtype=dtype)
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


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _hwm_bytes() -> int:
    """Peak resident set size since the last reset (VmHWM), or ru_maxrss as a fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > /proc/self/clear_refs`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory of the code inside it.

    CUDA: `torch.cuda.max_memory_allocated` (exact tensor bytes) minus the allocation at entry.
    CPU: peak process RSS minus RSS at entry. This is approximate: it includes allocator caching,
    freed-but-not-returned pages and anything else the process touches; if the peak cannot be
    reset (non-Linux) it only shows growth beyond the process's earlier peak.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            exact_reset = _reset_hwm()
            self._base = _rss_bytes() if exact_reset else _hwm_bytes()
            self.method = "rss peak (approximate)" if exact_reset else "ru_maxrss growth (approximate)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _hwm_bytes()
        self.peak_bytes = max(0, peak - self._base)

    @property
    def peak_mb(self) -> float:
        """Peak memory above the level at entry, in MiB."""
        return self.peak_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        return {"peak_mb": round(self.peak_mb, 1), "method": self.method}


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def device_name(device: torch.device | str = "cpu") -> str:
    """A human-readable name of the device: GPU model, or the CPU model string."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device | str = "cpu", dtype: str | torch.dtype = "fp32") -> dict[str, Any]:
    """Facts a timing depends on: device, torch version, threads, dtype, CPU ISA, load."""
    info: dict[str, Any] = {
        "device": str(torch.device(device)),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "dtype": str(dtype).replace("torch.", ""),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if torch.device(device).type == "cuda":
        info["cuda"] = torch.version.cuda
    return info
