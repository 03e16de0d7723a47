"""The project's GPU targets, measured by `inference.py` and `training_step.py` with `--device cuda`.

Inference (ours in bf16, random weights, attn_mask_probs = 0, every target timed as eager and as a
CUDA-graph replay of the same forward; the faster counts):
  - EoMT-L 640, batch 1, end to end (network + panoptic post-processing): >= 256 images/s
  - EoMT-S 640, batch 1, end to end: >= 660 images/s
  - EoMT-L 640, batch 32, network: >= 500 images/s
"End to end" is the scripts' rule: the network on a (B, 3, 640, 640) input, then our panoptic
post-processing of crafted logits that tile the image (restored to 480 x 640), both on the device.
Training (one step at 4 images of EoMT-L 640, ours in bf16 autocast): peak CUDA memory (the step's
peak plus our weights, gradients and AdamW state) <= 20 GB (1e9 bytes), and >= 1.5x the images/s of
transformers' faster precision at the same attn_mask_probs.

`eomt bench --json` records (as `gpu_check.sh` writes them) are judged against the same inference
targets, "end to end" there being Predictor on a 480x640 image (preprocess included):

    python benchmarks/gpu_targets.py gpu_check_out/bench.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import common

LARGE, SMALL = "coco_panoptic_eomt_large_640", "coco_panoptic_eomt_small_640"


@dataclass(frozen=True)
class InferenceTarget:
    """A throughput floor for one preset at one batch size, network alone or end to end."""

    preset: str
    batch: int
    end_to_end: bool
    min_images_per_s: float

    @property
    def name(self) -> str:
        what = "end to end" if self.end_to_end else "network"
        return f"{self.preset} batch {self.batch} {what} >= {self.min_images_per_s:g} img/s"


INFERENCE_TARGETS = (
    InferenceTarget(LARGE, 1, True, 256.0),
    InferenceTarget(SMALL, 1, True, 660.0),
    InferenceTarget(LARGE, 32, False, 500.0),
)
TARGET_MODES = ("eager", "cudagraphs")
TRAINING_PRESET, TRAINING_BATCH = LARGE, 4
TRAINING_MAX_PEAK_GB, TRAINING_MIN_SPEEDUP = 20.0, 1.5


def applies(preset: str, device: torch.device) -> bool:
    """Whether `preset` has inference targets and `device` is the GPU they are stated for."""
    return device.type == "cuda" and any(t.preset == preset for t in INFERENCE_TARGETS)


def _crafted_panoptic(cfg: Any, batch: int, device: torch.device, dtype: torch.dtype,
                      seed: int) -> Callable[[], Any]:
    """Our panoptic post-processing of crafted logits (`common.crafted_*`) at `batch`, on `device`."""
    from eomt.inference.postprocess import Workspace, panoptic
    from eomt.inference.preprocess import scaled_size_longest
    from eomt.structures import ImageMeta

    h, w = cfg.img_size
    gen = torch.Generator().manual_seed(seed)
    cls = common.crafted_class_logits(batch, cfg.num_queries, cfg.num_classes, 0.5, gen).to(device)
    masks = common.crafted_mask_logits(batch, cfg.num_queries, (h // 4, w // 4), gen).to(device, dtype)
    metas = [ImageMeta((480, 640), scaled_size_longest(480, 640, (h, w)), (h, w))] * batch
    workspace, stuff = Workspace(), list(cfg.stuff_classes)
    return lambda: panoptic(masks, cls, metas, stuff, workspace=workspace)


def inference_fns(model: Any, preset: str, device: torch.device, seed: int = 0) -> tuple[dict, dict]:
    """Timed rows {name: fn} and their metadata {name: {...}} for the targets of `preset`: ours in
    bf16 at each target's batch size, eager and CUDA-graph replay, network or end to end."""
    from eomt.benchmark import inference_forward

    fns: dict[str, Callable[[], Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    cfg = model.config
    for target in (t for t in INFERENCE_TARGETS if t.preset == preset):
        x = torch.rand(target.batch, 3, *cfg.img_size, generator=torch.Generator().manual_seed(seed)).to(device)
        post = _crafted_panoptic(cfg, target.batch, device, torch.bfloat16, seed) if target.end_to_end else None
        for mode in TARGET_MODES:
            forward = inference_forward(model, x, "bf16", mode)
            if post is None:
                fn = forward
            else:
                def fn(forward: Callable = forward, post: Callable = post) -> Any:
                    forward()
                    return post()
            kind = "end-to-end" if target.end_to_end else "network"
            name = f"target ours bf16 {mode} batch {target.batch} {kind}"
            fns[name] = fn
            meta[name] = {"section": "target", "impl": "ours", "precision": "bf16", "mode": mode,
                          "batch": target.batch, "target": target.name}
    return fns, meta


def inference_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target that has rows: the best images/s among its rows against the floor."""
    out = []
    for target in INFERENCE_TARGETS:
        mine = [r for r in rows if r.get("target") == target.name]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["images_per_s"])
        out.append({"target": target.name, "measured": round(best["images_per_s"], 1), "row": best["name"],
                    "met": best["images_per_s"] >= target.min_images_per_s})
    return out


def bench_verdicts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The inference targets judged on an `eomt bench --json` record: per target, the best images/s
    of the matching rows (bf16 or fp32, any mode; end to end = 1000 / Predictor median ms)."""
    rates: list[dict[str, Any]] = []
    for r in record.get("rows", []):
        if "skipped" in r or "network" not in r:
            continue
        label = f"eomt bench {r['model']} batch {r['input'][0]} {r['precision']} {r['mode']}"
        for target in INFERENCE_TARGETS:
            if r["model"] != target.preset or r["input"][0] != target.batch:
                continue
            if not target.end_to_end:
                rates.append({"name": label, "target": target.name, "images_per_s": r["images_per_s"]})
            elif "end_to_end_480x640" in r:
                rate = target.batch * 1e3 / r["end_to_end_480x640"]["median_ms"]
                rates.append({"name": f"{label} end-to-end", "target": target.name, "images_per_s": rate})
    return inference_verdicts(rates)


def training_verdicts(preset: str, batch: int, device: torch.device, ours: str,
                      rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training targets for the rows of `training_step.py` (EoMT-L 640 at 4 images on CUDA only):
    the total peak memory of each `ours` row, and its images/s over transformers' faster row."""
    if device.type != "cuda" or preset != TRAINING_PRESET or batch != TRAINING_BATCH:
        return []
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        if not r["name"].startswith(f"{ours} probs="):
            continue
        probs = r["name"].split("probs=")[1]
        peak_gb = r["total_peak_mb"] * 2**20 / 1e9
        out.append({"target": f"{TRAINING_PRESET} training batch {batch} peak memory <= {TRAINING_MAX_PEAK_GB:g} GB",
                    "row": r["name"], "measured": round(peak_gb, 2), "met": peak_gb <= TRAINING_MAX_PEAK_GB})
        hf = [by_name[n] for n in by_name if n.startswith("hf ") and n.endswith(f"probs={probs}")]
        if hf:
            best = max(hf, key=lambda h: h["images_per_s"])
            speedup = r["images_per_s"] / best["images_per_s"]
            out.append({"target": f"{TRAINING_PRESET} training batch {batch} >= {TRAINING_MIN_SPEEDUP:g}x "
                                  f"transformers' images/s", "row": f"{r['name']} vs {best['name']}",
                        "measured": round(speedup, 3), "met": speedup >= TRAINING_MIN_SPEEDUP})
    return out


def print_verdicts(verdicts: list[dict[str, Any]]) -> None:
    """The GPU target table on stdout (nothing when no target applies)."""
    if verdicts:
        print("\nGPU targets:")
        print(common.format_table([{**v, "met": "met" if v["met"] else "NOT met"} for v in verdicts],
                                  [("target", "target"), ("measured", "measured"), ("met", "verdict"),
                                   ("row", "row")]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/gpu_targets.py BENCH_JSON (written by eomt bench --json)")
    verdicts = bench_verdicts(json.loads(Path(sys.argv[1]).read_text()))
    if not verdicts:
        sys.exit(f"{sys.argv[1]}: no row matches a GPU target")
    print_verdicts(verdicts)
