"""Does a VidEoMT track? Video AP and identity switches on held-out synthetic videos.

The videos are `eomt.data.video_synthetic.SyntheticVideos` (instance task, whole videos, a seed
that training does not use: training draws its videos from the seed of `data.train_split`). Each
row is one way of giving the objects of a video their identities, scored by
`eomt.evaluation.video.VideoInstanceEvaluator` (YouTube-VIS video AP / AP50 / AP75, identity
switches and the object-frames matched, both counted on the tracks scoring >= 0.5):

- VidEoMT <checkpoint>: the video model on the whole video, query index = identity, tracks by the
  official YouTube-VIS rule (`clip_instances`: class logits averaged over the frames, top 10);
- image model, query index: the image model it started from, run per frame (the same rule: the
  query index is its only notion of identity);
- image model + IoU linking: the image model's per-frame instances (top 10 per frame, those
  scoring >= --link-threshold) linked frame to frame by `eomt.inference.tracks.MaskLinker`, what
  `eomt predict` does for an image model; a track's score is the mean of its frames' scores.

    python benchmarks/video_tracking.py --image demo_panoptic.safetensors \\
        --checkpoints runs/synthetic_video/model.safetensors --videos 100

A checkpoint may also be a Lightning `.ckpt` of a video run (its `network.*` weights are put into
a VidEoMT made from --image).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import common
import torch
from torch import Tensor
from tqdm import tqdm

from eomt.benchmark import environment_info
from eomt.checkpoints import load_model, load_video_model
from eomt.data.video_synthetic import SyntheticVideos
from eomt.errors import EomtError
from eomt.evaluation.video import VideoInstanceEvaluator, VideoInstanceResult, clip_instances
from eomt.inference.postprocess.instance_rule import instance
from eomt.inference.tracks import MaskLinker
from eomt.models import EoMT, VidEoMT
from eomt.structures import ImageMeta

METRICS = ("ap", "ap50", "ap75", "ar10", "id_switches", "matched_frames")
TOP_K = 10  # tracks per video (the official YouTube-VIS rule) and instances per frame


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", required=True, help="the image EoMT checkpoint the VidEoMT(s) started from")
    p.add_argument("--checkpoints", nargs="*", default=[],
                   help="VidEoMT checkpoints (model.safetensors or a run's .ckpt), one row each")
    p.add_argument("--without-propagation", action="store_true",
                   help="also each checkpoint with its query_updater zeroed: every frame starts from the learned "
                        "queries (the trained weights as an image model, query index = identity)")
    p.add_argument("--videos", type=int, default=100, help="held-out videos (default: 100)")
    p.add_argument("--video-length", type=int, default=12, help="frames per video (default: 12, as training's)")
    p.add_argument("--max-things", type=int, default=3,
                   help="most moving shapes per video (default: 3, as training's); more makes same-class pairs "
                        "and occlusions common")
    p.add_argument("--data-seed", type=int, default=12345, help="seed of the videos (default: 12345)")
    p.add_argument("--link-threshold", type=float, default=0.5,
                   help="score a per-frame instance needs to be linked (default: 0.5, `eomt predict`'s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0,
                   help="torch seed (an image checkpoint given as a VidEoMT gets a fresh, random propagation layer)")
    p.add_argument("--json", type=Path, default=common.RESULTS_DIR / "video_tracking.json")
    return p.parse_args(argv)


def load_videomt(path: str, image: str) -> VidEoMT:
    """A VidEoMT from a video checkpoint, or from a Lightning `.ckpt` of a video run (on `image`'s shape)."""
    if not path.endswith(".ckpt"):
        return load_video_model(path).eval()
    model = load_video_model(image)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")})
    return model.eval()


def videomt_tracks(model: VidEoMT) -> Callable[[Tensor], VideoInstanceResult]:
    """Whole video (T, 3, H, W) -> the VidEoMT's tracks (query index = identity)."""
    def run(video: Tensor) -> VideoInstanceResult:
        out = model(video[None])  # one clip of T frames: (1, T, K, C+1), (1, T, K, h, w)
        return clip_instances(out.class_logits[0], out.mask_logits[0], tuple(video.shape[-2:]), TOP_K)
    return run


def query_index_tracks(model: EoMT) -> Callable[[Tensor], VideoInstanceResult]:
    """Video (T, 3, H, W) -> the image model's per-frame predictions, query index = identity."""
    def run(video: Tensor) -> VideoInstanceResult:
        out = model(video)  # the T frames as a batch: (T, K, C+1), (T, K, h, w)
        return clip_instances(out.class_logits, out.mask_logits, tuple(video.shape[-2:]), TOP_K)
    return run


def linked_tracks(model: EoMT, threshold: float) -> Callable[[Tensor], VideoInstanceResult]:
    """Video (T, 3, H, W) -> tracks of the image model's per-frame instances linked by `MaskLinker`."""
    stuff = list(model.config.stuff_classes)

    def run(video: Tensor) -> VideoInstanceResult:
        t, _, h, w = video.shape
        out = model(video)
        metas = [ImageMeta((h, w), (h, w), (h, w))] * t
        linker, tracks = MaskLinker(), {}  # id -> (label, [(frame, mask, score)])
        for f, res in enumerate(instance(out.mask_logits, out.class_logits, metas, TOP_K, stuff_classes=stuff)):
            keep = res.scores >= threshold
            for i, tid in enumerate(linker.update(res, keep)):
                if tid is not None:
                    tracks.setdefault(tid, (int(res.labels[i]), []))[1].append((f, res.masks[i], float(res.scores[i])))
        masks = torch.zeros(len(tracks), t, h, w, dtype=torch.bool)
        for d, (_, seen) in enumerate(tracks.values()):
            for f, m, _ in seen:
                masks[d, f] = m
        return VideoInstanceResult(
            masks, torch.tensor([lab for lab, _ in tracks.values()], dtype=torch.long),
            torch.tensor([sum(s for *_, s in seen) / len(seen) for _, seen in tracks.values()]),
            torch.tensor(list(tracks), dtype=torch.long),
        )
    return run


def evaluate(name: str, tracker: Callable[[Tensor], VideoInstanceResult], data: SyntheticVideos,
             num_classes: int) -> dict[str, Any]:
    """One row: `tracker` on every video of `data`, scored; with the seconds it took."""
    ev = VideoInstanceEvaluator(num_classes)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in tqdm(range(len(data)), desc=name, unit="video", file=sys.stderr, leave=False):
            video, target = data.video(i)
            ev.update([tracker(video)], [target])
    m = ev.compute()
    return {"tracker": name, **{k: m[k] for k in METRICS}, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        image = load_model(args.image).eval()
        videos = {path: load_videomt(path, args.image) for path in args.checkpoints}
    except (EomtError, OSError, KeyError) as e:  # a missing or unreadable file, a .ckpt without state_dict
        raise SystemExit(f"video_tracking: error: {e}") from None
    image.set_attn_mask_probs([0.0] * image.config.num_blocks)  # no masked attention, as VidEoMT
    cfg = image.config
    data = SyntheticVideos(args.videos, size=cfg.img_size, video_length=args.video_length, clip_length=None,
                           seed=args.data_seed, task="instance", max_things=args.max_things)
    rows = []
    for path, model in videos.items():
        rows.append(evaluate(f"VidEoMT {path}", videomt_tracks(model), data, cfg.num_classes))
        if args.without_propagation:
            with torch.no_grad():
                model.query_updater.weight.zero_()
                model.query_updater.bias.zero_()
            rows.append(evaluate("  the same, propagation off", videomt_tracks(model), data, cfg.num_classes))
    rows.append(evaluate("image model, query index", query_index_tracks(image), data, cfg.num_classes))
    rows.append(evaluate(f"image model + IoU linking (>= {args.link_threshold})",
                         linked_tracks(image, args.link_threshold), data, cfg.num_classes))
    print(common.format_table(rows, [("tracker", "tracker"), ("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"),
                                     ("ar10", "AR10"), ("id_switches", "ID switches"),
                                     ("matched_frames", "matched %"), ("seconds", "s")]))
    print(f"\n{args.videos} held-out synthetic videos of {args.video_length} frames at {cfg.img_size[0]}x"
          f"{cfg.img_size[1]} (seed {args.data_seed}); switches and matched object-frames on tracks scoring >= 0.5")
    record = {
        "script": "benchmarks/video_tracking.py",
        "command": "python " + " ".join(["benchmarks/video_tracking.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment_info(torch.device("cpu")), "videos": args.videos,
        "video_length": args.video_length, "max_things": args.max_things, "data_seed": args.data_seed,
        "img_size": list(cfg.img_size),
        "link_threshold": args.link_threshold, "rows": rows,
    }
    path = common.write_json(args.json, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
