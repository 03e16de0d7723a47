"""Rerun semantics: a rerun continues only the same run, a finished run is left as it is, and the
last checkpoint is the final state. The refusal and finished cases go through `eomt train`."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from eomt.cli import main
from eomt.training import run as engine
from eomt.training.rerun import RunConflict, config_differences, plan_run

from .test_engine import ROOT, TINY, Crash, tiny_config

CONFIG = str(ROOT / "configs/synthetic/panoptic.yaml")
STEPS = "train.max_steps=4"  # checkpoints every 3 steps: the periodic last.ckpt would stop at step 3


def eomt_train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eomt.cli", "train", CONFIG, "--no-progress", *TINY, f"train.out_dir={out}", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=out.parent)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (4 steps); tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    engine.train(tiny_config(out, STEPS), progress=False)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    # Same folder name: the model is named after it.
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def test_last_checkpoint_is_the_final_state(finished: Path) -> None:
    ckpt = torch.load(finished / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4


def test_rerun_of_a_finished_run_does_nothing(finished: Path) -> None:
    model = finished / "model.safetensors"
    before = (model.read_bytes(), model.stat().st_mtime_ns, (finished / "config.yaml").read_bytes())
    proc = eomt_train(finished, STEPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "already finished" in line]
    assert len(lines) == 1 and "step 4," in lines[0]
    assert not [line for line in proc.stderr.splitlines() if "GPU available" in line or "loaded" in line]
    assert (model.read_bytes(), model.stat().st_mtime_ns, (finished / "config.yaml").read_bytes()) == before
    assert "run written to" not in proc.stdout


def test_changed_architecture_refuses_naming_the_model_keys(finished: Path) -> None:
    config = (finished / "config.yaml").read_bytes()
    proc = eomt_train(finished, STEPS, "model.embed_dim=64")
    assert proc.returncode == 1
    assert "model.embed_dim: 32 -> 64" in proc.stderr and "nothing was changed" in proc.stderr
    assert "--resume force" not in proc.stderr  # its weights could not load
    assert "size mismatch" not in proc.stderr
    assert (finished / "config.yaml").read_bytes() == config


def test_changed_learning_rate_refuses(finished: Path, capsys: pytest.CaptureFixture) -> None:
    config = (finished / "config.yaml").read_bytes()
    assert main(["train", CONFIG, "--no-progress", *TINY, f"train.out_dir={finished}", STEPS, "train.lr=1e-3"]) == 1
    err = capsys.readouterr().err
    assert "train.lr: 0.002 -> 0.001" in err and "--resume force" in err and "train.out_dir" in err
    assert (finished / "config.yaml").read_bytes() == config


def test_keys_that_cannot_change_the_weights_are_not_compared(finished: Path) -> None:
    old = tiny_config(finished, STEPS).to_dict()
    new = tiny_config(finished, STEPS, "data.num_workers=2", "train.log_every_n_steps=5", "train.threads=2",
                      "train.checkpoint_every_n_steps=7", "train.mask_threshold=0.5").to_dict()
    assert config_differences(old, new) == []
    changed = config_differences(old, tiny_config(finished, STEPS, "train.warmup_steps=[3,3]").to_dict())
    assert changed == [("train.warmup_steps", [2, 2], [3, 3])]


def test_force_cannot_change_the_network_shape(finished: Path) -> None:
    cfg = tiny_config(finished, STEPS, "model.num_queries=8")
    with pytest.raises(RunConflict, match="model.num_queries: 6 -> 8"):
        plan_run(finished, cfg.to_dict(), "force", lambda: 4)


def test_resume_force_continues_with_the_new_values(finished: Path, tmp_path: Path) -> None:
    out = copy_run(finished, tmp_path)
    engine.train(tiny_config(out, "train.max_steps=6", "train.lr=2e-5"), resume="force", progress=False)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    rows = list(csv.DictReader((out / "logs" / "version_1" / "metrics.csv").open()))
    lrs = [float(r["lr/head"]) for r in rows if r.get("lr/head")]
    assert lrs and max(lrs) <= 2e-5 + 1e-12  # the restored optimizer state had 2e-3


def test_resume_never_moves_the_old_run_aside(finished: Path, tmp_path: Path) -> None:
    out = copy_run(finished, tmp_path)
    old_model = (out / "model.safetensors").read_bytes()
    engine.train(tiny_config(out, "train.max_steps=2"), resume="never", progress=False)
    (previous,) = (out / "previous").iterdir()
    assert (previous / "model.safetensors").read_bytes() == old_model
    assert {p.name for p in previous.iterdir()} >= {"config.yaml", "checkpoints", "model.safetensors", "logs"}
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]


def test_mid_epoch_resume_warns_nothing_about_the_dataloader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path / "run", "train.max_steps=5")
    make = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer", lambda c, **kw: make(c, **kw, extra_callbacks=[Crash(4)]))
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(cfg, progress=False)
    monkeypatch.setattr(engine, "make_trainer", make)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.train(cfg, progress=False)  # resumes at step 3 of a 5-batch epoch
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5


def test_eval_logs_beside_the_checkpoint_not_in_the_training_run(finished: Path, tmp_path: Path) -> None:
    out = copy_run(finished, tmp_path)
    versions = sorted(p.name for p in (out / "logs").iterdir())
    assert main(["eval", CONFIG, "--checkpoint", str(out / "model.safetensors"), "--no-progress", *TINY,
                 f"train.out_dir={out}", "data.options={size: 64, train_num_images: 10, val_num_images: 2}"]) == 0
    assert sorted(p.name for p in (out / "logs").iterdir()) == versions
    assert (out / "eval" / "logs").is_dir()


def test_a_run_finished_by_an_earlier_version_is_recognised(finished: Path, tmp_path: Path) -> None:
    # Earlier versions left last.ckpt at the last periodic checkpoint (step 3 of 4) and saved the
    # model without its step: the model, written after training ended, is newer than the checkpoint.
    from eomt.checkpoints import load_model, save_model

    out = copy_run(finished, tmp_path)
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    ckpt["global_step"] = 3
    torch.save(ckpt, last)
    save_model(load_model(out / "model.safetensors"), out / "model.safetensors")
    config = tiny_config(out, STEPS).to_dict()
    assert plan_run(out, config, "auto", lambda: 4).action == "finished"
    model_time = (out / "model.safetensors").stat().st_mtime_ns
    os.utime(last, ns=(model_time + 10**9, model_time + 10**9))  # a checkpoint after the model: not the end
    assert plan_run(out, config, "auto", lambda: 4).action == "resume"
