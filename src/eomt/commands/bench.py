"""`eomt bench`: latency, throughput, FLOPs and peak memory of one model or a sweep of them.

Every combination of --preset (or --model) x --batch x --precision x --mode is one row: the network
alone, and with --end-to-end also Predictor on a 480x640 image (preprocess + network +
post-processing) for fp32, bf16 and int8 rows at batch 1, its network compiled as the row's mode
asks (`END_TO_END_COMPILE`: cudagraphs -> torch.compile "reduce-overhead", CUDA graphs of the
compiled net). Combinations a device cannot run (fp16 and CUDA graphs on the CPU, int8 on a GPU or
compiled) are listed as skipped, with the reason. Prints a table; --json writes every row.

    eomt bench --preset coco_panoptic_eomt_small_640 --precision fp32,bf16 --batch 1,8
    eomt bench --preset all --device cuda --precision bf16 --mode eager,compile,cudagraphs --batch 1,32
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from eomt.benchmark.forward import MODES, PRECISIONS
from eomt.commands import add_trust_pickle
from eomt.errors import OptionError

log = logging.getLogger(__name__)

# The Predictor `compile` option of each --mode for the end-to-end rows.
END_TO_END_COMPILE: dict[str, bool | str] = {"eager": False, "compile": True, "max-autotune": "max-autotune",
                                             "cudagraphs": "reduce-overhead"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="SOURCE", help="checkpoint file, transformers folder or hub id")
    src.add_argument("--preset", metavar="NAMES",
                     help="preset(s) with random weights and masked attention off, comma-separated, "
                          "or 'all' for every paper configuration (see `eomt configs`)")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="network input size (default: each model's)")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default: 1)")
    add_trust_pickle(p)
    p.add_argument("--precision", "--dtype", dest="precision", default="fp32",
                   help=f"comma-separated from {', '.join(PRECISIONS)} (default: fp32)")
    p.add_argument("--mode", default="eager",
                   help="comma-separated from eager, compile (torch.compile fullgraph), max-autotune "
                        "(torch.compile mode max-autotune), cudagraphs (CUDA graph replay) (default: eager)")
    p.add_argument("--compile", action="store_true", help="same as --mode compile")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default: 10)")
    p.add_argument("--end-to-end", action="store_true",
                   help="also time Predictor on a random 480x640 image (fp32, bf16 and int8 rows at batch 1)")
    p.add_argument("--merge-tokens", nargs="?", type=float, const=0.88, default=None, metavar="TAU",
                   help="add an ALGM token merging row (threshold TAU, default 0.88) after each plain one; both "
                        "then run on street-like images (eomt.benchmark.scenes), not noise; merged GMACs are "
                        "counted on the first image (eager rows only: merging has data-dependent shapes)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON")


def _split(text: str, what: str, choices: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if choices is not None and t not in choices]
    if not items or bad:
        raise OptionError(f"--{what}: unknown {bad or text!r} (expected some of: {', '.join(choices or ())})")
    return items


def _models(args: argparse.Namespace) -> list[tuple[str, Callable[[], Any]]]:
    """(name, loader) pairs; loaders build one model at a time (a sweep never holds two)."""
    from eomt import EoMT
    from eomt.config import PRESET_NAMES

    if args.model:
        from eomt.checkpoints import load_model

        return [(str(args.model), lambda: load_model(args.model, trust_pickle=args.trust_pickle))]
    names = PRESET_NAMES if args.preset.strip() == "all" else _split(args.preset, "preset")

    def build(name: str) -> Any:
        model = EoMT.from_config(name)
        model.set_attn_mask_probs([0.0] * model.config.num_blocks)
        return model

    return [(name, lambda name=name: build(name)) for name in names]


def run(args: argparse.Namespace) -> int:
    import torch

    from eomt.benchmark import (PeakMemory, count_flops, environment_info, inference_forward, meta_model,
                                skip_reason, time_fn)
    from eomt.inference.predictor import resolve_device
    from eomt.models.merging import TokenMerging

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in _split(args.batch, "batch")]
    if min(batches) < 1 or args.iters < 1:
        raise OptionError(f"--batch and --iters must be >= 1, got {args.batch} and {args.iters}")
    precisions = _split(args.precision, "precision", tuple(PRECISIONS))
    modes = _split("compile" if args.compile else args.mode, "mode", MODES)
    device = resolve_device(args.device)
    rows: list[dict[str, Any]] = []
    for name, load in _models(args):
        model = load().eval().to(device)
        cfg = model.config
        size = tuple(args.img_size) if args.img_size else tuple(cfg.img_size)
        if model.masked_attention_active:
            log.warning("%s: masked attention is active (attn_mask_probs=%s): timing the training-time network",
                        name, [round(p, 3) for p in model.attn_mask_probs.tolist()])
        probs = float(model.attn_mask_probs.max())
        gmacs = count_flops(meta_model(cfg.replace(img_size=size), probs), (1, 3, *size)).gmacs
        for batch in batches:
            x = torch.rand(batch, 3, *size, device=device) if args.merge_tokens is None else _scenes(batch, size, device)
            for precision in precisions:
                for mode, merge in [(m, t) for m in modes for t in dict.fromkeys((None, args.merge_tokens))]:
                    row: dict[str, Any] = {"model": cfg.name or name, "input": [batch, 3, *size],
                                           "precision": precision, "mode": mode, "gmacs_per_image": gmacs}
                    model.token_merging = None if merge is None else TokenMerging(threshold=merge)
                    if merge is not None:
                        row.update(merge_tokens=merge, gmacs_per_image=count_flops(model, (1, 3, *size), x[:1]).gmacs)
                    rows.append(row)
                    reason = skip_reason(precision, mode, device) or (
                        "token merging: eager only" if merge is not None and mode != "eager" else None)
                    if reason:
                        row["skipped"] = reason
                        continue
                    forward = inference_forward(model, x, precision, mode)
                    with PeakMemory(device) as memory:
                        forward()  # first call: compilation, allocator warm-up
                    stats = time_fn(forward, warmup=args.warmup, iters=args.iters, device=device)
                    row.update(network=stats.to_dict(), images_per_s=batch / (stats.median_ms / 1e3),
                               first_call_peak_memory=memory.to_dict())
                    if args.end_to_end and batch == 1 and precision in ("fp32", "bf16", "int8"):
                        row["end_to_end_480x640"] = _end_to_end(model, device, precision, mode, args).to_dict()
        del model
    record = {"environment": environment_info(device, ",".join(precisions)), "rows": rows}
    print(_table(rows, record["environment"]))
    if args.json:
        from eomt.inference.io import write_json

        print(f"wrote {write_json(args.json, record)}")
    return 0


def _scenes(batch: int, size: tuple[int, ...], device: Any) -> Any:
    """`batch` street-like images (B, 3, H, W): content that token merging can act on."""
    import torch

    from eomt.benchmark.scenes import street_scene

    return torch.stack([street_scene(size[0], size[1], seed=i) for i in range(batch)]).to(device)


def _end_to_end(model: Any, device: Any, precision: str, mode: str, args: argparse.Namespace) -> Any:
    import torch

    from eomt.benchmark import time_fn
    from eomt.inference.predictor import Predictor

    predictor = Predictor(model, device=device, dtype=precision, compile=END_TO_END_COMPILE[mode])
    image = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
    # Compiled modes: compilation, then (reduce-overhead) the CUDA-graph recording, before timing.
    warmup = 1 if mode == "eager" else 3
    return time_fn(lambda: predictor.predict_tensors([image]), warmup=warmup, iters=args.iters, device=device)


def _mode(row: dict[str, Any]) -> str:
    return row["mode"] + (f" merge {row['merge_tokens']:g}" if "merge_tokens" in row else "")


def _table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    head = ["model", "input", "precision", "mode", "median ms", "p90 ms", "img/s", "GMACs/img",
            "peak MiB", "end-to-end ms"]
    lines = [head]
    for r in rows:
        size = "x".join(str(v) for v in r["input"][:1] + r["input"][2:])
        if "skipped" in r:
            lines.append([r["model"], size, r["precision"], _mode(r), f"skipped: {r['skipped']}", "", "", "", "", ""])
            continue
        net, mem = r["network"], r["first_call_peak_memory"]
        e2e = r.get("end_to_end_480x640", {}).get("median_ms")
        lines.append([r["model"], size, r["precision"], _mode(r), f"{net['median_ms']:.1f}", f"{net['p90_ms']:.1f}",
                      f"{r['images_per_s']:.2f}", f"{r['gmacs_per_image']:.4g}", f"{mem['peak_mb']:.0f}",
                      "" if e2e is None else f"{e2e:.1f}"])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    note = (f"{env['device_name']}, torch {env['torch']}, {env['threads']} threads; input = batch x H x W; "
            "GMACs = the paper's 'GFLOPs'; peak memory during the first call")
    return "\n".join([note, *text])
