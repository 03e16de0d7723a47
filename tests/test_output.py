"""What a user sees: augmentation without warnings, a quiet ONNX export, overlays and demo pictures
sized for the image (training progress: tests/training/test_progress.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eomt.checkpoints import save_model
from eomt.config import tiny_config
from eomt.data.transforms import TrainTransform
from eomt.inference.visualize import boundaries, legend_font, outline_width, overlay_semantic
from eomt.models import EoMT
from eomt.structures import SemanticResult, Target


def test_a_read_only_image_array_is_augmented_without_a_warning() -> None:
    array = np.asarray(Image.new("RGB", (48, 32), (10, 200, 30)))  # PIL's buffer: read-only
    assert not array.flags.writeable
    target = Target(torch.ones(1, 32, 48, dtype=torch.bool), torch.tensor([1]), torch.tensor([False]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, _ = TrainTransform(img_size=(32, 32), scale_range=(1.0, 1.0), seed=0)(array, target)
    assert image.shape == (3, 32, 32)


def test_onnx_export_prints_a_few_lines(tmp_path: Path) -> None:
    model = EoMT(tiny_config())
    model.set_attn_mask_probs([0.0, 0.0])
    save_model(model, tmp_path / "tiny.safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "export", "--model", str(tmp_path / "tiny.safetensors"),
         "--format", "onnx", "--out", str(tmp_path / "tiny.onnx")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) < 5, "\n".join(lines)


def test_legend_and_outlines_grow_with_the_image() -> None:
    def legend_width(h: int, w: int) -> int:
        labels = torch.zeros(h, w, dtype=torch.long)
        labels[h // 2:] = 1
        picture = overlay_semantic(torch.zeros(3, h, w, dtype=torch.uint8), SemanticResult(labels), ["sky", "ground"])
        return picture.width - w

    assert legend_width(2000, 3000) >= 3 * legend_width(200, 300)
    assert legend_font(4000, 6000).size > 5 * legend_font(300, 400).size
    assert outline_width(300, 400) == 1 and outline_width(4000, 6000) >= 6
    ids = torch.zeros(20, 20, dtype=torch.long)
    ids[:, 10:] = 1
    assert boundaries(ids).sum() == 20 and boundaries(ids, 3).sum() == 60


def test_demo_pictures_show_input_truth_and_prediction_large_enough(tmp_path: Path) -> None:
    from eomt.demo import PANEL_SIZE, draw_predictions

    torch.manual_seed(0)
    model = EoMT(tiny_config(img_size=(64, 64), stuff_classes=(3, 4))).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:] = True, True
    scene = (np.full((64, 64, 3), 90, dtype=np.uint8), Target(masks, torch.tensor([3, 1]), torch.zeros(2, dtype=torch.bool)))
    [path] = draw_predictions(model, [scene], tmp_path)
    assert path.name == "scene000_overlay.png"
    with Image.open(path) as im:
        assert im.height >= PANEL_SIZE and im.width >= 3 * PANEL_SIZE  # three panels side by side
