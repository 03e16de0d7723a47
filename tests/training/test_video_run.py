"""A VidEoMT run is a run like an image one: it resumes at its step, a finished run is left as it is,
--resume never moves it aside, validation logs video AP and identity switches, YouTube-VIS data
trains through `eomt train`, and `eomt eval` scores the saved model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from eomt.checkpoints import load_video_model, read_metadata
from eomt.cli import main
from eomt.config import load_experiment
from eomt.data.video import VideoTarget
from eomt.models.video import VidEoMT
from eomt.training import run as engine
from eomt.training.video_data import ClipTransform

from .test_engine import ROOT, Crash

# 8 training videos in batches of 2: the epoch ends at step 4, the last step, so validation runs.
TINY = [
    "model.embed_dim=32", "model.depth=3", "model.num_heads=2", "model.num_queries=6", "model.img_size=[64,64]",
    "data.options={train_num_videos: 8, val_num_videos: 2, video_length: 4}", "data.clip_length=3",
    "data.batch_size=2", "train.max_steps=4", "train.num_points=256", "train.warmup_steps=[1,1]", "train.lr=1e-3",
    "train.checkpoint_every_n_steps=1", "train.log_every_n_steps=1", "train.threads=1",
]


def video_config(out: Path, *extra: str) -> Any:
    return load_experiment("synthetic/video", [*TINY, f"train.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A finished tiny video run (4 steps, validated at the end) and its module."""
    out = tmp_path_factory.mktemp("video") / "run"
    return out, engine.train(video_config(out), progress=False)


def test_validation_logs_video_ap_and_identity_switches(finished: tuple[Path, Any]) -> None:
    out, module = finished
    assert {"ap", "ap50", "ap75", "ar10", "id_switches", "matched_frames"} <= set(module.last_metrics)
    assert 0 <= module.last_metrics["ap"] <= 100 and module.last_metrics["id_switches"] >= 0
    rows = list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()))
    assert [r["val/ap"] for r in rows if r.get("val/ap")] and [r for r in rows if r.get("val/id_switches")]
    assert read_metadata(out / "model.safetensors")["extra"]["global_step"] == 4
    assert isinstance(load_video_model(out / "model.safetensors"), VidEoMT)
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "checkpoints", "model.safetensors", "logs"}


def test_an_interrupted_video_run_resumes_at_its_step(finished: tuple[Path, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cfg = video_config(tmp_path / "run")
    make = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer", lambda c, **kw: make(c, **kw, extra_callbacks=[Crash(3)]))
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(cfg, progress=False)
    monkeypatch.setattr(engine, "make_trainer", make)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    with caplog.at_level("INFO"):
        engine.train(cfg, progress=False)
    assert any("at step 2 of 4" in r.getMessage() for r in caplog.records)
    assert read_metadata(tmp_path / "run" / "model.safetensors")["extra"]["global_step"] == 4
    # Seeded clips and order: the resumed run ends with the uninterrupted run's weights.
    straight = load_video_model(finished[0] / "model.safetensors").state_dict()
    resumed = load_video_model(tmp_path / "run" / "model.safetensors").state_dict()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


def test_a_run_that_ends_inside_its_first_epoch_says_that_no_validation_ran(
        finished: tuple[Path, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        module = engine.train(video_config(tmp_path / "run", "train.max_steps=1"), progress=False)
    assert not getattr(module, "last_metrics", None)
    assert any(r.getMessage().startswith("no validation ran: the run ended at step 1") for r in caplog.records)
    assert finished[1].last_metrics  # the 4-step run ends on its epoch's end: validated, no such line


class CtrlC(Crash):
    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = video_config(tmp_path / "run", "train.checkpoint_every_n_steps=2")
    make = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer", lambda c, **kw: make(c, **kw, extra_callbacks=[CtrlC(3)]))
    with caplog.at_level("WARNING"), pytest.raises(SystemExit):  # Lightning's shutdown exits non-zero
        engine.train(cfg, progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()] == [
        f"interrupted at step 3; the last checkpoint is at step 2 ({ckpt}): rerun the same command to resume from it"]


def test_a_finished_video_run_is_left_as_it_is_and_never_moves_it_aside(finished: tuple[Path, Any],
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    model = out / "model.safetensors"
    before = (model.read_bytes(), model.stat().st_mtime_ns)
    module = engine.train(video_config(out), progress=False)
    assert module.already_finished and isinstance(module.network, VidEoMT)
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before
    engine.train(video_config(out, "train.max_steps=1"), resume="never", progress=False)
    (previous,) = (out / "previous").iterdir()
    assert (previous / "model.safetensors").read_bytes() == before[0]
    assert read_metadata(model)["extra"]["global_step"] == 1


def test_eval_of_a_video_model_prints_video_ap_and_identity_switches(finished: tuple[Path, Any],
                                                                     capsys: pytest.CaptureFixture) -> None:
    out, module = finished
    assert main(["eval", "synthetic/video", "--checkpoint", str(out / "model.safetensors"), "--no-progress",
                 *TINY, f"train.out_dir={out}"]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert {"ap", "ap50", "ap75", "ar10", "id_switches"} <= set(lines)
    # The same videos, the same network: the numbers validation logged.
    assert float(lines["ap"]) == pytest.approx(module.last_metrics["ap"], abs=0.01)
    assert float(lines["id_switches"]) == module.last_metrics["id_switches"]


def test_a_video_runs_lightning_checkpoint_loads_as_its_videomt_and_the_image_loader_says_so(
        finished: tuple[Path, Any]) -> None:
    from eomt.checkpoints import CheckpointError, load_model
    from eomt.checkpoints.videomt import is_video_source

    ckpt = finished[0] / "checkpoints" / "last.ckpt"
    assert is_video_source(ckpt) and not is_video_source(finished[0] / "config.yaml")
    from_ckpt = load_video_model(ckpt).state_dict()
    final = load_video_model(finished[0] / "model.safetensors").state_dict()
    assert from_ckpt.keys() == final.keys()
    for key in final:  # the final checkpoint holds the final weights
        torch.testing.assert_close(from_ckpt[key], final[key], rtol=0, atol=0, msg=key)
    with pytest.raises(CheckpointError, match="VidEoMT .* training checkpoint; load it with .*load_video_model"):
        load_model(ckpt)


def test_eval_of_an_image_model_on_a_video_config_runs_it_without_propagation_and_says_so(
        finished: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    from eomt.checkpoints import save_model

    image = save_model(load_video_model(finished[0] / "model.safetensors").eomt, tmp_path / "image.safetensors")
    argv = ["eval", "synthetic/video", "--checkpoint", str(image), "--no-progress", *TINY, f"train.out_dir={tmp_path}"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    first = capsys.readouterr().out
    assert any("query propagation off (zeroed)" in r.getMessage() for r in caplog.records)
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # no random layer: the same numbers every time
    model = load_video_model(image, new_updater="zero")
    assert not model.query_updater.weight.any() and not model.query_updater.bias.any()


def test_clip_transform_moves_frames_and_masks_together() -> None:
    # A square that walks right over 3 frames of 40 x 56; its pixels are bright, the rest dark.
    masks = torch.zeros(2, 3, 40, 56, dtype=torch.bool)
    for t in range(3):
        masks[0, t, 10:26, 6 + 8 * t: 22 + 8 * t] = True
    masks[1, :, 30:, :] = True  # a crowd track: dropped
    clip = torch.where(masks[0, :, None], 255, 20).to(torch.uint8).expand(3, 3, 40, 56).contiguous()
    target = VideoTarget(masks, torch.tensor([1, 2]), torch.tensor([False, True]), torch.tensor([7, 8]),
                         torch.arange(3))
    transform = ClipTransform((64, 64), scale_range=(0.8, 1.2))
    for seed in range(4):
        out, tracks = transform(clip, target, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (3, 3, 64, 64) and tracks.masks.shape[1:] == (3, 64, 64)
        assert tracks.labels.tolist() == [1] and tracks.track_ids.tolist() == [7] and not tracks.is_crowd.any()
        bright = out[:, 0] > 137  # (T, 64, 64)
        inter = (bright & tracks.masks[0]).flatten(1).sum(1).float()
        union = (bright | tracks.masks[0]).flatten(1).sum(1).float()
        assert (inter / union.clamp(min=1) > 0.8).all() or not tracks.masks[0].any(), seed


def test_synthetic_videos_validate_on_whole_videos_of_their_own_val_set() -> None:
    from eomt.training.video_data import VideoDataModule

    cfg = load_experiment("synthetic/video")  # options: num_videos 2000, the training set
    data = VideoDataModule(cfg.data, cfg.model)
    data.setup("fit")
    assert (len(data.train_set), data.train_set.clip_length) == (2000, 5)
    assert (len(data.val_set), data.val_set.clip_length, data.val_set.seed) == (64, None, zlib.crc32(b"val") % 2**31)
    clip, target = data.val_set[0]
    assert clip.shape == (12, 3, 128, 128) and target.masks.shape[1:] == (12, 128, 128)


class PerfectNetwork(torch.nn.Module):
    """Says exactly the tracks of `masks` (N, T, H, W) of `labels`, as the network would see them in
    the resized and padded frames: track n is query 2n, at the input's full resolution."""

    def __init__(self, masks: torch.Tensor, labels: list[int], num_classes: int, size: int) -> None:
        super().__init__()
        self.masks, self.labels, self.num_classes, self.size = masks, labels, num_classes, size

    def forward(self, clip: torch.Tensor) -> Any:
        from types import SimpleNamespace

        from eomt.inference.preprocess import scaled_size_longest

        n, t, h, w = self.masks.shape
        nh, nw = scaled_size_longest(h, w, (self.size, self.size))
        masks = torch.full((1, t, 6, self.size, self.size), -10.0)
        classes = torch.zeros(1, t, 6, self.num_classes + 1)
        classes[..., -1] = 10.0  # no object
        for k, label in enumerate(self.labels):
            scaled = torch.nn.functional.interpolate(self.masks[k][:, None].float(), size=(nh, nw), mode="nearest")
            masks[0, :, 2 * k, :nh, :nw] = torch.where(scaled[:, 0] > 0, 10.0, -10.0)
            classes[0, :, 2 * k] = 0.0
            classes[0, :, 2 * k, label] = 10.0
        return SimpleNamespace(class_logits=classes, mask_logits=masks)


def test_validation_restores_tracks_to_the_video_and_scores_a_panoptic_model_on_its_things() -> None:
    from eomt.training.video_module import VideoEoMTModule, thing_tracks

    cfg = video_config(Path("unused"))  # panoptic, 6 classes, stuff [4, 5], 64 px input
    module = VideoEoMTModule(cfg)
    masks = torch.zeros(2, 3, 40, 56, dtype=torch.bool)  # a landscape video: resized, padded below
    for t in range(3):
        masks[0, t, 20:34, 4 + 12 * t: 20 + 12 * t] = True  # a square (class 1) walking right
    masks[1, :, :12] = True  # the sky (class 4, stuff)
    target = VideoTarget(masks, torch.tensor([1, 4]), torch.zeros(2, dtype=torch.bool), torch.tensor([0, 1]),
                         torch.arange(3))
    module.network = PerfectNetwork(masks, [1, 4], 6, 64)
    with torch.no_grad():
        result = module.video_tracks(torch.zeros(3, 3, 40, 56, dtype=torch.uint8))
    assert result.masks.shape[1:] == (3, 40, 56) and 4 not in result.labels.tolist()
    assert result.labels[0] == 1 and result.track_ids[0] == 0
    evaluator = module.make_evaluator()
    evaluator.update([result], [thing_tracks(target, cfg.model.stuff_classes)])
    metrics = evaluator.compute()
    # Track IoU 0.90 (a row gained in the round trip 40 -> 46 -> 40 px): every threshold up to 0.85.
    assert metrics["ap75"] == pytest.approx(100.0) and metrics["ap"] >= 70 and metrics["id_switches"] == 0
    assert metrics["per_class"]["sky"] != metrics["per_class"]["sky"]  # NaN: no thing track of it


def test_youtube_vis_journey_write_check_train_predict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Synthetic videos written as YouTube-VIS, checked, trained on with the bundled config (shrunk,
    as a subprocess) and the trained VidEoMT run on the written mp4 clips: the user's video path."""
    data = tmp_path / "ytvis"
    assert main(["data", "synthetic", str(data), "--format", "ytvis", "--train", "4", "--val", "1",
                 "--size", "56"]) == 0
    printed = capsys.readouterr().out
    assert f"next: eomt data check ytvis/videomt_large_640 data.root={data}" in printed
    assert main(["data", "check", "ytvis/videomt_large_640", f"data.root={data}"]) == 0
    js = json.loads((data / "train.json").read_text())
    assert [c["id"] for c in js["categories"]] == [11, 12, 17, 22] and len(js["videos"]) == 4
    assert all(len(a["segmentations"]) == 12 for a in js["annotations"])  # one per frame, null where absent
    out = tmp_path / "run"
    # The bundled YouTube-VIS config as shipped, shrunk by overrides as the README shows for a CPU.
    overrides = [f"data.root={data}", "data.clip_length=2", "data.batch_size=2",
                 "data.num_workers=0", "data.scale_range=[0.8,1.2]", "model.embed_dim=32", "model.depth=3",
                 "model.num_heads=2", "model.num_blocks=2", "model.img_size=64", "model.num_queries=6",
                 "train.max_steps=2", "train.num_points=256", "train.warmup_steps=[0,0]", "train.devices=1",
                 "train.precision=32-true", "train.val_every_n_epochs=1", "train.checkpoint_every_n_steps=0",
                 "train.threads=1", f"train.out_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eomt.cli", "train", "ytvis/videomt_large_640", *overrides, "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 4 videos in batches of 2: the epoch ends at step 2 and the val video is scored.
    assert "id_switches" in proc.stdout and "ap50" in proc.stdout
    assert "data check (train): 4 images, no errors" in proc.stderr
    model = load_video_model(out / "model.safetensors")
    assert model.config.class_names == ("circle", "square", "triangle", "cross")
    assert model.config.category_ids == (11, 12, 17, 22)  # the dataset's own ids, kept
    assert read_metadata(out / "model.safetensors")["extra"]["global_step"] == 2
    tracks = tmp_path / "tracks"
    assert main(["predict", "--model", str(out / "model.safetensors"), str(data / "clips"), "--task", "instance",
                 "--out", str(tracks)]) == 0
    assert sorted(p.name for p in tracks.glob("*_overlay.mp4")) == [
        "train_000000_overlay.mp4", "train_000001_overlay.mp4", "train_000002_overlay.mp4",
        "train_000003_overlay.mp4", "valid_000000_overlay.mp4"]
    results = json.loads((tracks / "youtube_vis_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {11, 12, 17, 22}
