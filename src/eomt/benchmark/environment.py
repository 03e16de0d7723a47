"""The facts a timing depends on: device name, torch version, threads, CPU ISA, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


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
