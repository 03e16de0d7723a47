"""The fine-tuning journey of README's "Train on your own data", command by command, as a user types it.

For each of the users' formats: a dataset on disk (`eomt data synthetic`), `eomt data check` on a
bundled custom config, `eomt train` from a DINOv2 backbone file (random weights in the torch-hub
layout) at the config's default precision (bf16-mixed) with gradient clipping, killed after its
first checkpoint and resumed, `eomt eval`, and `eomt predict` on a folder with the dataset's own
category ids in the results. Only the model size and the run length are overridden (tiny).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eomt.checkpoints import load_model

pytestmark = pytest.mark.slow

TINY_MODEL = [
    "model.embed_dim=32", "model.depth=3", "model.num_heads=2", "model.num_blocks=2",
    "model.img_size=[64,64]", "model.num_queries=8",
]
SHORT_RUN = [
    "data.batch_size=2", "data.num_workers=0", "train.epochs=8", "train.checkpoint_every_n_steps=4",
    "train.val_every_n_epochs=4", "train.num_points=256", "train.threads=1", "train.log_every_n_steps=1",
]
# format -> (bundled config, task, the dataset's own ids (export defaults), result file)
JOURNEYS = {
    "coco_panoptic_json": ("custom/coco_panoptic", "panoptic", {11, 12, 17, 22, 31, 40}, "panoptic.json"),
    "coco_instance_json": ("custom/coco_instance", "instance", {11, 12, 17, 22}, "instances.json"),
    "semantic_folder": ("custom/semantic_folder", "semantic", set(range(6)), None),
}


def eomt(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "eomt.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"eomt {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def write_dinov2_hub(path: Path, width: int = 32, depth: int = 3, grid: int = 37) -> None:
    """Random DINOv2 weights (patch 14, 4 registers) under torch-hub's names, as `torch.hub` saves them."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"cls_token": rnd(1, 1, width), "register_tokens": rnd(1, 4, width), "mask_token": rnd(1, width),
          "pos_embed": rnd(1, 1 + grid * grid, width), "patch_embed.proj.weight": rnd(width, 3, 14, 14),
          "patch_embed.proj.bias": rnd(width), "norm.weight": torch.ones(width), "norm.bias": rnd(width)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": torch.ones(width), b + "norm1.bias": rnd(width),
               b + "attn.qkv.weight": rnd(3 * width, width), b + "attn.qkv.bias": rnd(3 * width),
               b + "attn.proj.weight": rnd(width, width), b + "attn.proj.bias": rnd(width),
               b + "ls1.gamma": torch.full((width,), 1e-5), b + "norm2.weight": torch.ones(width),
               b + "norm2.bias": rnd(width), b + "mlp.fc1.weight": rnd(4 * width, width),
               b + "mlp.fc1.bias": rnd(4 * width), b + "mlp.fc2.weight": rnd(width, 4 * width),
               b + "mlp.fc2.bias": rnd(width), b + "ls2.gamma": torch.full((width,), 1e-5)}
    torch.save(sd, path)


def train_killed_then_resumed(args: list[str], run: Path, cwd: Path) -> str:
    """Start `eomt train`, kill it (SIGKILL) once its first checkpoint exists, run it again."""
    cmd = [sys.executable, "-m", "eomt.cli", "train", *args, "--no-progress"]
    first = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if first.poll() is None:
        os.kill(first.pid, signal.SIGKILL)
    _, err = first.communicate()
    assert last.exists(), err[-3000:]
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert not (run / "model.safetensors").exists() or first.returncode == 0
    resumed = eomt("train", *args, "--no-progress", cwd=cwd)
    return f"{killed_at}\n{resumed.stderr}"


@pytest.mark.parametrize("fmt", list(JOURNEYS))
def test_train_on_your_own_data(fmt: str, tmp_path: Path) -> None:
    config, task, dataset_ids, results_name = JOURNEYS[fmt]
    data, run, preds = tmp_path / "my_dataset", tmp_path / "runs" / "my_run", tmp_path / "preds"

    eomt("data", "synthetic", str(data), "--format", fmt, "--train", "8", "--val", "4", "--size", "64", cwd=tmp_path)
    check = eomt("data", "check", config, f"data.root={data}", cwd=tmp_path).stdout
    assert "OK" in check
    assert "train" in check and "val" in check  # every split is checked
    assert "circle" in check  # the label space the run will use

    backbone = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    write_dinov2_hub(backbone)
    args = [config, f"data.root={data}", f"train.init={backbone}", f"train.out_dir={run}", *TINY_MODEL, *SHORT_RUN]
    log = train_killed_then_resumed(args, run, tmp_path)
    assert "resum" in log.lower()  # the second run continued the first
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 8 * 4  # 8 epochs of 4 batches: last.ckpt is the final state

    model = load_model(run / "model.safetensors")
    cfg = model.config
    assert cfg.task == task and cfg.name == "my_run"  # named after the run, not the preset
    assert cfg.class_names[:4] == ("circle", "square", "triangle", "cross")
    assert set(cfg.category_ids or range(cfg.num_classes)) == dataset_ids
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())

    metrics = eomt("eval", config, f"data.root={data}", "--checkpoint", str(run / "model.safetensors"),
                   "data.num_workers=0", cwd=tmp_path).stdout
    metric = {"panoptic": "pq", "instance": "ap", "semantic": "miou"}[task]
    assert any(line.split()[:1] == [metric] for line in metrics.splitlines())

    images = data / ("images/val" if fmt == "semantic_folder" else "val")
    extra = ["--threshold", "0"] if task == "instance" else []
    split_json = {"panoptic": "panoptic_val.json", "instance": "instances_val.json"}.get(task)
    if split_json:  # the images are the dataset's val split: its image ids, matched by file_name
        extra += ["--images-json", str(data / "annotations" / split_json)]
        split_ids = {Path(im["file_name"]).name: im["id"]
                     for im in json.loads((data / "annotations" / split_json).read_text())["images"]}
    eomt("predict", "--model", str(run / "model.safetensors"), "--task", task, str(images), "--out", str(preds),
         *extra, cwd=tmp_path)
    assert len(list(preds.glob("*_overlay.png"))) == 4
    if results_name:
        results = json.loads((preds / results_name).read_text())
        if task == "panoptic":
            assert {c["id"] for c in results["categories"]} == dataset_ids
            assert {Path(im["file_name"]).name: im["id"] for im in results["images"]} == split_ids
            used = {s["category_id"] for a in results["annotations"] for s in a["segments_info"]}
        else:
            assert results, "instance results are empty"
            assert all(split_ids[Path(r["file_name"]).name] == r["image_id"] for r in results)
            used = {r["category_id"] for r in results}
        assert used <= dataset_ids  # the dataset's own ids, not 0-based class indices
