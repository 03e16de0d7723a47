"""Files a user can trust: modes that follow the umask, no temporary files left to pile up, strict
JSON, byte-identical models, resumable `eomt predict` results with the dataset's ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eomt import files
from eomt.checkpoints import save_model
from eomt.cli import main
from eomt.config import tiny_config
from eomt.inference.io import write_json, write_png
from eomt.models import EoMT
from eomt.training.run import AtomicCheckpointIO


@pytest.fixture
def umask():
    """Set a umask for the test, restore the old one after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_writer_follows_the_umask(mask: int, umask, tmp_path: Path) -> None:
    umask(mask)
    model = EoMT(tiny_config())
    written = [
        save_model(model, tmp_path / "model.safetensors"),
        write_json(tmp_path / "r.json", {"a": 1}),
        write_png(tmp_path / "r.png", np.zeros((4, 4), np.uint8)),
        files.write_atomic(tmp_path / "t.txt", "text"),
    ]
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(2)}, tmp_path / "checkpoints" / "last.ckpt")
    written.append(tmp_path / "checkpoints" / "last.ckpt")
    for path in written:
        assert _mode(path) == 0o666 & ~mask, path
    # Replacing a file keeps to the umask too, not the mode of the file replaced.
    umask(0o077)
    assert _mode(save_model(model, tmp_path / "model.safetensors")) == 0o600
    assert not list(tmp_path.rglob("*.tmp*"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = [
        tmp_path / f".last.ckpt.tmp{dead}",  # a killed run's checkpoint (the earlier naming)
        tmp_path / f".model.safetensors.{dead}.0a1b2c3d.tmp",
        tmp_path / ".model.safetensors.k3j_x9a2.tmp",  # mkstemp's name: no pid, older than us
    ]
    live = [
        tmp_path / f".last.ckpt.{os.getpid()}.0a1b2c3d.tmp",  # a write of this process, under way
        tmp_path / ".model.safetensors.q7w_e8r2.tmp",  # no pid, but newer than this process
    ]
    for p in stale + live:
        p.write_bytes(b"partial")
    past = time.time() - 3600
    os.utime(stale[2], (past, past))
    # The same pid as ours but older than this process: a container restarted with the same pid.
    reused = tmp_path / f".last.ckpt.tmp{os.getpid()}"
    reused.write_bytes(b"partial")
    os.utime(reused, (past - 10**6, past - 10**6))
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("not ours")

    removed = files.clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([*stale, reused])
    assert all(p.exists() for p in live) and unrelated.exists()


def test_an_atomic_write_removes_the_stale_temporaries_of_its_target(tmp_path: Path) -> None:
    dead = _dead_pid()
    mine = tmp_path / f".last.ckpt.tmp{dead}"
    other = tmp_path / f".other.ckpt.tmp{dead}"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(1)}, tmp_path / "last.ckpt")
    assert not mine.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.ckpt.tmp{dead}", "last.ckpt"]


def test_identical_saves_are_byte_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EoMT(tiny_config(category_ids=(11, 12, 17, 22, 31), num_classes=5))
    a = save_model(model, tmp_path / "a.safetensors", extra={"step": 3, "b": 1}).read_bytes()
    for i in range(3):  # the safetensors writer orders metadata differently from call to call
        assert save_model(model, tmp_path / f"b{i}.safetensors", extra={"b": 1, "step": 3}).read_bytes() == a
    from eomt.checkpoints import load_model

    assert load_model(tmp_path / "a.safetensors").config.category_ids == (11, 12, 17, 22, 31)


def test_json_has_no_bare_nan_and_says_why(tmp_path: Path) -> None:
    metrics = {"ap": 12.5, "ap_large": float("nan"), "per_class": {"cat": float("inf"), "dog": 3.0},
               "curve": [1.0, float("-inf")], "n": np.float32("nan")}
    path = files.write_json(tmp_path / "metrics.json", metrics, reason=files.UNDEFINED_METRIC)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert doc["ap"] == 12.5 and doc["ap_large"] is None and doc["per_class"] == {"cat": None, "dog": 3.0}
    assert doc["curve"] == [1.0, None] and doc["n"] is None
    assert set(doc[files.NULL_KEY]) == {"ap_large", "per_class.cat", "curve[1]", "n"}
    assert "no ground truth" in doc[files.NULL_KEY]["ap_large"]
    # A list (the COCO results format) has no room for the reasons, but stays strict JSON.
    assert json.loads(files.json_text([float("nan"), 1])) == [None, 1]
