"""End-to-end training engine: resumption after a crash, and multi-process evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from eomt.checkpoints import load_model
from eomt.config import load_experiment
from eomt.training import run as engine

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.embed_dim=32", "model.depth=3", "model.num_heads=2", "model.num_blocks=2",
    "model.img_size=[64,64]", "model.num_queries=6",
    "data.batch_size=2", "data.num_workers=0", "data.scale_range=[0.8,1.2]",
    "data.options={size: 64, train_num_images: 10, val_num_images: 4}",
    "train.num_points=256", "train.warmup_steps=[2,2]", "train.checkpoint_every_n_steps=3",
    "train.log_every_n_steps=1", "train.val_every_n_epochs=100", "train.threads=1",
]


def tiny_config(out: Path, *extra: str):
    return load_experiment(str(ROOT / "configs/synthetic/panoptic.yaml"), [*TINY, f"train.out_dir={out}", *extra])


class Crash(Callback):
    """Simulates a process killed after `step` optimizer steps (work since the last checkpoint is lost)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_crash_ends_with_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 steps over 2+ epochs (5 batches per epoch): the crash at step 8 loses steps 7-8 and the
    # resume starts mid-epoch from the checkpoint of step 6.
    steps = "train.max_steps=12"
    engine.train(tiny_config(tmp_path / "straight", steps), progress=False)
    straight = load_model(tmp_path / "straight" / "model.safetensors")

    crashed_cfg = tiny_config(tmp_path / "crashed", steps)
    make = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer", lambda cfg, **kw: make(cfg, **kw, extra_callbacks=[Crash(8)]))
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(crashed_cfg, progress=False)
    monkeypatch.setattr(engine, "make_trainer", make)
    ckpt = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    engine.train(crashed_cfg, progress=False)  # resume="auto" picks up last.ckpt
    resumed = load_model(tmp_path / "crashed" / "model.safetensors")

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # Annealing state travelled too: both end with the same masking probabilities.
    assert straight.attn_mask_probs.tolist() == resumed.attn_mask_probs.tolist()


def test_training_logs_schedules_and_writes_a_loadable_model(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", "train.max_steps=6")
    engine.train(cfg, progress=False)
    log = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    for column in ("train/loss", "lr/head", "lr/backbone", "anneal/attn_mask_prob_0", "losses/train_loss_dice_block_-1"):
        assert column in header
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.config == cfg.model
    assert (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", "train.max_steps=4")
    engine.train(cfg, progress=False)
    model = tmp_path / "run" / "model.safetensors"
    results = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for devices in (1, 2):
        out = tmp_path / f"metrics{devices}.json"
        cmd = [
            sys.executable, "-m", "eomt.cli", "eval", str(ROOT / "configs/synthetic/panoptic.yaml"),
            "--checkpoint", str(model), "--out", str(out), "--no-progress", *TINY,
            f"train.out_dir={tmp_path / f'eval{devices}'}", "data.options={size: 64, train_num_images: 10, val_num_images: 7}",
            "train.accelerator=cpu", f"train.devices={devices}", f"train.strategy={'ddp' if devices > 1 else 'auto'}",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[devices] = json.loads(out.read_text())
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert results[1][key] == pytest.approx(results[2][key], abs=1e-9, nan_ok=True), key
