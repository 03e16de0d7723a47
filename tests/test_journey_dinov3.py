"""The DINOv3 journey, command by command as a user types it: a dataset on disk, `eomt train` from
DINOv3 backbone weights (transformers' `DINOv3ViTModel` folder) with masked attention and annealing,
`eomt eval`, `eomt predict` for every task, `eomt export` to every graph format and `eomt predict`
with the exported files (onnxruntime for ONNX), all as subprocesses. Only the model size and the run
length are overridden (tiny); the backbone is the config's `model.backbone=dinov3`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eomt.checkpoints import load_model
from tests.test_journey import SHORT_RUN, eomt

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

TINY_DINOV3 = [
    "model.backbone=dinov3", "model.layer_norm_eps=1e-5", "model.embed_dim=32", "model.depth=3",
    "model.num_heads=2", "model.num_blocks=2", "model.img_size=[64,64]", "model.num_queries=8",
]


def write_dinov3_folder(path: Path) -> None:
    """Random DINOv3 ViT weights (patch 16, 4 registers), saved by transformers as Meta's hub folders are."""
    config = transformers.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128, patch_size=16,
        num_register_tokens=4, layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    transformers.DINOv3ViTModel(config).save_pretrained(path)


def test_dinov3_from_backbone_weights_to_exported_graphs(tmp_path: Path) -> None:
    data, run, out = tmp_path / "data", tmp_path / "runs" / "d3", tmp_path / "out"
    eomt("data", "synthetic", str(data), "--format", "coco_panoptic_json", "--train", "8", "--val", "4",
         "--size", "64", cwd=tmp_path)
    backbone = tmp_path / "dinov3-vits16"
    write_dinov3_folder(backbone)
    config = "custom/coco_panoptic"
    train = eomt("train", config, f"data.root={data}", f"train.init={backbone}", f"train.out_dir={run}",
                 *TINY_DINOV3, *SHORT_RUN, "train.epochs=2", "--no-progress", cwd=tmp_path)
    assert "DINOv3" in train.stderr  # the init line names what it found
    model = load_model(run / "model.safetensors")
    assert model.config.backbone == "dinov3" and not model.masked_attention_active  # annealed to the end
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())

    metrics = eomt("eval", config, f"data.root={data}", "--checkpoint", str(run / "model.safetensors"),
                   "data.num_workers=0", cwd=tmp_path).stdout
    assert any(line.split()[:1] == ["pq"] for line in metrics.splitlines())

    images = data / "val"
    for task in ("panoptic", "instance", "semantic"):
        eomt("predict", "--model", str(run / "model.safetensors"), "--task", task, str(images),
             "--out", str(out / task), "--threshold", "0", cwd=tmp_path)
        assert len(list((out / task).glob("*_overlay.png"))) == 4

    labels = {png.name: np.asarray(Image.open(png)) for png in (out / "semantic").glob("*_semantic.png")}
    assert len(labels) == 4
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts"), ("exported-program", ".pt2")):
        graph = tmp_path / f"model{suffix}"
        eomt("export", "--model", str(run / "model.safetensors"), "--format", fmt, "--out", str(graph),
             cwd=tmp_path)
        extra = ["--trust-pickle"] if suffix == ".ts" else []
        folder = out / f"exported{suffix}"
        eomt("predict", "--model", str(graph), "--task", "semantic", str(images), "--out", str(folder), *extra,
             cwd=tmp_path)
        # The exported graph predicts the label maps of the checkpoint it came from (float order may
        # flip a near-tie pixel, no more).
        for name, expected in labels.items():
            same = (np.asarray(Image.open(folder / name)) == expected).mean()
            assert same >= 0.999, (suffix, name, same)
