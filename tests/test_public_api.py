"""The public surface the README documents: subpackages after `import eomt`, presets by name."""

from __future__ import annotations

import logging
import subprocess
import sys

import torch

import eomt
from eomt import cli


def test_subpackages_are_reachable_after_import_eomt() -> None:
    # A fresh process: in this one, other tests may already have imported the subpackages.
    code = "import eomt; eomt.checkpoints.save_official; eomt.export.export_model; eomt.inference.Predictor"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_pretrained_takes_a_preset_name_with_one_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        model = eomt.EoMT.from_pretrained("eomt_small_640", num_classes=3, img_size=64)
    assert model.config.name == "coco_panoptic_eomt_small_640" and model.config.num_classes == 3
    assert model.config.img_size == (64, 64) and not model.training
    assert not model.masked_attention_active  # predicts and exports like a trained model
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "random weights" in warned[0]
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 64, 64)).class_logits.shape == (1, 200, 4)


def test_export_takes_a_preset_name(tmp_path, capsys) -> None:
    out = tmp_path / "small.ts"
    rc = cli.main(["export", "--model", "coco_panoptic_eomt_small_640", "--format", "torchscript",
                   "--img-size", "64", "64", "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out


def test_video_and_merging_names_are_reachable_from_eomt() -> None:
    import eomt
    from eomt.checkpoints import load_video_model
    from eomt.inference.video import VideoPredictor
    from eomt.models.merging import TokenMerging
    from eomt.models.video import VidEoMT

    assert (eomt.VidEoMT, eomt.VideoPredictor, eomt.load_video_model, eomt.TokenMerging) == (
        VidEoMT, VideoPredictor, load_video_model, TokenMerging)
    assert {"VidEoMT", "VideoPredictor", "load_video_model", "save_video_model", "TokenMerging"} <= set(eomt.__all__)
