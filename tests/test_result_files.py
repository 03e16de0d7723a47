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


# ---------------------------------------------------------------------------------------------
# eomt predict: ids, incremental results, resuming, the output folder
# ---------------------------------------------------------------------------------------------

CATEGORY_IDS = (11, 12, 17, 22, 31)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    model = EoMT(tiny_config(task="panoptic", num_classes=5, category_ids=CATEGORY_IDS, stuff_classes=(3, 4)))
    model.set_attn_mask_probs([0.0, 0.0])
    return save_model(model, tmp_path / "model.safetensors")


def _images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def _predict(model: Path, inputs: list[str], out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(model), *inputs, "--out", str(out), "--threshold", "0", *extra])


def test_results_carry_the_dataset_category_and_image_ids(model_file: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "val2017", 3)
    coco = {"images": [{"id": 139, "file_name": "im00.png"}, {"id": 7, "file_name": "val2017/im01.png"},
                       {"id": 9000, "file_name": "im02.png"}, {"id": 5, "file_name": "other.png"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    expected = {"im00": 139, "im01": 7, "im02": 9000}

    out = tmp_path / "pan"
    assert _predict(model_file, [str(images)], out, "--images-json", str(tmp_path / "annotations.json")) == 0
    doc = json.loads((out / "panoptic.json").read_text())
    assert [c["id"] for c in doc["categories"]] == list(CATEGORY_IDS)
    assert {Path(a["source"]).stem: a["image_id"] for a in doc["annotations"]} == expected
    assert {im["id"]: im["file_name"] for im in doc["images"]} == {139: "im00.png", 7: "val2017/im01.png",
                                                                  9000: "im02.png"}
    segments = [s for a in doc["annotations"] for s in a["segments_info"]]
    assert segments and {s["category_id"] for s in segments} <= set(CATEGORY_IDS)

    out = tmp_path / "inst"
    assert _predict(model_file, [str(images)], out, "--task", "instance",
                    "--images-json", str(tmp_path / "annotations.json")) == 0
    entries = json.loads((out / "instances.json").read_text())
    assert entries and {e["category_id"] for e in entries} <= set(CATEGORY_IDS)
    assert all(expected[Path(e["file_name"]).stem] == e["image_id"] for e in entries)

    # Without the dataset's JSON: 1..N in input order, written beside the file names, every run.
    for name in ("plain", "again"):
        assert _predict(model_file, [str(images)], tmp_path / name) == 0
    first, again = (json.loads((tmp_path / n / "panoptic.json").read_text()) for n in ("plain", "again"))
    assert [(im["id"], Path(im["file_name"]).name) for im in first["images"]] == [
        (1, "im00.png"), (2, "im01.png"), (3, "im02.png")]
    assert first == again

    # An input the dataset does not list is refused by name before anything runs.
    (tmp_path / "annotations.json").write_text(json.dumps({"images": coco["images"][1:]}))
    assert _predict(model_file, [str(images)], tmp_path / "refused", "--images-json",
                    str(tmp_path / "annotations.json")) == 1
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("where", ["same", "inside", "glob", "recursive glob"])
def test_an_output_folder_in_the_input_folder_is_refused(
    where: str, model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _images(tmp_path / "images", 1)
    globs = {"glob": str(images / "*.png"), "recursive glob": str(images / "**" / "*.png")}
    inputs = [globs.get(where, str(images))]
    out = images if where in ("same", "glob") else images / "predictions"
    assert _predict(model_file, inputs, out) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "input folder" in err
    assert sorted(p.name for p in images.iterdir()) == ["im00.png"]


def test_an_output_folder_a_flat_glob_does_not_reach_is_accepted(model_file: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "images", 1)
    assert _predict(model_file, [str(images / "*.png")], images / "predictions") == 0
    assert (images / "predictions" / "im00_overlay.png").is_file()


def test_a_killed_run_resumes_with_skip_existing_to_the_same_results(model_file: Path, tmp_path: Path) -> None:
    count = 12
    images = _images(tmp_path / "images", count)
    full = tmp_path / "full"
    assert _predict(model_file, [str(images)], full) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "eomt.cli", "predict", "--model", str(model_file), str(images),
           "--out", str(out), "--threshold", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if lines.is_file() and lines.read_text().count("\n") >= 1:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    done = lines.read_text().count("\n")
    assert 1 <= done < count and not (out / "panoptic.json").exists()
    # What a write cut by the kill leaves is removed at the next start.
    (out / f".im05_overlay.png.{_dead_pid()}.0a1b2c3d.tmp").write_bytes(b"partial")
    # A kill in the middle of a line leaves half a line: that image is done again.
    with open(lines, "a") as f:
        f.write('{"stem": "im11", "source": "cut sh')

    assert _predict(model_file, [str(images)], out, "--skip-existing") == 0
    assert json.loads((out / "panoptic.json").read_text()) == json.loads((full / "panoptic.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())
    assert (out / "results.jsonl").read_text().count("\n") == count
    # Everything there: a second resume predicts nothing and writes the same merged file.
    before = (out / "im00_overlay.png").stat().st_mtime_ns
    assert _predict(model_file, [str(images)], out, "--skip-existing") == 0
    assert (out / "im00_overlay.png").stat().st_mtime_ns == before
    assert (out / "panoptic.json").read_bytes() == (full / "panoptic.json").read_bytes()


def test_skip_existing_redoes_images_predicted_with_other_options(model_file: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    images = _images(tmp_path / "images", 2)
    out = tmp_path / "out"
    assert _predict(model_file, [str(images)], out) == 0
    assert _predict(model_file, [str(images)], out, "--skip-existing") == 0
    assert "(2 already there)" in capsys.readouterr().out
    assert main(["predict", "--model", str(model_file), str(images), "--out", str(out), "--threshold", "0.5",
                 "--skip-existing"]) == 0
    assert "already there" not in capsys.readouterr().out
    latest = {r["stem"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(latest) == 2 and {r["settings"]["threshold"] for r in latest.values()} == {0.5}
