"""`eomt bench`: latency, throughput, FLOPs and peak memory of a model on this machine."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16", "fp16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="SOURCE", help="checkpoint file, transformers folder or hub id")
    src.add_argument("--preset", metavar="NAME",
                     help="a preset with random weights and masked attention off (e.g. eomt_small_640)")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="network input size (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="images per forward (default: 1)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES,
                   help="fp32, or bf16 / fp16 (autocast; with --cast the weights are converted)")
    p.add_argument("--cast", action="store_true", help="convert the weights to --dtype instead of autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (fullgraph)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default: 10)")
    p.add_argument("--end-to-end", action="store_true",
                   help="also time Predictor on a random 480x640 image (preprocess + network + post-processing)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON")


def _load(args: argparse.Namespace) -> Any:
    from eomt import EoMT

    if args.preset:
        model = EoMT.from_config(args.preset)
        model.set_attn_mask_probs([0.0] * model.config.num_blocks)
        return model
    from eomt.checkpoints import load_model

    return load_model(args.model)


def run(args: argparse.Namespace) -> int:
    import torch

    from eomt.benchmark import PeakMemory, count_flops, environment_info, meta_model, time_fn
    from eomt.inference.predictor import resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch < 1 or args.iters < 1:
        raise ValueError(f"--batch and --iters must be >= 1, got {args.batch} and {args.iters}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = _load(args).eval().to(device)
    cfg = model.config
    size = tuple(args.img_size) if args.img_size else tuple(cfg.img_size)
    if model.masked_attention_active:
        log.warning("masked attention is active (attn_mask_probs=%s): timing the training-time network",
                    [round(p, 3) for p in model.attn_mask_probs.tolist()])
    net = copy.deepcopy(model).to(dtype) if args.cast else model
    cast = dtype if args.cast else torch.float32
    if args.compile:
        net = torch.compile(net, fullgraph=True)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 and not args.cast
        else contextlib.nullcontext()
    )
    x = torch.rand(args.batch, 3, *size, device=device).to(cast)

    def forward() -> Any:
        with torch.inference_mode(), autocast:
            return net(x)

    with PeakMemory(device) as memory:
        forward()  # first call: compilation with --compile, allocator warm-up otherwise
    stats = time_fn(forward, warmup=args.warmup, iters=args.iters, device=device)
    probs = float(model.attn_mask_probs.max())
    flops = count_flops(meta_model(cfg.replace(img_size=size), probs), (args.batch, 3, *size))
    mode = f"{args.dtype}{' weights' if args.cast else ' autocast' if args.dtype != 'fp32' else ''}"
    record: dict[str, Any] = {
        "environment": environment_info(device, mode),
        "model": cfg.name or "custom", "input": [args.batch, 3, *size], "compile": args.compile,
        "network": stats.to_dict(),
        "images_per_s": args.batch / (stats.median_ms / 1e3),
        "gflops_per_image": flops.gflops / args.batch, "gmacs_per_image": flops.gmacs / args.batch,
        "first_call_peak_memory": memory.to_dict(),
    }
    lines = [
        f"model      {record['model']}  input {tuple(record['input'])}  {mode}"
        f"{'  compiled' if args.compile else ''}  on {record['environment']['device_name']}"
        f"  ({record['environment']['threads']} threads)",
        f"network    median {stats.median_ms:.1f} ms  p90 {stats.p90_ms:.1f} ms  min {stats.min_ms:.1f} ms"
        f"  -> {record['images_per_s']:.2f} images/s",
        f"compute    {record['gmacs_per_image']:.4g} GMACs = {record['gflops_per_image']:.4g} GFLOPs per image"
        " (the paper's 'GFLOPs' are GMACs)",
        f"memory     {memory.peak_mb:.0f} MiB peak during the first forward ({memory.method})",
    ]
    if args.end_to_end:
        from eomt.inference.predictor import Predictor

        predictor = Predictor(model, device=device, dtype=args.dtype)
        image = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
        e2e = time_fn(lambda: predictor.predict_tensors([image]), warmup=1, iters=args.iters, device=device)
        record["end_to_end_480x640"] = e2e.to_dict()
        lines.append(f"end-to-end median {e2e.median_ms:.1f} ms per 480x640 image ({predictor.task})")
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
