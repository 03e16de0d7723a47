"""Training step time and peak memory: ours vs transformers, masked attention on and off.

One step = forward (train mode) + mask-classification loss on every prediction block + backward +
AdamW step, on a random batch with crafted disc-shaped targets. Ours uses
`eomt.training.losses.MaskClassificationLoss.forward_blocks`; transformers computes its loss in
`EomtForUniversalSegmentation.forward(mask_labels=..., class_labels=...)`. attn_mask_probs = 1
(start of training: masked attention in every query block) and 0 (annealed). Rows are timed
round-robin; peak memory is measured per row in a separate step (CPU: process RSS, approximate;
CUDA: exact tensor bytes); `total_peak_mb` adds what the row's implementation holds between steps
(weights, gradients, AdamW state: its own, not the other implementation's).

--device cuda (or cuda:N) runs both implementations on that GPU with the queue synchronised around
every timed step; for EoMT-L 640 at 4 images it prints the GPU training targets (`gpu_targets.py`).

    python benchmarks/training_step.py --preset coco_panoptic_eomt_small_640 --batch 1
    python benchmarks/training_step.py --device cuda --preset coco_panoptic_eomt_large_640 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, Callable

import torch

import common
import gpu_targets
from eomt.benchmark import PeakMemory, environment_info, time_round_robin
from eomt.structures import Target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.set_defaults(iters=3, warmup=1)
    p.add_argument("--probs", default="1,0", help="attn_mask_probs settings, comma-separated (default: 1,0)")
    p.add_argument("--precision", default="bf16-autocast", choices=("fp32", "bf16-autocast"),
                   help="ours: bf16 autocast (mixed precision, the training recipe's default) or fp32")
    p.add_argument("--hf-precisions", default="fp32,bf16-autocast",
                   help="transformers' precisions, comma-separated (default: fp32,bf16-autocast)")
    p.add_argument("--targets", type=int, default=8, help="ground-truth segments per image (default: 8)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--checkpointing", action="store_true",
                   help="also time ours with activation checkpointing (train.activation_checkpointing)")
    return p.parse_args(argv)


def make_targets(batch: int, n: int, num_classes: int, size: tuple[int, int], seed: int,
                 device: torch.device = torch.device("cpu")) -> list[Target]:
    """`batch` targets of `n` segments each: crafted cells (H, W) with random labels, on `device`."""
    gen = torch.Generator().manual_seed(seed)
    masks = (common.crafted_mask_logits(batch, n, size, gen) > 0).to(device)  # (B, n, H, W) cells
    labels = torch.randint(0, num_classes, (batch, n), generator=gen).to(device)
    crowd = torch.zeros(n, dtype=torch.bool, device=device)
    return [Target(masks[i], labels[i], crowd) for i in range(batch)]


Step = tuple[Callable[[float], None], Callable[[], int]]  # one training step at attn_mask_probs p; its state bytes


def state_bytes(model: Any, opt: torch.optim.Optimizer) -> int:
    """Bytes one implementation holds between steps: weights, gradients and optimizer state."""
    params = list(model.parameters())
    tensors = [*params, *(p.grad for p in params if p.grad is not None),
               *(v for state in opt.state.values() for v in state.values() if torch.is_tensor(v))]
    return sum(t.numel() * t.element_size() for t in tensors)


def ours_step(model: Any, x: torch.Tensor, targets: list[Target], prec: common.Precision) -> Step:
    try:
        from eomt.training.losses import MaskClassificationLoss
    except ImportError as e:
        raise RuntimeError(f"eomt.training.losses not available ({e})") from None
    criterion = MaskClassificationLoss(model.config.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(p: float) -> None:
        model.set_attn_mask_probs([p] * model.config.num_blocks)
        opt.zero_grad(set_to_none=True)
        with prec.context(x.device.type):
            out = model(x)
            loss, _ = criterion.forward_blocks(
                [*out.mask_logits_per_block, out.mask_logits], [*out.class_logits_per_block, out.class_logits], targets
            )
        loss.backward()
        opt.step()

    return step, lambda: state_bytes(model, opt)


def hf_step(hf: Any, x: torch.Tensor, targets: list[Target], prec: common.Precision) -> Step:
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
    pixels = common.normalize(x)
    mask_labels = [t.masks.float() for t in targets]
    class_labels = [t.labels for t in targets]

    def step(p: float) -> None:
        with torch.no_grad():
            hf.attn_mask_probs.fill_(p)
        opt.zero_grad(set_to_none=True)
        with prec.context(x.device.type):
            loss = hf(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss
        loss.backward()
        opt.step()

    return step, lambda: state_bytes(hf, opt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.setup(args, "benchmarks/training_step.py")
    cfg = common.build_config(args.preset, args.img_size)
    prec = common.PRECISIONS[args.precision]
    hf_precs = common.parse_list(args.hf_precisions, ("fp32", "bf16-autocast"), "hf-precisions")
    model = common.build_model(cfg)
    hf = None if args.no_hf else common.hf_twin(model).to(device).train()
    model.to(device).train()
    x = torch.rand(args.batch, 3, *cfg.img_size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    targets = make_targets(args.batch, args.targets, cfg.num_classes, cfg.img_size, args.seed, device)
    probs = [float(p) for p in args.probs.split(",")]
    record: dict[str, Any] = {
        "script": "benchmarks/training_step.py",
        "command": "python " + " ".join(["benchmarks/training_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment_info(device, args.precision),
        "settings": {"preset": args.preset, "img_size": list(cfg.img_size), "batch": args.batch,
                     "targets_per_image": args.targets, "precision": args.precision,
                     "hf_precisions": hf_precs, "optimizer": "AdamW",
                     "warmup": args.warmup, "iters": args.iters},
    }
    steps: dict[str, Step] = {}
    try:
        steps[f"ours {args.precision}"] = ours_step(model, x, targets, prec)
        if args.checkpointing:
            ckpt_model = copy.deepcopy(model)
            ckpt_model.gradient_checkpointing = True
            steps[f"ours {args.precision} checkpointing"] = ours_step(ckpt_model, x, targets, prec)
    except RuntimeError as e:
        record["ours_skipped"] = str(e)
        print(f"note: our rows skipped: {e}")
    if hf is not None:
        for name in hf_precs:
            steps[f"hf {name}"] = hf_step(hf, x, targets, common.PRECISIONS[name])
    fns = {f"{impl} probs={p:g}": (lambda s=s, p=p: s(p)) for p in probs for impl, (s, _) in steps.items()}
    memory = {}
    for name, fn in fns.items():
        fn()  # first step: allocates the optimizer state, which the step peak then excludes
        held = steps[name.split(" probs=")[0]][1]()
        with PeakMemory(device) as pm:
            fn()
        # Own total: what this implementation holds between steps plus the step's peak above the
        # entry level (the process's total would also count the other implementation's weights).
        memory[name] = {**pm.to_dict(), "total_peak_mb": round((held + pm.peak_bytes) / 2**20, 1)}
    stats = time_round_robin(fns, warmup=max(0, args.warmup - 1), iters=args.iters, device=device)
    rows = [{"name": n, **s.to_dict(), "images_per_s": round(args.batch / (s.median_ms / 1e3), 3),
             "peak_mb": memory[n]["peak_mb"], "total_peak_mb": memory[n]["total_peak_mb"]} for n, s in stats.items()]
    record["rows"] = rows
    record["memory_method"] = next(iter(memory.values()))["method"] if memory else None
    ours = f"ours {args.precision}"
    record["ratios"] = {
        f"{ours} / hf {h} (probs={p:g})": stats[f"{ours} probs={p:g}"].median_ms / stats[f"hf {h} probs={p:g}"].median_ms
        for p in probs for h in hf_precs if f"{ours} probs={p:g}" in stats and f"hf {h} probs={p:g}" in stats
    }
    memory_columns = ([("peak_mb", "step peak MiB (CUDA)"), ("total_peak_mb", "own total peak MiB (CUDA)")]
                      if device.type == "cuda" else [("peak_mb", "peak MiB (RSS, approx.)")])
    print(common.format_table(rows, [("name", "row"), ("median_ms", "median ms"), ("min_ms", "min ms"),
                                     ("p90_ms", "p90 ms"), ("images_per_s", "img/s"), *memory_columns]))
    for key, value in record["ratios"].items():
        print(f"{key}: {value:.3f}")
    record["gpu_targets"] = gpu_targets.training_verdicts(args.preset, args.batch, device, ours, rows)
    gpu_targets.print_verdicts(record["gpu_targets"])
    path = common.write_json(args.json or common.default_json("training_step", args.preset), record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
