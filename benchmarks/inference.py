"""Inference latency: our EoMT vs transformers' EomtForUniversalSegmentation with the same weights.

Rows: the network alone per implementation x precision x mode (eager / torch.compile), panoptic
post-processing alone (ours vs `EomtImageProcessorPil.post_process_panoptic_segmentation` on
crafted outputs where a fraction of the queries passes the 0.8 threshold; instance
post-processing, ours top-100 over queries x classes vs transformers' per-query rule), and end to end
(network + panoptic post-processing of crafted mask and class logits in the network's output dtype;
random weights give noise-like mask logits, which no trained model outputs, so these rows take
the crafted logits that tile the image like a real output; rows "... (network logits)" post-process
the random network's own mask logits instead, the worst case for the post-processing). Both models run with
attn_mask_probs = 0 (an annealed model). All rows are timed round-robin so that load drift on a
shared machine hits them alike. Prints a table and writes JSON.

    python benchmarks/inference.py --preset coco_panoptic_eomt_small_640 --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any, Callable

import torch

import common
from eomt.benchmark import environment_info, time_round_robin

TARGETS = {  # EoMT-S at 640, batch 1, 2-core CPU
    "ours_fp32 / hf_fp32 (network)": 1.0,
    "ours_bf16 / hf_fp32 (network)": 0.4,
    "ours / hf (panoptic post-processing)": 0.3,
    "ours / hf (end-to-end bf16)": 0.4,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--precisions", default="fp32,bf16,bf16-autocast",
                   help=f"our precisions, comma-separated from {', '.join(common.PRECISIONS)}")
    p.add_argument("--hf-precisions", default="fp32", help="transformers' precisions (default: fp32)")
    p.add_argument("--modes", default="eager", help="eager and/or compile, comma-separated (default: eager)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-postprocess", action="store_true", help="skip the post-processing rows")
    p.add_argument("--original-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                   help="image size the post-processing restores (default: 480 640)")
    p.add_argument("--confident", type=float, default=0.5,
                   help="fraction of queries whose class score passes 0.8 (default: 0.5)")
    p.add_argument("--profile", action="store_true", help="record torch.profiler top ops of the eager forwards")
    return p.parse_args(argv)


def network_fns(args: argparse.Namespace, model: Any, hf: Any, x: torch.Tensor) -> tuple[dict, dict]:
    """Callables of the network rows {name: fn}, and row metadata {name: {...}}."""
    fns: dict[str, Callable[[], Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    impls = [("ours", model, common.parse_list(args.precisions, common.PRECISIONS, "precisions"))]
    if hf is not None:
        impls.append(("hf", hf, common.parse_list(args.hf_precisions, common.PRECISIONS, "hf-precisions")))
    for mode in common.parse_list(args.modes, ("eager", "compile"), "modes"):
        for impl, base, precisions in impls:
            for prec_name in precisions:
                prec = common.PRECISIONS[prec_name]
                net = base if prec.cast == torch.float32 else copy.deepcopy(base).to(prec.cast)
                if mode == "compile":
                    # Ours has no graph break (fullgraph); transformers' forward has some.
                    net = torch.compile(net, fullgraph=impl == "ours")
                inp = (x if impl == "ours" else common.normalize(x)).to(prec.cast)
                call = (lambda n, i: lambda: n(i)) if impl == "ours" else (lambda n, i: lambda: n(pixel_values=i))
                fn = call(net, inp)

                def run(fn: Callable = fn, prec: common.Precision = prec) -> Any:
                    with torch.inference_mode(), prec.context():
                        return fn()

                name = f"{impl} {prec_name} {mode}"
                fns[name] = run
                meta[name] = {"section": "network", "impl": impl, "precision": prec_name, "mode": mode}
    return fns, meta


def postprocess_fns(args: argparse.Namespace, cfg: Any, net_fns: dict, net_meta: dict) -> tuple[dict, dict, dict]:
    """Post-processing rows, end-to-end rows (every eager network row + its post-processing), and a
    check that ours and transformers agree."""
    try:
        from eomt.inference.postprocess import Workspace, instance, panoptic
        from eomt.inference.preprocess import scaled_size_longest
        from eomt.structures import ImageMeta
    except ImportError as e:
        return {}, {}, {"skipped": f"eomt.inference.postprocess not available ({e})"}
    from transformers.models.eomt.modeling_eomt import EomtForUniversalSegmentationOutput

    b, q = args.batch, cfg.num_queries
    h, w = cfg.img_size
    gen = torch.Generator().manual_seed(args.seed)
    cls_logits = common.crafted_class_logits(b, q, cfg.num_classes, args.confident, gen)
    mask_logits = common.crafted_mask_logits(b, q, (h // 4, w // 4), gen)
    orig = tuple(args.original_size)
    metas = [ImageMeta(orig, scaled_size_longest(*orig, (h, w)), (h, w))] * b
    stuff = list(cfg.stuff_classes)

    workspace = Workspace()  # the buffers a Predictor keeps from call to call

    def ours_post(masks: torch.Tensor = mask_logits) -> Any:
        return panoptic(masks, cls_logits, metas, stuff, workspace=workspace)

    def ours_instance() -> Any:
        return instance(mask_logits, cls_logits, metas, workspace=workspace)

    fns: dict[str, Callable[[], Any]] = {"ours postprocess": ours_post, "ours instance postprocess": ours_instance}
    meta = {"ours postprocess": {"section": "postprocess", "impl": "ours"},
            "ours instance postprocess": {"section": "postprocess", "impl": "ours"}}

    info: dict[str, Any] = {"queries_passing_threshold": int((cls_logits.softmax(-1)[..., :-1].max(-1).values > 0.8).sum())}
    hf = any(m["impl"] == "hf" for m in net_meta.values())
    if hf:
        from transformers import EomtImageProcessorPil

        processor = EomtImageProcessorPil(size={"shortest_edge": h, "longest_edge": w}, do_pad=True)

        def hf_post(masks: torch.Tensor = mask_logits) -> Any:
            out = EomtForUniversalSegmentationOutput(masks_queries_logits=masks, class_queries_logits=cls_logits)
            return processor.post_process_panoptic_segmentation(out, target_sizes=[orig] * b, stuff_classes=stuff)

    crafted: dict[torch.dtype, torch.Tensor] = {}
    for name, m in net_meta.items():
        if m["mode"] != "eager":
            continue
        post = ours_post if m["impl"] == "ours" else hf_post
        out = net_fns[name]()
        dtype = (out.mask_logits if m["impl"] == "ours" else out.masks_queries_logits).dtype
        crafted.setdefault(dtype, mask_logits.to(dtype))

        def e2e(net: Callable = net_fns[name], post: Callable = post, masks: torch.Tensor = crafted[dtype]) -> Any:
            net()
            return post(masks)

        def e2e_own(net: Callable = net_fns[name], post: Callable = post, impl: str = m["impl"]) -> Any:
            out = net()
            return post(out.mask_logits if impl == "ours" else out.masks_queries_logits)

        for row, fn in ((f"{m['impl']} {m['precision']} end-to-end", e2e),
                        (f"{m['impl']} {m['precision']} end-to-end (network logits)", e2e_own)):
            fns[row] = fn
            meta[row] = {"section": "end-to-end", "impl": m["impl"], "precision": m["precision"]}
    if not hf:
        return fns, meta, info
    def hf_instance() -> Any:
        out = EomtForUniversalSegmentationOutput(masks_queries_logits=mask_logits, class_queries_logits=cls_logits)
        return processor.post_process_instance_segmentation(out, target_sizes=[orig] * b)

    fns["hf postprocess"] = hf_post
    fns["hf instance postprocess"] = hf_instance
    meta["hf postprocess"] = {"section": "postprocess", "impl": "hf"}
    meta["hf instance postprocess"] = {"section": "postprocess", "impl": "hf"}
    # Agreement: our ids start at 1 (0 = void); transformers' at 0 (-1 = void), both in query order.
    ours_seg = ours_post()[0].segmentation
    hf_seg = hf_post()[0]["segmentation"].long() + 1
    info["segments_ours"] = len(ours_post()[0].segments)
    info["segments_hf"] = len(hf_post()[0]["segments_info"])
    info["pixel_agreement"] = round(float((ours_seg == hf_seg).float().mean()), 6)
    return fns, meta, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup(args)
    cfg = common.build_config(args.preset, args.img_size)
    model = common.build_model(cfg, attn_mask_probs=0.0)
    hf = None if args.no_hf else common.hf_twin(model, attn_mask_probs=0.0)
    x = torch.rand(args.batch, 3, *cfg.img_size, generator=torch.Generator().manual_seed(args.seed))
    record: dict[str, Any] = {
        "script": "benchmarks/inference.py",
        "command": "python " + " ".join(["benchmarks/inference.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment_info("cpu", args.precisions),
        "settings": {"preset": args.preset, "img_size": list(cfg.img_size), "batch": args.batch,
                     "warmup": args.warmup, "iters": args.iters, "attn_mask_probs": 0.0,
                     "num_queries": cfg.num_queries, "num_classes": cfg.num_classes},
    }
    if hf is not None:
        import transformers

        record["environment"]["transformers"] = transformers.__version__
        with torch.inference_mode():
            ours_out, hf_out = model(x), hf(pixel_values=common.normalize(x))
        record["parity_fp32_max_abs_diff"] = {
            "mask_logits": float((ours_out.mask_logits - hf_out.masks_queries_logits).abs().max()),
            "class_logits": float((ours_out.class_logits - hf_out.class_queries_logits).abs().max()),
        }
    fns, meta = network_fns(args, model, hf, x)
    record["precision_vs_fp32"] = precision_errors(fns, meta, model, x)
    if not args.no_postprocess:
        pfns, pmeta, record["postprocess"] = postprocess_fns(args, cfg, fns, meta)
        fns.update(pfns)
        meta.update(pmeta)
    compile_s: dict[str, float] = {}
    for name, fn in fns.items():  # first call: compilation for compiled rows, and a sanity run
        t0 = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - t0
    stats = time_round_robin(fns, warmup=args.warmup, iters=args.iters)
    rows = []
    for name, s in stats.items():
        row = {"name": name, **meta[name], **s.to_dict(), "first_call_s": round(compile_s[name], 2),
               "images_per_s": round(args.batch / (s.median_ms / 1e3), 3)}
        rows.append(row)
    record["rows"] = rows
    record["ratios"] = ratios({r["name"]: r["median_ms"] for r in rows}, args)
    if args.profile:
        record["profile"] = {}
        for name in [n for n in fns if meta[n]["section"] == "network" and meta[n]["mode"] == "eager"]:
            record["profile"][name] = common.profile_top_ops(fns[name])
    print(common.format_table(rows, [("name", "row"), ("median_ms", "median ms"), ("p90_ms", "p90 ms"),
                                     ("min_ms", "min ms"), ("images_per_s", "img/s"),
                                     ("first_call_s", "first call s")]))
    print()
    for key, value in record["ratios"].items():
        target = TARGETS.get(key)
        verdict = "" if target is None else f"  (target <= {target}: {'met' if value <= target else 'NOT met'})"
        print(f"{key}: {value:.3f}{verdict}")
    if "postprocess" in record:
        print(f"postprocess: {record['postprocess']}")
    for name, ops in record.get("profile", {}).items():
        print(f"\nprofile {name}:")
        print(common.format_table(ops, [("op", "op"), ("self_ms_per_call", "self ms"), ("share", "share"), ("calls", "calls")]))
    path = common.write_json(args.json or common.default_json("inference", args.preset), record)
    print(f"\nwrote {path}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
