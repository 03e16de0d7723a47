"""`init_from` / `train.init`: the kind of file is recognised, what fits loads, anything else fails.

The reproducing input of the fault: an EoMT checkpoint of another class count given as
`train.init` was taken for DINOv2 weights, matched nothing, and training ran from random weights.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eomt import EoMT
from eomt.checkpoints import (
    CheckpointError,
    init_from,
    save_model,
    save_official,
    save_transformers,
)
from eomt.config import tiny_config
from tests.training.test_engine import TINY as ENGINE_TINY

ROOT = Path(__file__).resolve().parents[1]
D = 64  # tiny_config's width


def _random(model: EoMT, seed: int) -> EoMT:
    """Every tensor random (and different per seed), so a tensor that did not load shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def _checkpoint(num_classes: int, **overrides: object) -> EoMT:
    return _random(EoMT(tiny_config(num_classes=num_classes, **overrides)), seed=1)


def _save(model: EoMT, kind: str, tmp_path: Path) -> Path:
    if kind == "own":
        return save_model(model, tmp_path / "model.safetensors")
    if kind == "official":
        return save_official(model, tmp_path / "pytorch_model.bin")
    if kind == "lightning":
        sd = {"network." + k: v for k, v in model.state_dict().items()}
        hparams = {"model_config": model.config.to_dict()}
        torch.save({"state_dict": sd, "hyper_parameters": hparams}, tmp_path / "last.ckpt")
        return tmp_path / "last.ckpt"
    if kind == "transformers":
        return save_transformers(model, tmp_path / "hf")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    return tmp_path / "bare.pt"


def _one_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("eomt.checkpoints")]
    assert len(lines) == 1, lines
    return lines[0]


KINDS = ["own", "official", "lightning", "transformers", "bare"]


# ----------------------------------------------------------------------------- EoMT checkpoints
@pytest.mark.parametrize("kind", KINDS)
def test_another_class_count_loads_all_but_the_class_head(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = _checkpoint(3)
    path = _save(ckpt, kind, tmp_path)
    network = _random(EoMT(tiny_config(num_classes=5)), seed=2)
    fresh_head = network.class_head.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        report = init_from(network, path)
    line = _one_line(caplog)
    assert str(path.parent if kind == "transformers" else path) in line
    assert "all but the class head" in line and "3 classes in the checkpoint, 5 in the network" in line
    assert report.family == "eomt" and report.new == ["class_head.weight", "class_head.bias"]
    theirs, ours = ckpt.state_dict(), network.state_dict()
    for k, v in ours.items():
        if k.startswith("class_head.") or k == "attn_mask_probs":
            continue
        assert torch.equal(v, theirs[k]), k
    assert torch.equal(network.class_head.weight, fresh_head)  # new head, 6 outputs
    assert network.class_head.weight.shape == (6, D)
    assert report.loaded == report.total - 2


@pytest.mark.parametrize("kind", ["own", "official"])
def test_same_class_count_loads_everything(kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = _checkpoint(5)
    path = _save(ckpt, kind, tmp_path)
    network = _random(EoMT(tiny_config(num_classes=5)), seed=2)
    with caplog.at_level(logging.INFO):
        report = init_from(network, path)
    assert "class head included" in _one_line(caplog) and report.new == []
    theirs = ckpt.state_dict()
    for k, v in network.state_dict().items():
        if k != "attn_mask_probs":  # annealing state: the schedule sets it
            assert torch.equal(v, theirs[k]), k

    again = _random(EoMT(tiny_config(num_classes=5)), seed=2)
    head = again.class_head.weight.detach().clone()
    report = init_from(again, path, load_class_head=False)
    assert report.class_head == "load_class_head=False" and torch.equal(again.class_head.weight, head)
    assert torch.equal(again.q.weight, ckpt.q.weight)


def test_other_class_names_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = ("a", "b", "c", "d", "e")
    path = save_model(_random(EoMT(tiny_config(class_names=names)), 1), tmp_path / "m.safetensors")
    network = EoMT(tiny_config(class_names=("a", "b", "x", "d", "e")))
    with caplog.at_level(logging.INFO):
        init_from(network, path)
    assert "class names differ (class 2 is 'c' in the checkpoint, 'x' in the network)" in _one_line(caplog)


def test_position_embedding_resampled_to_the_network(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save_official(_checkpoint(3), tmp_path / "pytorch_model.bin")  # 64 x 64: 4 x 4 tokens
    network = EoMT(tiny_config(img_size=(96, 128)))
    with caplog.at_level(logging.INFO):
        init_from(network, path)
    assert "resampled backbone.pos_embed (4, 4) -> (6, 8)" in _one_line(caplog)


def test_another_architecture_names_the_shapes(tmp_path: Path) -> None:
    path = save_model(_checkpoint(3, embed_dim=32), tmp_path / "narrow.safetensors")
    with pytest.raises(CheckpointError, match=r"narrow\.safetensors.*another architecture \(D=32, depth=4, "
                       r"queries=8\) than the network \(tiny: D=64, depth=4.*expected \(64, 64\) found \(32, 32\)"):
        init_from(EoMT(tiny_config()), path)
    path = save_model(_checkpoint(3, depth=6, num_blocks=2), tmp_path / "deep.safetensors")
    with pytest.raises(CheckpointError, match=r"deep\.safetensors.*\(D=64, depth=6, .*depth=4.*"
                       r"unexpected key\(s\): backbone\.blocks\.4\."):
        init_from(EoMT(tiny_config()), path)


# ----------------------------------------------------------------------------- DINOv2 weights
def _dinov2(depth: int = 4, width: int = D, hub: bool = False) -> dict[str, torch.Tensor]:
    """Random DINOv2 weights (reg4, patch 14, 37 x 37 positions) in timm or torch-hub names."""
    grid = 37
    sd = {"cls_token": torch.randn(1, 1, width), "patch_embed.proj.weight": torch.randn(width, 3, 14, 14),
          "patch_embed.proj.bias": torch.randn(width), "norm.weight": torch.randn(width),
          "norm.bias": torch.randn(width)}
    if hub:  # the cls position rides in pos_embed; registers and the iBOT mask token by their own names
        sd |= {"pos_embed": torch.randn(1, 1 + grid * grid, width), "register_tokens": torch.randn(1, 4, width),
               "mask_token": torch.randn(1, width)}
    else:
        sd |= {"pos_embed": torch.randn(1, grid * grid, width), "reg_token": torch.randn(1, 4, width)}
    for i in range(depth):
        shapes = {"norm1.weight": (width,), "norm1.bias": (width,), "attn.qkv.weight": (3 * width, width),
                  "attn.qkv.bias": (3 * width,), "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
                  "ls1.gamma": (width,), "norm2.weight": (width,), "norm2.bias": (width,),
                  "mlp.fc1.weight": (4 * width, width), "mlp.fc1.bias": (4 * width,),
                  "mlp.fc2.weight": (width, 4 * width), "mlp.fc2.bias": (width,), "ls2.gamma": (width,)}
        sd |= {f"blocks.{i}.{k}": torch.randn(s) for k, s in shapes.items()}
    return sd


@pytest.mark.parametrize("layout", ["timm", "torch-hub"])
def test_dinov2_weights_fill_the_backbone(layout: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = _dinov2(hub=layout == "torch-hub")
    path = tmp_path / "dinov2.pth"
    torch.save(sd if layout == "timm" else {"teacher": {"backbone." + k: v for k, v in sd.items()}}, path)
    network = EoMT(tiny_config())
    heads = {k: v.clone() for k, v in network.state_dict().items() if not k.startswith("backbone.")}
    with caplog.at_level(logging.INFO):
        report = init_from(network, path)
    line = _one_line(caplog)
    assert f"initialised the backbone from {path} (DINOv2 weights, {layout} layout)" in line
    assert report.family == "dinov2" and report.loaded == report.total
    assert torch.equal(network.backbone.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])
    reg = sd["register_tokens" if layout == "torch-hub" else "reg_token"]
    assert torch.equal(network.backbone.reg_token, reg)
    assert "pos_embed (37, 37) -> (4, 4)" in line and "patch_embed (14, 14) -> (16, 16)" in line
    for k, v in heads.items():
        assert torch.equal(network.state_dict()[k], v), k


def test_dinov2_of_another_width_or_depth(tmp_path: Path) -> None:
    save_file(_dinov2(width=32), tmp_path / "vits.safetensors")
    with pytest.raises(CheckpointError, match=r"vits\.safetensors: DINOv2 weights do not fit the backbone "
                       r"\(width 32, the backbone's 64\): .*expected \(64, 64\) found \(32, 32\)"):
        init_from(EoMT(tiny_config()), tmp_path / "vits.safetensors")
    save_file(_dinov2(depth=12), tmp_path / "deep.safetensors")
    with pytest.raises(CheckpointError, match=r"deep\.safetensors: DINOv2 weights with 12 blocks, the backbone has 4"):
        init_from(EoMT(tiny_config()), tmp_path / "deep.safetensors")


def test_dinov2_that_fills_too_little(tmp_path: Path) -> None:
    sd = {k: v for k, v in _dinov2().items() if k.startswith("patch_embed.") or k.endswith("norm1.weight")}
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match=r"partial\.safetensors: DINOv2 weights expected .* only 6 of the "
                       r"backbone's \d+ tensors"):
        init_from(EoMT(tiny_config()), tmp_path / "partial.safetensors")


# ----------------------------------------------------------------------------- neither
def test_unrelated_keys_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    unrelated = {"encoder.layer1.weight": torch.randn(4, 4), "decoder.bias": torch.randn(4)}
    save_file(unrelated, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError) as e:
        init_from(EoMT(tiny_config()), tmp_path / "resnet.safetensors")
    text = str(e.value)
    assert str(tmp_path / "resnet.safetensors") in text and "\n" not in text
    assert "expected EoMT weights" in text and "DINOv2" in text and "encoder.layer1.weight" in text


# ----------------------------------------------------------------------------- the user's path
TINY = [
    *ENGINE_TINY, "data.options={size: 64, train_num_images: 4, val_num_images: 2}", "train.warmup_steps=[1,1]",
    "train.max_steps=2", "train.precision=32-true",
]


def _train(init: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "eomt.cli", "train", str(ROOT / "configs/synthetic/panoptic.yaml"), *TINY,
               f"train.out_dir={out}", f"train.init={init}", "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_train_init_from_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "unrelated.safetensors"
    save_file({"fc.weight": torch.randn(2, 2)}, bad)
    run = _train(bad, tmp_path / "bad")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    expected = f"eomt train: error: train.init: {bad}: no known checkpoint layout"
    assert len(errors) == 1 and expected in errors[0], run.stderr
    assert not (tmp_path / "bad" / "model.safetensors").exists()

    # An EoMT checkpoint of 3 classes starts the synthetic 6-class model: all but the class head.
    cfg = tiny_config(embed_dim=32, depth=3, num_heads=2, num_blocks=2, img_size=(64, 64), num_queries=6, num_classes=3)
    good = save_model(_random(EoMT(cfg), seed=1), tmp_path / "three_classes.safetensors")
    run = _train(good, tmp_path / "good")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "initialised" in line]
    assert len(lines) == 1 and "all but the class head" in lines[0], run.stderr[-3000:]
    assert "3 classes in the checkpoint, 6 in the network" in lines[0]
    assert (tmp_path / "good" / "model.safetensors").exists()
