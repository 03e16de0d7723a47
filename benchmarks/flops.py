"""FLOPs of every preset at its input size, next to the paper's GFLOPs and transformers' count.

Counted with torch.utils.flop_counter on a meta-device model (no memory, no compute), batch 1,
for the annealed network (attn_mask_probs = 0) and with masked attention (= 1, "EoMT w/ Masking").
The paper's "GFLOPs" are fvcore counts, i.e. multiply-adds: compare them with the GMACs column.
The transformers column counts `EomtForUniversalSegmentation` (DINOv3 rows:
`EomtDinov3ForUniversalSegmentation`) of the same config the same way (`--no-hf` skips it).

    python benchmarks/flops.py
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common
from eomt.benchmark import count_flops, environment_info, meta_model
from eomt.config import PRESET_NAMES

# Paper GFLOPs (fvcore) per preset: (annealed, with masking or None). Tables 3, 4, 5, 6.
PAPER_GFLOPS: dict[str, tuple[float, float | None]] = {
    "coco_panoptic_eomt_small_640": (68, 89),
    "coco_panoptic_eomt_base_640": (216, 286),
    "coco_panoptic_eomt_large_640": (669, 828),
    "coco_panoptic_eomt_large_1280": (4146, None),
    "coco_panoptic_eomt_giant_640": (2261, 2689),
    "coco_panoptic_eomt_giant_1280": (12712, None),
    "coco_instance_eomt_large_640": (669, None),
    "coco_instance_eomt_large_1280": (4146, None),
    "ade20k_panoptic_eomt_large_640": (669, None),
    "ade20k_panoptic_eomt_large_1280": (4146, None),
    "ade20k_panoptic_eomt_giant_640": (2261, None),
    "ade20k_panoptic_eomt_giant_1280": (12712, None),
    # Semantic rows are per image with windowed inference (several crops); ours is one crop.
    "ade20k_semantic_eomt_large_512": (721, None),
    "cityscapes_semantic_eomt_large_1024": (4350, None),
}
# Crops per image of the windowed semantic rows: Cityscapes 1024x2048 -> 2 crops of 1024^2.
# ADE20K images vary (shorter side 512, about 1-2 crops), so no fixed count is applied there.
WINDOWS = {"cityscapes_semantic_eomt_large_1024": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="all", help="comma-separated preset names, 'all', or 'tiny'")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers column")
    p.add_argument("--json", default=None, help="JSON path (default: benchmarks/results/flops.json)")
    return p.parse_args(argv)


def transformers_gmacs(cfg: Any, shape: tuple[int, ...]) -> float | None:
    """GMACs of transformers' EoMT (DINOv3: EoMT-DINOv3) with `cfg`, annealed, counted on the meta
    device like ours; None when transformers is not installed."""
    try:
        import torch
        import transformers
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    from eomt.checkpoints.hf import config_to_hf

    dinov3 = cfg.backbone == "dinov3"
    fields = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type")}
    config = (transformers.EomtDinov3Config if dinov3 else transformers.EomtConfig)(**fields)
    with torch.device("meta"):
        model = (transformers.EomtDinov3ForUniversalSegmentation if dinov3
                 else transformers.EomtForUniversalSegmentation)(config).eval()
    # As `meta_model`: the probabilities decide the control flow on the host, so they are real.
    model.load_state_dict({"attn_mask_probs": torch.zeros(cfg.num_blocks)}, strict=False, assign=True)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixel_values=torch.zeros(shape, device="meta"))
    return counter.get_total_flops() / 2e9


def measure(name: str, batch: int, hf: bool = True) -> dict[str, Any]:
    cfg = common.build_config(name)
    shape = (batch, 3, *cfg.img_size)
    plain = count_flops(meta_model(cfg, 0.0), shape)
    masked = count_flops(meta_model(cfg, 1.0), shape)
    windows = WINDOWS.get(name, 1)
    paper, paper_masked = PAPER_GFLOPS.get(name, (None, None))
    per_image = plain.gmacs * windows / batch
    theirs = transformers_gmacs(cfg, shape) if hf and cfg.img_size[0] == cfg.img_size[1] else None
    return {
        "preset": name, "img_size": "x".join(map(str, cfg.img_size)), "windows": windows,
        "gflops": round(plain.gflops / batch, 1), "gmacs": round(per_image, 1),
        "paper_gflops": paper, "ratio": round(per_image / paper, 3) if paper else None,
        "gmacs_masked": round(masked.gmacs * windows / batch, 1), "paper_masked": paper_masked,
        "hf_gmacs": round(theirs * windows / batch, 1) if theirs is not None else None,
        "by_op_gmacs": {k: round(v / 2e9 / batch, 1) for k, v in plain.by_op.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(PRESET_NAMES) if args.presets == "all" else [n.strip() for n in args.presets.split(",")]
    rows = [measure(n, args.batch, hf=not args.no_hf) for n in names]
    print(common.format_table(rows, [
        ("preset", "preset"), ("img_size", "input"), ("windows", "crops"), ("gflops", "GFLOPs (2/MAC)"),
        ("gmacs", "GMACs"), ("paper_gflops", "paper"), ("ratio", "GMACs/paper"),
        ("gmacs_masked", "GMACs w/ masking"), ("paper_masked", "paper w/ masking"),
        ("hf_gmacs", "transformers GMACs"),
    ]))
    print("\nGMACs are per image (x crops for windowed semantic rows); the paper's GFLOPs are fvcore"
          " counts (1 per multiply-add). ADE20K semantic: the paper averages over images with 1-2 crops.")
    record = {
        "script": "benchmarks/flops.py",
        "command": "python " + " ".join(["benchmarks/flops.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment_info("cpu"), "batch": args.batch, "rows": rows,
    }
    path = common.write_json(common.Path(args.json) if args.json else common.RESULTS_DIR / "flops.json", record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
