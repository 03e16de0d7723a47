"""Measuring the network: wall-clock timing, FLOP counting, peak memory, environment.

The benchmark scripts in `benchmarks/` and `eomt bench` build on these helpers:
timing.py (repeated calls -> median / p90 ms), forward.py (the forward timed: precision x eager /
compile / CUDA graphs), flops.py (FLOPs and the paper's GMACs), memory.py (peak memory),
environment.py (device and library facts recorded beside every number).
"""

from eomt.benchmark.environment import device_name, environment_info
from eomt.benchmark.flops import FlopCount, count_flops, meta_model
from eomt.benchmark.forward import MODES, PRECISIONS, capture_cuda_graph, inference_forward, skip_reason
from eomt.benchmark.memory import PeakMemory
from eomt.benchmark.timing import TimingStats, time_fn, time_round_robin

__all__ = [
    "FlopCount",
    "MODES",
    "PRECISIONS",
    "PeakMemory",
    "TimingStats",
    "capture_cuda_graph",
    "count_flops",
    "device_name",
    "environment_info",
    "inference_forward",
    "meta_model",
    "skip_reason",
    "time_fn",
    "time_round_robin",
]
