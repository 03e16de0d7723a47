"""`eomt convert SRC --to eomt|transformers|official --out PATH`: rewrite a checkpoint in another format."""

from __future__ import annotations

import argparse
from pathlib import Path

CHECKPOINT_LAYOUTS = {
    "eomt": "one safetensors file with the full config (what `eomt predict` reads)",
    "transformers": "a folder for EomtForUniversalSegmentation.from_pretrained (EomtDinov3... for DINOv3)",
    "official": "a tue-mps/eomt state dict (network.* keys), e.g. pytorch_model.bin",
}

from eomt.commands import add_trust_pickle
from eomt.errors import OptionError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="checkpoint file, folder or hub id (owner/name)")
    p.add_argument("--to", required=True, choices=sorted(CHECKPOINT_LAYOUTS), dest="to",
                   help="; ".join(f"{k}: {v}" for k, v in CHECKPOINT_LAYOUTS.items()))
    p.add_argument("--out", required=True, type=Path,
                   help="output file (eomt, official) or folder (transformers; official: pytorch_model.bin in it)")
    p.add_argument("--preset", default=None,
                   help="preset of the source when it cannot be inferred (e.g. eomt_large_640)")
    p.add_argument("--backbone", default=None, metavar="BASE",
                   help="DINOv3 base weights (file, folder or hub id, e.g. facebook/dinov3-vits16-pretrain-lvd1689m) "
                        "that an official DINOv3 release's backbone deltas are added to; detected, never needed otherwise")
    p.add_argument("--img-size", type=int, nargs="+", default=None, metavar="N",
                   help="resample the position embedding to this input size (N or H W)")
    add_trust_pickle(p)


def run(args: argparse.Namespace) -> int:
    from eomt.checkpoints import load_model, save_model, save_official, save_transformers

    img_size = None
    if args.img_size:
        if len(args.img_size) > 2:
            raise OptionError(f"--img-size: expected N or H W, got {len(args.img_size)} numbers")
        img_size = (args.img_size[0], args.img_size[-1])
    model = load_model(args.source, preset=args.preset, img_size=img_size, trust_pickle=args.trust_pickle,
                       backbone=args.backbone)
    out: Path = args.out
    if args.to == "eomt":
        written = save_model(model, out if out.suffix else out.with_suffix(".safetensors"))
    elif args.to == "transformers":
        written = save_transformers(model, out)
    else:
        written = save_official(model, out / "pytorch_model.bin" if out.is_dir() or not out.suffix else out)
    cfg = model.config
    print(f"{args.source} -> {written} ({args.to}; {cfg.name or 'custom config'}, "
          f"{cfg.num_classes} classes, img_size {cfg.img_size[0]}x{cfg.img_size[1]})")
    if args.to == "official":
        from eomt.checkpoints.official import sidecar_path

        print(f"class names, stuff classes and category ids: {sidecar_path(written)} (keep it beside "
              f"{written.name}; the official code reads tensors only)")
    return 0
