"""The built-in demo: train a small EoMT on synthetic scenes, evaluate it, and draw its predictions.

Everything runs on a fresh CPU machine with no downloads: the data are drawn procedurally
(`eomt.data.synthetic`), the network starts from random weights, and the recipe is the paper's
(matching, per-block losses, LLRD, two-stage warm-up, poly decay, mask annealing to zero).
The single panoptic model is measured three ways on held-out scenes: PQ (panoptic
post-processing), mIoU (semantic post-processing) and mask AP (instance post-processing).
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from eomt.config import ExperimentConfig, load_experiment

log = logging.getLogger(__name__)

DEMO_CONFIG = "synthetic/panoptic.yaml"


def demo_config(overrides: list[str] | None = None, out_dir: str | None = None) -> ExperimentConfig:
    """The demo's experiment (configs/synthetic/panoptic.yaml) with overrides applied."""
    path = _config_path()
    extra = [f"train.out_dir={out_dir}"] if out_dir else []
    return load_experiment(str(path), [*extra, *(overrides or [])])


def _config_path() -> Path:
    # The configs are package data (src/eomt/configs), in a checkout and in an installed wheel alike.
    return Path(str(resources.files("eomt") / "configs" / DEMO_CONFIG))


def evaluate_all_tasks(network: Any, dataset: Any, batch_size: int = 8, progress: bool = False) -> dict[str, float]:
    """PQ, mIoU and AP of one panoptic network on `dataset` (image, panoptic Target) pairs.

    One pass of the shared evaluation loop (`eomt.evaluation.loop`) with three tasks: panoptic and
    semantic post-processing against the whole targets, instance post-processing against their
    thing segments. Returns the scalar metrics of all three, in percent.
    """
    from eomt.evaluation import EvalTask, build_evaluator, evaluate
    from eomt.evaluation.loop import dataset_batches, num_batches, scalar_metrics, thing_targets
    from eomt.images import to_chw
    from eomt.inference.predictor import Predictor

    cfg = network.config
    tasks = [
        EvalTask(task, Predictor(network, task=task).predict_tensors, build_evaluator(cfg, task),
                 thing_targets(cfg.stuff_classes) if task == "instance" else None)
        for task in ("panoptic", "semantic", "instance")
    ]
    metrics = evaluate(dataset_batches(dataset, batch_size, to_chw), tasks,
                       total=num_batches(dataset, batch_size), progress=progress)
    out: dict[str, float] = {}
    for task in tasks:
        out.update(scalar_metrics(metrics[task.name]))
    return out


# The demo's scenes are small (128 px): each panel is enlarged (nearest, whole factors) to at least
# this longer side, so that shapes, outlines and the legend are large enough to judge.
PANEL_SIZE = 512


def ground_truth_result(target: Any, stuff_classes: Any) -> Any:
    """A `PanopticResult` of a target's segments (mask j -> segment id j + 1), for drawing."""
    from eomt.structures import PanopticResult

    masks = target.masks.cpu()  # (N, H, W) bool
    segmentation = torch.zeros(masks.shape[-2:], dtype=torch.long)
    segments = []
    for j, (mask, label) in enumerate(zip(masks, target.labels.tolist())):
        segmentation[mask] = j + 1
        segments.append({"id": j + 1, "category_id": int(label), "isthing": int(label) not in stuff_classes,
                         "score": 1.0, "area": int(mask.sum())})
    return PanopticResult(segmentation, segments)


def side_by_side(image: torch.Tensor, truth: Any, prediction: Any, class_names: Any) -> Any:
    """One picture: the input, the ground truth and the prediction (each overlay with its legend),
    enlarged to `PANEL_SIZE` and titled."""
    from PIL import Image, ImageDraw

    from eomt.inference.visualize import legend_font, overlay

    factor = max(1, -(-PANEL_SIZE // max(image.shape[-2:])))  # ceil

    def big(x: torch.Tensor) -> torch.Tensor:  # (..., H, W) -> (..., H*f, W*f), nearest
        return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)

    def enlarged(result: Any) -> Any:
        return type(result)(big(result.segmentation), result.segments)

    image = big(image)
    panels = [
        ("input", Image.fromarray(image.permute(1, 2, 0).cpu().numpy())),
        ("ground truth", overlay(image, enlarged(truth), class_names=class_names)),
        ("prediction", overlay(image, enlarged(prediction), class_names=class_names)),
    ]
    h = image.shape[-2]
    font = legend_font(h, image.shape[-1])
    title = int(font.getbbox("Ag")[3] * 1.6)
    gap = max(4, h // 64)
    canvas = Image.new("RGB", (sum(p.width for _, p in panels) + gap * (len(panels) - 1),
                               title + max(p.height for _, p in panels)), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, panel in panels:
        draw.text((x + gap, title // 5), name, fill=(235, 235, 235), font=font)
        canvas.paste(panel, (x, title))
        x += panel.width + gap
    return canvas


def draw_predictions(network: Any, dataset: Any, out_dir: Path, count: int = 6) -> list[Path]:
    """`scene<i>_overlay.png` for the first `count` scenes of `dataset`: input, ground truth and
    panoptic prediction side by side (`side_by_side`)."""
    from eomt.images import to_chw
    from eomt.inference.io import write_png
    from eomt.inference.predictor import Predictor

    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(network, task="panoptic")
    stuff = set(network.config.stuff_classes)
    written = []
    for i in range(min(count, len(dataset))):
        array, target = dataset[i]
        image = to_chw(array)
        result = predictor.predict_tensors([image])[0]
        picture = side_by_side(image, ground_truth_result(target, stuff), result, network.config.class_names)
        written.append(write_png(out_dir / f"scene{i:03d}_overlay.png", picture))
    return written


def run_demo(overrides: list[str] | None = None, out_dir: str = "runs/demo", progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and predict; returns the report (also written as report.json / report.md)."""
    from eomt.training.data_module import EoMTDataModule
    from eomt.files import UNDEFINED_METRIC, write_json
    from eomt.models import unwrap_compiled
    from eomt.files import write_atomic
    from eomt.training.run import train

    cfg = demo_config(overrides, out_dir)
    out = Path(cfg.train.out_dir)
    start = time.perf_counter()
    module = train(cfg, resume="auto", progress=progress)
    train_s = time.perf_counter() - start
    network = unwrap_compiled(module.network).cpu().eval()
    probs = network.attn_mask_probs.tolist()
    data = EoMTDataModule(cfg.data, cfg.model, seed=cfg.train.seed)
    held_out = data.build(cfg.data.val_split)
    start = time.perf_counter()
    metrics = evaluate_all_tasks(network, held_out, progress=progress)
    eval_s = time.perf_counter() - start
    pictures = draw_predictions(network, held_out, out / "predictions")
    report = {
        "metrics": metrics,
        "held_out_images": len(held_out),
        "train_steps": module.total_steps,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "attn_mask_probs_at_end": probs,
        "masked_attention_at_eval": network.masked_attention_active,
        "model": str(out / "model.safetensors"),
        "pictures": [str(p) for p in pictures],
        "threads": torch.get_num_threads(),
    }
    write_json(out / "report.json", report, indent=2, reason=UNDEFINED_METRIC)
    write_atomic(out / "report.md", format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [
        "# EoMT demo: synthetic scenes",
        "",
        f"Held-out scenes: {report['held_out_images']}; training: {report['train_steps']} steps in "
        f"{report['train_seconds']} s; masked attention at evaluation: {report['masked_attention_at_eval']} "
        f"(final attn_mask_probs {report['attn_mask_probs_at_end']}).",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "miou", "ap", "ap50", "ap75"):
        if key in m:
            lines.append(f"| {key} | {m[key]:.1f} |")
    lines += ["", "Predictions: " + ", ".join(Path(p).name for p in report["pictures"]), ""]
    return "\n".join(lines)
