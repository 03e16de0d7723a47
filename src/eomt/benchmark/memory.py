"""Peak memory of a block of code: exact tensor bytes on CUDA, the process's RSS peak on the CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


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

    CUDA: `torch.cuda.max_memory_allocated` (exact tensor bytes) minus the allocation at entry;
    `total_peak_mb` is the peak itself (what was already allocated at entry included).
    CPU: peak process RSS minus RSS at entry (`total_peak_mb`: the peak RSS). This is approximate: it includes allocator caching,
    freed-but-not-returned pages and anything else the process touches; if the peak cannot be
    reset (non-Linux) it only shows growth beyond the process's earlier peak.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.total_peak_bytes = 0
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
        self.total_peak_bytes = peak

    @property
    def peak_mb(self) -> float:
        """Peak memory above the level at entry, in MiB."""
        return self.peak_bytes / 2**20

    @property
    def total_peak_mb(self) -> float:
        """The peak itself, in MiB: what was allocated at entry plus `peak_mb`."""
        return self.total_peak_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        return {"peak_mb": round(self.peak_mb, 1), "total_peak_mb": round(self.total_peak_mb, 1),
                "method": self.method}
