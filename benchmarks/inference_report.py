"""The summaries of `inference.py`: ours vs transformers ratios with their CPU targets, precision
errors against fp32, and the printed report."""

from __future__ import annotations

import argparse
from typing import Any

import torch

import common
import gpu_targets

CPU_TARGETS = {  # EoMT-S at 640, batch 1, 2-core CPU
    "ours_fp32 / hf_fp32 (network)": 1.0,
    "ours_bf16 / hf_fp32 (network)": 0.4,
    "ours / hf (panoptic post-processing)": 0.3,
    "ours / hf (end-to-end bf16)": 0.4,
}


def report(record: dict[str, Any], device: torch.device) -> None:
    """The row table, the ratios against their targets, the GPU targets and any profile, on stdout."""
    columns = [("name", "row"), ("median_ms", "median ms"), ("p90_ms", "p90 ms"), ("min_ms", "min ms"),
               ("images_per_s", "img/s"), ("first_call_s", "first call s")]
    if device.type == "cuda":
        columns.append(("peak_mb", "peak MiB (CUDA)"))
    print(common.format_table(record["rows"], columns))
    print()
    for key, value in record["ratios"].items():
        target = CPU_TARGETS.get(key)
        verdict = "" if target is None else f"  (CPU target <= {target}: {'met' if value <= target else 'NOT met'})"
        print(f"{key}: {value:.3f}{verdict}")
    if "postprocess" in record:
        print(f"postprocess: {record['postprocess']}")
    gpu_targets.print_verdicts(record["gpu_targets"])
    for name, ops in record.get("profile", {}).items():
        print(f"\nprofile {name}:")
        print(common.format_table(ops, [("op", "op"), ("self_ms_per_call", "self ms"), ("share", "share"), ("calls", "calls")]))


def precision_errors(fns: dict, meta: dict, model: Any, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """How far each of our eager precisions is from fp32: max |diff| of the logits, and the
    fraction of mask pixels whose sign (inside / outside) agrees."""
    with torch.inference_mode():
        ref = model(x)
    out = {}
    for name, fn in fns.items():
        m = meta[name]
        if m["impl"] != "ours" or m["mode"] != "eager" or m["precision"] == "fp32":
            continue
        got = fn()
        out[m["precision"]] = {
            "mask_logits_max_abs_diff": round(float((got.mask_logits.float() - ref.mask_logits).abs().max()), 4),
            "class_logits_max_abs_diff": round(float((got.class_logits.float() - ref.class_logits).abs().max()), 4),
            "mask_sign_agreement": round(float(((got.mask_logits > 0) == (ref.mask_logits > 0)).float().mean()), 5),
        }
    return out


def ratios(median: dict[str, float], args: argparse.Namespace) -> dict[str, float]:
    """ours / hf median ratios for the rows both sides have."""
    out = {}
    for mode in ("eager", "compile"):
        hf32 = median.get(f"hf fp32 {mode}")
        if hf32 is None:
            continue
        for name, value in median.items():
            parts = name.split()
            if parts[0] == "ours" and len(parts) == 3 and parts[2] == mode:
                suffix = " (network)" if mode == "eager" else f" (network, {mode})"
                out[f"ours_{parts[1]} / hf_fp32{suffix}"] = value / hf32
    if "hf postprocess" in median:
        out["ours / hf (panoptic post-processing)"] = median["ours postprocess"] / median["hf postprocess"]
        out["ours / hf (instance post-processing)"] = (median["ours instance postprocess"]
                                                       / median["hf instance postprocess"])
    for name, value in median.items():  # "ours bf16 end-to-end" and "ours bf16 end-to-end (network logits)"
        impl, precision, *rest = name.split()
        hf = median.get(f"hf {precision} {' '.join(rest)}")
        if impl == "ours" and rest and rest[0] == "end-to-end" and hf is not None:
            kind = " ".join([precision, *rest[1:]]).replace("(", "").replace(")", "")
            out[f"ours / hf (end-to-end {kind})"] = value / hf
    return out
