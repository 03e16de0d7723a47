"""`eomt export`: write the network (no pre/post-processing) as ONNX, TorchScript or a .pt2 program."""

from __future__ import annotations

import argparse
import logging

from eomt.export import GRAPH_FORMATS

log = logging.getLogger(__name__)

from eomt.commands import add_trust_pickle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SOURCE",
                   help="checkpoint file, transformers folder, hub id or preset name (random weights)")
    p.add_argument("--format", default="onnx", choices=GRAPH_FORMATS, help="output format (default: onnx)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output file; the suffix (.onnx, .ts, .pt2) is added when missing")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="fixed input size of the graph (default: the model's img_size)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default: 1)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.add_argument("--onnx-exporter", default="auto", choices=("auto", "dynamo", "legacy"),
                   help="ONNX exporter: dynamo needs onnxscript; auto picks it when installed")
    p.add_argument("--force-unmasked", action="store_true",
                   help="export a model whose mask annealing is unfinished with masked attention "
                        "switched off (its predictions change); by default such a model is refused")
    add_trust_pickle(p)


def run(args: argparse.Namespace) -> int:
    from eomt.export import export_model
    from eomt.checkpoints import load_pretrained

    # A preset name gives random weights, said in one line (`load_pretrained`).
    model = load_pretrained(args.model, trust_pickle=args.trust_pickle)
    path = export_model(
        model,
        args.out,
        format=args.format,
        img_size=tuple(args.img_size) if args.img_size else None,
        batch=args.batch,
        opset=args.opset,
        force_unmasked=args.force_unmasked,
        onnx_exporter=args.onnx_exporter,
    )
    size = tuple(args.img_size) if args.img_size else tuple(model.config.img_size)
    print(f"wrote {path} ({args.format}, input ({args.batch}, 3, {size[0]}, {size[1]}) float in [0, 1], "
          "outputs mask_logits, class_logits)")
    return 0
