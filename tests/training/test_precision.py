"""Every precision the config accepts trains with the recipe's gradient clipping, and the fused
AdamW step equals the unfused one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from eomt.checkpoints import load_model
from eomt.config import PRECISIONS, load_experiment
from eomt.training import run as engine
from eomt.training.module import EoMTModule

from .test_engine import ROOT, TINY as ENGINE_TINY

# test_engine's tiny run, 4 batches of 2 per epoch, 3 steps, no periodic checkpoints.
TINY = [
    *ENGINE_TINY, "data.options={size: 64, train_num_images: 8, val_num_images: 2}",
    "train.warmup_steps=[0,0]", "train.checkpoint_every_n_steps=0", "train.max_steps=3", "train.data_check=false",
]


def tiny_config(out: Path, *extra: str):
    return load_experiment(str(ROOT / "configs/synthetic/panoptic.yaml"), [*TINY, f"train.out_dir={out}", *extra])


class GradRecorder(Callback):
    """Records, after every optimizer step, the total gradient norm the step used and the optimizer."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.fused: list[bool] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:  # noqa: ANN001
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))
        opt = trainer.optimizers[0]
        self.fused.append(bool(opt.defaults.get("fused")))


def _train(cfg, monkeypatch: pytest.MonkeyPatch, fused: bool | None = None) -> GradRecorder:
    recorder = GradRecorder()
    make = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer", lambda c, **kw: make(c, **kw, extra_callbacks=[recorder]))
    if fused is not None:
        monkeypatch.setattr(EoMTModule, "_fused_allowed", lambda self: fused)
    engine.train(cfg, progress=False)
    monkeypatch.undo()
    return recorder


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_trains_with_clipping(precision: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, f"train.precision={precision}")
    recorder = _train(cfg, monkeypatch)
    assert len(recorder.norms) == 3
    # The gradients the optimizer stepped with were clipped to the recipe's norm (0.01), up to the
    # rounding of bf16 arithmetic where the weights are bf16 (8 bits: the norm clipping computes and
    # the scaled gradients are each off by up to 2^-8 relative).
    rounding = 2**-8 if precision == "bf16-true" else 1e-5
    assert max(recorder.norms) <= cfg.train.grad_clip * (1 + 4 * rounding)
    assert all(recorder.fused)  # no GradScaler on the CPU: the fused step is allowed
    model = load_model(tmp_path / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_fused_and_unfused_steps_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = {}
    for fused in (True, False):
        cfg = tiny_config(tmp_path / str(fused), "train.precision=bf16-mixed", "train.lr=1e-3")
        recorder = _train(cfg, monkeypatch, fused=fused)
        assert recorder.fused == [fused] * 3
        results[fused] = load_model(tmp_path / str(fused) / "model.safetensors").state_dict()
    worst = max(float((v - results[False][k]).abs().max()) for k, v in results[True].items())
    # Three AdamW steps of lr 1e-3 move a weight by up to 3e-3; the kernels differ by float rounding.
    assert worst <= 3e-3 * 1e-4, worst


def test_default_precision_from_the_command_line(tmp_path: Path) -> None:
    """The reproduction of the report: `eomt train <config> train.precision=bf16-mixed train.max_steps=3`."""
    proc = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "train", str(ROOT / "configs/synthetic/panoptic.yaml"), *TINY,
         "train.precision=bf16-mixed", f"train.out_dir={tmp_path}", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "model.safetensors").is_file()


def test_diverging_run_stops_with_a_clear_error(tmp_path: Path) -> None:
    """train.lr=1000 diverges: the run stops at the step the loss turns non-finite, exits non-zero
    with one line naming the step, and writes no model."""
    proc = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "train", str(ROOT / "configs/synthetic/panoptic.yaml"), *TINY,
         "train.lr=1000", "train.grad_clip=0", "train.max_steps=40", "train.checkpoint_every_n_steps=1",
         f"train.out_dir={tmp_path}", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "training diverged" in last and "at step" in last
    assert not (tmp_path / "model.safetensors").exists()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    if ckpt.exists():  # whatever was kept is finite
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("override, key", [
    ("train.num_points=0", "train.num_points"),
    ("model.num_queries=0", "model.num_queries"),
    ("train.checkpoint_every_n_steps=-5", "train.checkpoint_every_n_steps"),
    ("train.devices=abc", "train.devices"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.warmup_fraction=[0.8,0.5]", "train.warmup_fraction"),
])
def test_values_that_cannot_work_are_config_errors(override: str, key: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "train", str(ROOT / "configs/synthetic/panoptic.yaml"), override,
         f"train.out_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert key in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "config.yaml").exists()
