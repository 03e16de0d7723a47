"""Cross-process reduction for the evaluators: a sum of tensors and a gather of Python objects.

Both are no-ops (returning copies) when torch.distributed is not initialised or has one process,
so an evaluator calls them unconditionally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _comm_device(tensor: Tensor) -> torch.device:
    # NCCL only moves CUDA tensors; gloo and the others take the tensor where it lives.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Element-wise sum of `tensor` over all processes, returned as a new tensor on its device.

    The input is left untouched, so calling `compute()` twice never counts a process twice.
    """
    if world_size() == 1:
        return tensor.clone()
    out = tensor.detach().to(_comm_device(tensor), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in rank order; `[obj]` without torch.distributed."""
    n = world_size()
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out
