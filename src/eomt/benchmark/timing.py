"""Wall-clock timing: repeated calls summarised as median / p90 / min / mean milliseconds.

On a CUDA device the queue is synchronised around every timed call, so a time covers the kernels,
not just their launch. Compiled and CUDA-graph forwards to time come from `eomt.benchmark.forward`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from eomt.errors import OptionError


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
        raise OptionError(f"iters: expected >= 1, got {iters}")
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
        raise OptionError(f"iters: expected >= 1, got {iters}")
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
