"""Per-frame cost of VidEoMT's query propagation: the streaming path vs the image model.

VidEoMT adds one D x D linear per frame (query propagation) to the image network; a video is run
frame by frame with `VidEoMT.step` (streaming, the state carried between calls) or a clip at once
(`forward`, the first blocks batched over the frames). Timed in turns on the same weights:

- image: the image EoMT on one frame (B, 3, H, W), as `Predictor` runs a video frame by frame;
- stream: `VidEoMT.step` on the same frame with the previous frame's state;
- clip/T: `VidEoMT.forward` on a clip of T frames, divided by T.

The issue's target: streaming costs at most 5 % over the image model.

    python benchmarks/video.py --preset coco_panoptic_eomt_small_640 --iters 10
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common
import torch

from eomt.benchmark import environment_info
from eomt.benchmark.timing import time_round_robin
from eomt.models import VidEoMT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--frames", type=int, default=5, help="frames of the clip call (default: 5, the official T)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.setup(args, "video")
    cfg = common.build_config(args.preset, tuple(args.img_size) if args.img_size else None)
    image = common.build_model(cfg, 0.0).to(device)
    video = VidEoMT.from_image(image).to(device).eval()
    h, w = cfg.img_size
    frame = torch.rand(args.batch, 3, h, w, device=device)
    clip = torch.rand(args.batch, args.frames, 3, h, w, device=device)
    state = {"s": video.init_state()}

    def stream() -> Any:
        out, state["s"] = video.step(frame, state["s"])
        return out

    with torch.no_grad():
        video.step(frame)  # the first frame has no state to propagate: time the steady state
        state["s"] = video.step(frame)[1]
        times = time_round_robin({
            "image": lambda: image(frame),
            "stream": stream,
            "clip": lambda: video(clip),
        }, warmup=args.warmup, iters=args.iters, device=device)
    base = times["image"].median_ms
    rows = [
        {"path": "image model, one frame", "ms_per_frame": round(base, 2), "ratio": 1.0},
        {"path": "VidEoMT.step (streaming)", "ms_per_frame": round(times["stream"].median_ms, 2),
         "ratio": round(times["stream"].median_ms / base, 3)},
        {"path": f"VidEoMT clip of {args.frames} / {args.frames}",
         "ms_per_frame": round(times["clip"].median_ms / args.frames, 2),
         "ratio": round(times["clip"].median_ms / args.frames / base, 3)},
    ]
    print(common.format_table(rows, [("path", "path"), ("ms_per_frame", "ms / frame (median)"),
                                     ("ratio", "x image model")]))
    print(f"\n{args.preset} at {h}x{w}, batch {args.batch}, fp32, {device}; target: streaming <= 1.05x")
    record = {
        "script": "benchmarks/video.py",
        "command": "python " + " ".join(["benchmarks/video.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment_info(device), "preset": args.preset, "img_size": [h, w],
        "batch": args.batch, "frames": args.frames, "rows": rows,
        "timings": {k: v.to_dict() for k, v in times.items()},
    }
    path = common.write_json(args.json or common.default_json("video", args.preset), record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
