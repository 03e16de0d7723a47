"""ALGM token merging: FLOPs, CPU throughput and accuracy, merging on vs off (paper Table 9).

    python benchmarks/token_merging.py                      # everything below
    python benchmarks/token_merging.py --parts flops        # or throughput, accuracy, sweep

- flops: FLOPs per image (the existing counter, eomt.benchmark.count_flops, on the real merged
  forward) of the Cityscapes EoMT-L 1024 preset on one 1024x1024 window of a street-like image
  (eomt.benchmark.scenes.street_scene: large sky and road, clutter between) and of EoMT-S at 512,
  random weights (a trained network's tokens merge differently: these show what the machinery
  saves on such an image, not what a trained Cityscapes model would).
- throughput: EoMT-S 512 semantic network, batch 8 street crops, merging on vs off timed in turns.
- accuracy / sweep: PQ and mIoU of the trained demo model (--model) with and without merging on
  the 100 held-out synthetic scenes, and a sweep of tau (FLOPs per image, time, PQ, mIoU).
Prints tables and writes benchmarks/results/token_merging.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from eomt import EoMT
from eomt.benchmark import count_flops, environment_info, meta_model, time_round_robin
from eomt.benchmark.scenes import street_scene
from eomt.config import preset
from eomt.models.merging import TokenMerging

RESULTS = Path(__file__).resolve().parent / "results" / "token_merging.json"


def _random_model(name: str, size: tuple[int, int] | None = None) -> EoMT:
    cfg = preset(name)
    if size is not None:
        cfg = cfg.replace(img_size=size)
    model = EoMT(cfg).eval()
    model.set_attn_mask_probs([0.0] * cfg.num_blocks)
    return model


def _gmacs(model: EoMT, x: torch.Tensor, merging: TokenMerging | None) -> float:
    model.token_merging = merging
    try:
        return count_flops(model, tuple(x.shape), inputs=x).gmacs / x.shape[0]
    finally:
        model.token_merging = None


def flops_part(taus: list[float]) -> list[dict[str, Any]]:
    rows = []
    scene = street_scene(1024, 2048)
    for name, size, crop in [("cityscapes_semantic_eomt_large_1024", None, scene[:, :, :1024]),
                             ("coco_panoptic_eomt_small_640", (512, 512), street_scene(512, 1024)[:, :, :512])]:
        model = _random_model(name, size)
        x = crop[None]
        off = count_flops(meta_model(model.config, 0.0), tuple(x.shape)).gmacs  # content-independent
        for tau in taus:
            t0 = time.perf_counter()
            on = _gmacs(model, x, TokenMerging(threshold=tau))
            rows.append({"model": name, "input": list(x.shape), "tau": tau, "gmacs_off": round(off, 1),
                         "gmacs_on": round(on, 1), "reduction": round(off / on, 2),
                         "count_s": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
        del model
    return rows


def throughput_part(batch: int, iters: int) -> dict[str, Any]:
    model = _random_model("coco_panoptic_eomt_small_640", (512, 512))
    merged = _random_model("coco_panoptic_eomt_small_640", (512, 512))
    merged.load_state_dict(model.state_dict())
    merged.token_merging = TokenMerging()
    x = torch.stack([street_scene(512, 1024, seed=i)[:, :, (i % 2) * 512 : (i % 2) * 512 + 512] for i in range(batch)])

    def run(net: EoMT) -> Any:
        def forward() -> Any:
            with torch.inference_mode():
                return net(x)
        return forward

    stats = time_round_robin({"off": run(model), "on": run(merged)}, warmup=1, iters=iters)
    off, on = stats["off"].median_ms, stats["on"].median_ms
    row = {"model": "EoMT-S 512 (random weights)", "batch": batch, "off_ms": round(off, 1), "on_ms": round(on, 1),
           "off_img_s": round(batch / off * 1e3, 2), "on_img_s": round(batch / on * 1e3, 2),
           "speedup": round(off / on, 2), "threads": torch.get_num_threads()}
    print(row, flush=True)
    return row


def accuracy_part(path: str, taus: list[float | None]) -> list[dict[str, Any]]:
    from eomt.checkpoints import load_model
    from eomt.demo import demo_config, evaluate_all_tasks
    from eomt.training.data_module import EoMTDataModule

    model = load_model(path).eval()
    cfg = demo_config()
    data = EoMTDataModule(cfg.data, model.config, seed=cfg.train.seed)
    data.setup("validate")
    from eomt.images import to_chw
    from eomt.inference.preprocess import resize_and_pad

    images, _ = resize_and_pad([to_chw(data.val_set[i][0]) for i in range(16)], model.config.img_size)
    rows = []
    for tau in taus:
        merging = None if tau is None else TokenMerging(threshold=tau)
        gmacs = _gmacs(model, images, merging)
        model.token_merging = merging
        t0 = time.perf_counter()
        metrics = evaluate_all_tasks(model, data.val_set)
        seconds = time.perf_counter() - t0
        model.token_merging = None
        rows.append({"tau": tau, "gmacs_per_image": round(gmacs, 3), "eval_s": round(seconds, 1),
                     "PQ": round(_metric(metrics, "pq"), 2), "mIoU": round(_metric(metrics, "miou"), 2),
                     "AP": round(_metric(metrics, "ap"), 2)})
        print(rows[-1], flush=True)
    return rows


def _metric(metrics: dict[str, float], name: str) -> float:
    """The metric whose lower-cased key is `name` (panoptic/PQ, semantic/mIoU, ...)."""
    found = [v for k, v in metrics.items() if k.lower().split("/")[-1] == name]
    if not found:
        raise KeyError(f"{name} not in {sorted(metrics)}")
    return float(found[0])


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="flops,throughput,accuracy", help="comma-separated: flops, throughput, accuracy")
    p.add_argument("--model", default="/tmp/models/demo_panoptic.safetensors", help="trained panoptic model")
    p.add_argument("--taus", default="0.95,0.9,0.88,0.85,0.8", help="thresholds for the FLOPs and accuracy sweeps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [s.strip() for s in args.parts.split(",")]
    taus = [float(t) for t in args.taus.split(",")]
    record: dict[str, Any] = {"environment": environment_info(torch.device("cpu"), "fp32")}
    if args.json.exists():
        record.update({k: v for k, v in json.loads(args.json.read_text()).items() if k != "environment"})
    if "flops" in parts:
        record["flops"] = flops_part([0.88] if "sweep" not in parts else taus)
    if "throughput" in parts:
        record["throughput"] = throughput_part(args.batch, args.iters)
    if "accuracy" in parts:
        record["accuracy"] = accuracy_part(args.model, [None, *taus])
    for key in ("flops", "throughput", "accuracy"):
        if key in record:
            value = record[key]
            print(f"\n{key}\n" + _table(value if isinstance(value, list) else [value]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
