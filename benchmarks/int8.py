"""int8 CPU inference: speed against fp32 and bf16, and agreement with fp32 on a trained model.

Speed (random weights, LayerScale 1): `Predictor(dtype=...)` end to end on a 480x640 image
(preprocess + network + panoptic post-processing) and the network alone at the model's input size,
for int8, bf16 and fp32, all rows timed round-robin in one process. `--onnx` adds the route not
taken: the network exported to ONNX and run by onnxruntime in fp32 and after
`onnxruntime.quantization.quantize_dynamic` (int8 MatMulInteger).

Accuracy (`--model`, default the demo's trained panoptic model): on the held-out synthetic scenes,
the fraction of panoptic pixels whose segment and class agree with fp32 (segment ids aside:
`eomt.inference.quantize.panoptic_agreement`), the semantic label agreement, and PQ / mIoU / AP
of int8 and fp32 (`eomt.demo.evaluate_all_tasks`).

    python benchmarks/int8.py --iters 5 --warmup 1 --network --onnx
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from eomt import Predictor, load_model  # noqa: E402
from eomt.benchmark import environment_info, time_round_robin  # noqa: E402
from eomt.inference.quantize import panoptic_agreement, semantic_agreement, to_int8  # noqa: E402

log = logging.getLogger("benchmarks.int8")
DEMO_MODEL = Path("/tmp/models/demo_panoptic.safetensors")
PRECISIONS = ("int8", "bf16", "fp32")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help=f"Predictor dtypes timed, comma-separated (default: {','.join(PRECISIONS)})")
    p.add_argument("--network", action="store_true", help="also time the network alone for each precision")
    p.add_argument("--onnx", action="store_true", help="also time onnxruntime fp32 and int8 (quantize_dynamic)")
    p.add_argument("--model", type=Path, default=DEMO_MODEL, help=f"trained panoptic model (default: {DEMO_MODEL})")
    p.add_argument("--scenes", type=int, default=100, help="held-out scenes for the accuracy part (default: 100)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    return p.parse_args(argv)


def onnx_rows(model: Any, x: torch.Tensor, folder: Path) -> dict[str, Callable[[], Any]]:
    """Network rows run by onnxruntime: the fp32 export and its dynamic int8 quantisation."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from eomt.export import export_model

    fp32 = export_model(model, folder / "net.onnx", img_size=tuple(x.shape[-2:]))
    int8 = folder / "net_int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    rows = {}
    for name, path in (("onnxruntime fp32 network", fp32), ("onnxruntime int8 network", int8)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        rows[name] = lambda s=session, f=feed: s.run(None, f)
    return rows


def speed(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    cfg = common.build_config(args.preset, args.img_size)
    model = common.build_model(cfg)
    x = torch.rand(args.batch, 3, *cfg.img_size)
    image = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
    fns: dict[str, Callable[[], Any]] = {}
    for dtype in common.parse_list(args.precisions, PRECISIONS, "precisions"):
        predictor = Predictor(model, dtype=dtype)
        fns[f"{dtype} end to end"] = lambda p=predictor: p.predict_tensors([image])
        if args.network:
            fns[f"{dtype} network"] = lambda n=predictor.model, d=dtype: n(x.to(torch.bfloat16) if d == "bf16" else x)
    if args.onnx:
        fns.update(onnx_rows(model, x, folder))
    with torch.inference_mode():
        stats = time_round_robin(fns, warmup=args.warmup, iters=args.iters)
    rows = [{"name": name, **s.to_dict()} for name, s in stats.items()]
    med = {r["name"]: r["median_ms"] for r in rows}
    pairs = [("int8 end to end", "bf16 end to end"), ("int8 end to end", "fp32 end to end"),
             ("bf16 end to end", "fp32 end to end"), ("int8 network", "fp32 network"),
             ("bf16 network", "fp32 network"), ("onnxruntime int8 network", "int8 network"),
             ("onnxruntime int8 network", "onnxruntime fp32 network"), ("onnxruntime fp32 network", "fp32 network")]
    ratios = {f"{a} / {b}": med[a] / med[b] for a, b in pairs if a in med and b in med}
    return {"preset": args.preset, "img_size": list(cfg.img_size), "rows": rows,
            "ratios": {k: round(v, 3) for k, v in ratios.items()}}


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from eomt.demo import demo_config, evaluate_all_tasks
    from eomt.training.data_module import EoMTDataModule

    model = load_model(args.model)
    cfg = demo_config([])
    data = EoMTDataModule(cfg.data, cfg.model, seed=cfg.train.seed)
    data.setup("validate")
    scenes = [data.val_set[i] for i in range(min(args.scenes, len(data.val_set)))]
    images = [image for image, _ in scenes]
    out: dict[str, Any] = {"model": str(args.model), "scenes": len(images)}
    for task, agree in (("panoptic", panoptic_agreement), ("semantic", semantic_agreement)):
        fp32 = Predictor(model, task=task)(images)
        int8 = Predictor(model, task=task, dtype="int8")(images)
        same, total = map(sum, zip(*(agree(a, b) for a, b in zip(int8, fp32))))
        out[f"{task}_pixels_equal_to_fp32"] = round(same / total, 5)
    out["metrics_fp32"] = evaluate_all_tasks(model, scenes)
    out["metrics_int8"] = evaluate_all_tasks(to_int8(model), scenes)
    return out


def report(record: dict[str, Any]) -> None:
    if "speed" in record:
        s = record["speed"]
        print(f"\n{s['preset']} at {s['img_size']}, batch 1 (end to end: a 480x640 image), round-robin:")
        print(common.format_table(s["rows"], [("name", "row"), ("median_ms", "median ms"), ("min_ms", "min ms"),
                                              ("p90_ms", "p90 ms")]))
        print(common.format_table([{"ratio": k, "value": v} for k, v in s["ratios"].items()],
                                  [("ratio", "ratio (medians)"), ("value", "value")]))
    if "accuracy" in record:
        a = record["accuracy"]
        print(f"\nint8 against fp32, {a['scenes']} held-out scenes, {a['model']}:")
        rows = [{"what": f"{task} pixels equal to fp32", "value": f"{100 * a[f'{task}_pixels_equal_to_fp32']:.2f} %"}
                for task in ("panoptic", "semantic")]
        for key, name in (("pq", "PQ"), ("miou", "mIoU"), ("ap", "AP")):
            rows.append({"what": f"{name} fp32 -> int8",
                         "value": f"{a['metrics_fp32'][key]:.2f} -> {a['metrics_int8'][key]:.2f}"})
        print(common.format_table(rows, [("what", "measure"), ("value", "value")]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup(args, "int8.py")
    record: dict[str, Any] = {"environment": environment_info("cpu", "int8,bf16,fp32"),
                              "settings": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_speed:
            record["speed"] = speed(args, Path(folder))
    if not args.skip_accuracy:
        record["accuracy"] = accuracy(args)
    report(record)
    path = common.write_json(args.json or common.default_json("int8", args.preset), record)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
