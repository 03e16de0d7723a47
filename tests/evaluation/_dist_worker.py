"""Runs the three evaluators over a share of a fixed image set; used by the 2-process test.

Kept apart from the test module so spawned workers import only torch, eomt and pycocotools.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from eomt.evaluation import InstanceEvaluator, PanopticEvaluator, SemanticEvaluator

from ._synthetic import random_instance, random_panoptic, random_semantic

NUM_CLASSES = 4
STUFF = [2, 3]
NUM_IMAGES = 4


def evaluate_share(rank: int, world: int) -> dict[str, Any]:
    """All three evaluators' results over images [rank*n/world, (rank+1)*n/world) of the set."""
    gen = torch.Generator().manual_seed(5)
    panoptic = [random_panoptic(gen, 16, 20, NUM_CLASSES, STUFF)[:2] for _ in range(NUM_IMAGES)]
    semantic = [random_semantic(gen, 16, 20, NUM_CLASSES) for _ in range(NUM_IMAGES)]
    instance = [random_instance(gen, 40, 40, NUM_CLASSES) for _ in range(NUM_IMAGES)]
    # Contiguous shares keep the one-process image order, so COCOeval sees the same sequence.
    share = slice(rank * NUM_IMAGES // world, (rank + 1) * NUM_IMAGES // world)
    evaluators = {
        "panoptic": (PanopticEvaluator(NUM_CLASSES, STUFF), panoptic),
        "semantic": (SemanticEvaluator(NUM_CLASSES), semantic),
        "instance": (InstanceEvaluator(NUM_CLASSES), instance),
    }
    out = {}
    for name, (evaluator, pairs) in evaluators.items():
        evaluator.update([p for p, _ in pairs[share]], [t for _, t in pairs[share]])
        out[name] = evaluator.compute()
    return out


def worker(rank: int, world: int, init_method: str, out_dir: str) -> None:
    """Entry point of one spawned process: join the gloo group, evaluate, save rank's results."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        torch.save(evaluate_share(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
