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

--device cuda (or cuda:N) runs both implementations on that GPU (transformers in fp32 and bf16 by
default), synchronises the queue around every timed call, records each row's peak CUDA memory, and
for the presets with GPU targets (`gpu_targets.py`) adds the target rows and a verdict table.
A DINOv3 preset (`..._dinov3`, or `tiny_dinov3`) compares with `EomtDinov3ForUniversalSegmentation`.

    python benchmarks/inference.py --preset coco_panoptic_eomt_small_640 --precisions fp32,bf16
    python benchmarks/inference.py --device cuda --preset coco_panoptic_eomt_large_640 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any, Callable

import torch

import common
import gpu_targets
from inference_report import precision_errors, ratios, report
from eomt.benchmark import PeakMemory, environment_info, time_round_robin


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--precisions", default="fp32,bf16,bf16-autocast",
                   help=f"our precisions, comma-separated from {', '.join(common.PRECISIONS)}")
    p.add_argument("--hf-precisions", default=None,
                   help="transformers' precisions (default: fp32; fp32,bf16 on CUDA)")
    p.add_argument("--modes", default="eager", help="eager and/or compile, comma-separated (default: eager)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--no-postprocess", action="store_true", help="skip the post-processing rows")
    p.add_argument("--original-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                   help="image size the post-processing restores (default: 480 640)")
    p.add_argument("--confident", type=float, default=0.5,
                   help="fraction of queries whose class score passes 0.8 (default: 0.5)")
    p.add_argument("--profile", action="store_true", help="record torch.profiler top ops of the eager forwards")
    p.add_argument("--no-targets", action="store_true", help="skip the GPU target rows on CUDA")
    args = p.parse_args(argv)
    if args.hf_precisions is None:
        args.hf_precisions = "fp32,bf16" if args.device.startswith("cuda") else "fp32"
    return args


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
                    with torch.inference_mode(), prec.context(x.device.type):
                        return fn()

                name = f"{impl} {prec_name} {mode}"
                fns[name] = run
                meta[name] = {"section": "network", "impl": impl, "precision": prec_name, "mode": mode}
    return fns, meta


def postprocess_fns(args: argparse.Namespace, cfg: Any, net_fns: dict, net_meta: dict,
                    device: torch.device) -> tuple[dict, dict, dict]:
    """Post-processing rows, end-to-end rows (every eager network row + its post-processing), and a
    check that ours and transformers agree; all on `device`."""
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
    cls_logits = common.crafted_class_logits(b, q, cfg.num_classes, args.confident, gen).to(device)
    mask_logits = common.crafted_mask_logits(b, q, (h // 4, w // 4), gen).to(device)
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

        def hf_instance() -> Any:
            out = EomtForUniversalSegmentationOutput(masks_queries_logits=mask_logits, class_queries_logits=cls_logits)
            return processor.post_process_instance_segmentation(out, target_sizes=[orig] * b)

        # Agreement: our ids start at 1 (0 = void); transformers' at 0 (-1 = void), both in query order.
        try:
            hf_first = hf_post()[0]
            hf_instance()
        except Exception as e:  # noqa: BLE001 -- off the CPU, a processor that cannot run there is a row skipped
            if device.type == "cpu":
                raise
            info["hf_postprocess_skipped"] = f"{type(e).__name__}: {e}"
            hf = False
    if hf:
        ours_first = ours_post()[0]
        info["segments_ours"], info["segments_hf"] = len(ours_first.segments), len(hf_first["segments_info"])
        hf_seg = hf_first["segmentation"].to(device).long() + 1
        info["pixel_agreement"] = round(float((ours_first.segmentation == hf_seg).float().mean()), 6)

    crafted: dict[torch.dtype, torch.Tensor] = {}
    for name, m in net_meta.items():
        if m["mode"] != "eager" or (m["impl"] == "hf" and not hf):
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
    fns["hf postprocess"] = hf_post
    fns["hf instance postprocess"] = hf_instance
    meta["hf postprocess"] = {"section": "postprocess", "impl": "hf"}
    meta["hf instance postprocess"] = {"section": "postprocess", "impl": "hf"}
    return fns, meta, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.setup(args, "benchmarks/inference.py")
    cfg = common.build_config(args.preset, args.img_size)
    model = common.build_model(cfg, attn_mask_probs=0.0)
    hf = None if args.no_hf else common.hf_twin(model, attn_mask_probs=0.0).to(device)
    model.to(device)
    x = torch.rand(args.batch, 3, *cfg.img_size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    record: dict[str, Any] = {
        "script": "benchmarks/inference.py",
        "command": "python " + " ".join(["benchmarks/inference.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment_info(device, args.precisions),
        "settings": {"preset": args.preset, "img_size": list(cfg.img_size), "batch": args.batch,
                     "warmup": args.warmup, "iters": args.iters, "attn_mask_probs": 0.0,
                     "num_queries": cfg.num_queries, "num_classes": cfg.num_classes},
    }
    if hf is not None:
        import transformers

        record["environment"]["transformers"] = transformers.__version__
        record["hf_class"] = type(hf).__name__
        with torch.inference_mode():
            ours_out, hf_out = model(x), hf(pixel_values=common.normalize(x))
        record["parity_fp32_max_abs_diff"] = {
            "mask_logits": float((ours_out.mask_logits - hf_out.masks_queries_logits).abs().max()),
            "class_logits": float((ours_out.class_logits - hf_out.class_queries_logits).abs().max()),
        }
    fns, meta = network_fns(args, model, hf, x)
    record["precision_vs_fp32"] = precision_errors(fns, meta, model, x)
    if not args.no_postprocess:
        pfns, pmeta, record["postprocess"] = postprocess_fns(args, cfg, fns, meta, device)
        fns.update(pfns)
        meta.update(pmeta)
    if not args.no_targets and gpu_targets.applies(args.preset, device):
        tfns, tmeta = gpu_targets.inference_fns(model, args.preset, device, args.seed)
        fns.update(tfns)
        meta.update(tmeta)
    compile_s: dict[str, float] = {}
    peak: dict[str, float] = {}
    for name, fn in fns.items():  # first call: compilation for compiled rows, and a sanity run
        t0 = time.perf_counter()
        fn()
        common.synchronize(device)
        compile_s[name] = time.perf_counter() - t0
        if device.type == "cuda":  # exact tensor bytes of one more call (the CPU's RSS is too coarse per row)
            with PeakMemory(device) as pm:
                fn()
            peak[name] = round(pm.total_peak_mb, 1)
    stats = time_round_robin(fns, warmup=args.warmup, iters=args.iters, device=device)
    rows = [{"name": name, **meta[name], **s.to_dict(), "first_call_s": round(compile_s[name], 2),
             "images_per_s": round(meta[name].get("batch", args.batch) / (s.median_ms / 1e3), 3),
             "peak_mb": peak.get(name)} for name, s in stats.items()]
    record["rows"] = rows
    record["ratios"] = ratios({r["name"]: r["median_ms"] for r in rows}, args)
    record["gpu_targets"] = gpu_targets.inference_verdicts(rows)
    if args.profile:
        record["profile"] = {}
        for name in [n for n in fns if meta[n]["section"] == "network" and meta[n]["mode"] == "eager"]:
            record["profile"][name] = common.profile_top_ops(fns[name], device=device)
    report(record, device)
    path = common.write_json(args.json or common.default_json("inference", args.preset), record)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
