"""The data check a run starts with: bad data refuses the start before anything is written, the
outcome is cached for a resume, and a file that goes bad during the run is named and skipped."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eomt.cli import main
from eomt.config import load_experiment
from eomt.data.user import SemanticFolder
from eomt.training import preflight
from eomt.training import run as engine

from tests.data.fixtures import write_semantic_folder, write_user_coco
from .test_engine import ROOT, Crash

TINY_MODEL = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.num_blocks=1", "model.img_size=[64,64]",
    "model.num_queries=4", "train.num_points=64", "train.precision=32-true", "train.threads=1",
    "data.batch_size=1", "data.num_workers=0", "train.log_every_n_steps=1",
]


def semantic_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(ROOT / "configs/custom/semantic_folder.yaml"), f"data.root={root}", "data.train_split=x",
            "data.val_split=x", "data.options={x_images: images, x_labels: labels}", *TINY_MODEL,
            f"train.out_dir={out}", *extra]


def panoptic_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(ROOT / "configs/custom/coco_panoptic.yaml"), f"data.root={root}", "data.train_split=x",
            "data.val_split=x", "data.options={x_annotations: panoptic.json, x_masks: panoptic, x_images: images}",
            *TINY_MODEL, f"train.out_dir={out}", *extra]


def test_unknown_category_id_refuses_the_start_and_writes_nothing(tmp_path: Path) -> None:
    write_user_coco(tmp_path)
    pan = json.loads((tmp_path / "panoptic.json").read_text())
    pan["annotations"][0]["segments_info"][0]["category_id"] = 99  # not in the categories
    (tmp_path / "panoptic.json").write_text(json.dumps(pan))
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: {name: earlier}\n")  # an attempt that wrote no checkpoint
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eomt.cli", "train", "--no-progress",
           *panoptic_args(tmp_path, out, "train.max_steps=2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    assert "data check failed" in proc.stderr and "unknown category_id [99]" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["config.yaml"]
    assert (out / "config.yaml").read_text() == "model: {name: earlier}\n"


def test_missing_image_refuses_the_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_user_coco(tmp_path)
    (tmp_path / "images" / "b.jpg").unlink()
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *panoptic_args(tmp_path, out, "train.max_steps=2")]) == 1
    err = capsys.readouterr().err
    assert "images/b.jpg: file not found" in err
    assert not out.exists()


def test_label_value_out_of_range_refuses_listing_the_first_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    write_semantic_folder(tmp_path, names=("sky", "road"))  # the labels hold 0, 2 and 255
    monkeypatch.setattr(preflight, "SHOWN_ERRORS", 2)
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *semantic_args(tmp_path, out, "train.max_steps=2")]) == 1
    err = capsys.readouterr().err
    listed = [line for line in err.splitlines() if "label values [2] outside the class list" in line]
    assert len(listed) == 2
    assert "(3 in the train split)" in err and "... and 1 more" in err  # val is the same split: checked once
    assert not out.exists()


def test_file_deleted_after_the_check_is_named_skipped_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    write_semantic_folder(tmp_path)
    checked = preflight.check_training_data

    def check_then_delete(*args, **kwargs):  # noqa: ANN002, ANN003
        result = checked(*args, **kwargs)
        (tmp_path / "images" / "img2.png").unlink()
        return result

    monkeypatch.setattr(preflight, "check_training_data", check_then_delete)
    out = tmp_path / "run"
    cfg = load_experiment(*_split(semantic_args(tmp_path, out, "train.max_steps=3", "train.val_every_n_epochs=1")))
    with caplog.at_level(logging.WARNING, logger="eomt"):
        engine.train(cfg, progress=False)  # one epoch of 3 images, then validation
    assert (out / "model.safetensors").is_file()
    train_lines = [r.getMessage() for r in caplog.records if "training data:" in r.getMessage()]
    assert len(train_lines) == 1 and "images/img2.png: file not found" in train_lines[0]
    assert "replaced by" in train_lines[0] and "img" in train_lines[0].split("replaced by")[1]
    val_lines = [r.getMessage() for r in caplog.records if "validation data:" in r.getMessage()]
    assert len(val_lines) == 1 and "img2.png" in val_lines[0] and "left out of the metrics" in val_lines[0]
    rows = list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()))
    assert [r["data/skipped_samples"] for r in rows if r.get("data/skipped_samples")] == ["1.0"]
    assert [r["data/skipped_val_samples"] for r in rows if r.get("data/skipped_val_samples")] == ["1.0"]


def test_the_check_is_cached_for_a_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    write_semantic_folder(tmp_path)
    out = tmp_path / "run"
    cfg = load_experiment(*_split(semantic_args(tmp_path, out, "train.max_steps=4",
                                                "train.checkpoint_every_n_steps=2")))
    calls = []
    check = preflight.check_dataset
    monkeypatch.setattr(preflight, "check_dataset", lambda *a, **k: calls.append(1) or check(*a, **k))
    make = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer", lambda c, **kw: make(c, **kw, extra_callbacks=[Crash(3)]))
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(cfg, progress=False)
    assert len(calls) == 1  # train and val are one split: checked once
    assert set(json.loads((out / preflight.CACHE_NAME).read_text())) == {"train", "val"}
    monkeypatch.setattr(engine, "make_trainer", make)
    with caplog.at_level(logging.INFO, logger="eomt"):
        engine.train(cfg, progress=False)  # resumes at step 2
    assert len(calls) == 1
    assert len([r for r in caplog.records if "unchanged since the check" in r.getMessage()]) == 1


def test_the_fingerprint_follows_the_files(tmp_path: Path) -> None:
    write_semantic_folder(tmp_path)
    dataset = SemanticFolder(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")
    split = preflight.Split("train", dataset, {"format": "semantic_folder"})
    first = preflight.fingerprint(split)
    assert preflight.fingerprint(split) == first
    label = tmp_path / "labels" / "img1.png"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert preflight.fingerprint(split) != first
    assert preflight.fingerprint(preflight.Split("train", dataset, {"format": "other"})) != first


def _split(args: list[str]) -> tuple[str, list[str]]:
    return args[0], args[1:]
