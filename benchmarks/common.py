"""Shared pieces of the benchmark scripts: models from presets, the transformers twin, precisions,
crafted outputs, tables and JSON.

Run the scripts from the repository root, e.g. `python benchmarks/inference.py --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from eomt import EoMT
from eomt.config import ModelConfig, preset, tiny_config
from eomt.config import precision as precision_table

log = logging.getLogger("benchmarks")

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_common_args(p: argparse.ArgumentParser, default_preset: str = "coco_panoptic_eomt_small_640") -> None:
    p.add_argument("--preset", default=default_preset,
                   help=f"model preset (random weights), or 'tiny' for a smoke test (default: {default_preset})")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default: the preset's); must be square for the transformers twin")
    p.add_argument("--batch", type=int, default=1, help="images per forward (default: 1)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: both implementations run there (default: cpu)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default: 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default: 10)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None,
                   help="where to write the JSON record (default: benchmarks/results/<script>_<preset>.json)")


def setup(args: argparse.Namespace, script: str) -> torch.device:
    """Logging, threads and seed from the common arguments; returns the checked `--device`.

    A device that is unknown or absent (`cuda` without CUDA) ends the script with one line on
    stderr naming the option and exit status 1, before any model is built.
    """
    from eomt.errors import OptionError
    from eomt.inference.predictor import resolve_device

    try:
        device = resolve_device(args.device)
    except OptionError as e:
        raise SystemExit(f"{script}: error: --{e}") from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queue (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TINY = {"tiny": {}, "tiny_dinov3": {"backbone": "dinov3", "layer_norm_eps": 1e-5}}  # test configs


def build_config(name: str, img_size: tuple[int, int] | None = None) -> ModelConfig:
    """A preset's `ModelConfig` ('tiny' / 'tiny_dinov3' = the test configs), optionally at another
    input size."""
    cfg = tiny_config(**TINY[name]) if name in TINY else preset(name)
    return cfg.replace(img_size=tuple(img_size)) if img_size else cfg


def build_model(cfg: ModelConfig, attn_mask_probs: float = 0.0) -> EoMT:
    """A randomly initialised EoMT in eval mode with every `attn_mask_probs` set to one value.

    The LayerScale factors (DINOv2 `ls*.gamma`, DINOv3 `layer_scale*.lambda1`) are set to 1 (as in
    a trained backbone) instead of the 1e-5 initialisation, so that the blocks are not
    near-identities and every op sees realistic magnitudes.
    """
    model = EoMT(cfg).eval()
    model.set_attn_mask_probs([attn_mask_probs] * cfg.num_blocks)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma", "layer_scale1.lambda1", "layer_scale2.lambda1")):
                p.fill_(1.0)
    return model


def hf_twin(model: EoMT, attn_mask_probs: float | None = None) -> nn.Module:
    """transformers' `EomtForUniversalSegmentation` (`EomtDinov3ForUniversalSegmentation` for a
    DINOv3 backbone) with the same weights, via `save_transformers`, on the model's device.

    Its input is ImageNet-normalised pixels (see `normalize`); ours takes [0, 1] images.
    """
    import transformers

    from eomt.checkpoints import save_transformers

    dinov3 = model.config.backbone == "dinov3"
    cls = transformers.EomtDinov3ForUniversalSegmentation if dinov3 else transformers.EomtForUniversalSegmentation
    with tempfile.TemporaryDirectory() as tmp:
        save_transformers(model, tmp)
        hf = cls.from_pretrained(tmp, attn_implementation="sdpa").eval()
    hf = hf.to(next(model.parameters()).device)
    if attn_mask_probs is not None:
        with torch.no_grad():
            hf.attn_mask_probs.fill_(attn_mask_probs)
    return hf


def normalize(images: Tensor) -> Tensor:
    """[0, 1] images (B, 3, H, W) -> ImageNet-normalised pixel values for transformers."""
    return (images - IMAGENET_MEAN.to(images)) / IMAGENET_STD.to(images)


# ---------------------------------------------------------------------------------------------
# Precisions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """How a forward runs: weights/inputs cast to `cast`, and/or under autocast to `autocast`."""

    name: str
    cast: torch.dtype
    autocast: torch.dtype | None

    def context(self, device_type: str = "cpu") -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast)


# The benchmark's names, from the one precision table (eomt.config.precision).
PRECISIONS = {
    p.name: Precision(p.name, p.weights_torch_dtype, p.torch_dtype if p.autocast else None)
    for p in precision_table.TABLE
}


def parse_list(text: str, choices: dict[str, Any] | tuple[str, ...], what: str) -> list[str]:
    """Comma-separated names, each checked against `choices`."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in choices]
    if bad:
        raise SystemExit(f"--{what}: unknown {bad} (expected some of: {', '.join(choices)})")
    return names


# ---------------------------------------------------------------------------------------------
# Crafted network outputs (post-processing workloads)
# ---------------------------------------------------------------------------------------------


def crafted_class_logits(batch: int, queries: int, num_classes: int, confident: float = 0.5,
                         generator: torch.Generator | None = None) -> Tensor:
    """Class logits (B, Q, C+1) where a `confident` fraction of queries scores > 0.8 on a real class.

    The others favour the no-object class, so they are filtered out by the 0.8 threshold.
    """
    logits = torch.randn(batch, queries, num_classes + 1, generator=generator)
    cls = torch.randint(0, num_classes, (batch, queries), generator=generator)
    good = torch.rand(batch, queries, generator=generator) < confident
    # +12 on one logit of ~C unit-normal ones gives a softmax probability well above 0.8.
    boost = torch.where(good, cls, torch.full_like(cls, num_classes))
    logits.scatter_add_(2, boost[..., None], torch.full((batch, queries, 1), 12.0))
    return logits


def crafted_mask_logits(batch: int, queries: int, size: tuple[int, int],
                        generator: torch.Generator | None = None) -> Tensor:
    """Mask logits (B, Q, h, w) that tile the image like a real panoptic output.

    Each query owns the Voronoi cell of a random seed point: its logit is > 0 inside the cell and
    falls off with the distance margin to the nearest other seed (soft, a few pixels wide).
    """
    h, w = size
    seeds = torch.rand(batch, queries, 2, generator=generator)  # (B, Q, 2) in [0, 1]
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    dist = ((ys - seeds[..., 0, None, None]) ** 2 + (xs - seeds[..., 1, None, None]) ** 2).sqrt()  # (B, Q, h, w)
    two, idx = dist.topk(min(2, queries), dim=1, largest=False)  # (B, 2, h, w) nearest two seeds
    nearest_other = torch.where(
        torch.arange(queries).view(1, queries, 1, 1) == idx[:, :1], two[:, -1:], two[:, :1]
    )  # (B, Q, h, w): distance to the closest seed other than q's own
    cell = queries**-0.5  # typical cell radius in image units
    return 8.0 * (nearest_other - dist) / cell


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: `columns` are (key, header) pairs; floats get 3 significant decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return "-" if v is None else str(v)

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(wd) for v, wd in zip(vals, widths))  # noqa: E731
    out = [line([h for _, h in columns]), line(["-" * wd for wd in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def default_json(script: str, preset_name: str) -> Path:
    return RESULTS_DIR / f"{script}_{preset_name}.json"


def profile_top_ops(fn: Callable[[], Any], n: int = 12, runs: int = 2,
                    device: torch.device | None = None) -> list[dict[str, Any]]:
    """torch.profiler self time of `fn` by operator: the top `n`, ms per call and share.

    CPU self time; on a CUDA `device` the kernels' self device time (the queue is drained first).
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device is not None and device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(runs):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {"op": e.key, "self_ms_per_call": round(getattr(e, key) / 1e3 / runs, 2),
         "share": round(getattr(e, key) / total, 3), "calls": e.count // runs}
        for e in events[:n]
    ]


@contextlib.contextmanager
def no_grad_eval(*models: nn.Module) -> Iterator[None]:
    for m in models:
        m.eval()
    with torch.inference_mode():
        yield
