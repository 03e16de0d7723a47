"""README.md is true: every ```python snippet and every `eomt ...` command of its ```bash blocks runs.

Snippets run in order, in one namespace, in an empty folder holding tiny stand-ins for the big
files they name (`runs/demo/model.safetensors`: a tiny model at the demo's 128 px; `photo.jpg`).
Commands run in-process through `eomt.cli.main` on the same stand-ins, unless `PARSE_ONLY` lists
them with the reason (real datasets, hub weights, a GPU, or minutes of work): those are parsed as
the CLI parses them, and their config overrides resolved, so a renamed option or key still fails.
A command that matches neither list fails the test: a new README command needs a decision here.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eomt
from eomt import cli
from eomt.config import load_experiment, tiny_config
from eomt.inference.video_io import VideoWriter
from eomt.structures import PanopticResult

README = Path(__file__).resolve().parents[1] / "README.md"
CLASS_NAMES = ("circle", "square", "triangle", "sky", "ground")

# (command prefix, reason): parsed, not run.
PARSE_ONLY = [
    ("bash scripts/setup.sh", "the fresh-machine commands: setup, the 10-minute demo and the whole test suite"),
    ("eomt data synthetic", "'Train on your own data': tests/test_journey.py runs these commands"),
    ("eomt data check custom/", "'Train on your own data': tests/test_journey.py"),
    ("eomt train custom/", "'Train on your own data': tests/test_journey.py"),
    ("eomt eval custom/", "'Train on your own data': tests/test_journey.py"),
    ("eomt predict --model runs/my_run/", "'Train on your own data': tests/test_journey.py"),
    ("eomt train coco/", "needs the COCO dataset and DINOv2-L weights, and a GPU for days"),
    ("eomt eval coco/", "needs the COCO dataset and a trained EoMT-L"),
    ("eomt data check coco/", "needs the COCO dataset"),
    ("eomt bench --preset coco_panoptic_eomt_small_640", "minutes of EoMT-S timing at 640 px"),
    ("eomt bench --preset all --device cuda", "needs a CUDA GPU"),
    ("eomt train synthetic/video", "minutes of training; tests/training/test_video_run.py trains, resumes and "
                                   "evaluates a tiny VidEoMT through the same path"),
    ("eomt data check ytvis/", "tests/training/test_video_run.py writes, checks, trains on and predicts with "
                               "synthetic YouTube-VIS data through these commands"),
    ("eomt train ytvis/", "needs YouTube-VIS and a GPU for days; tests/training/test_video_run.py trains this "
                         "config shrunk on a tiny YouTube-VIS folder"),
    ("eomt eval synthetic/video", "needs the trained VidEoMT; tests/training/test_video_run.py runs eval on one"),
]
# Commands run on the stand-ins.
RUN = ["eomt predict --model runs/demo/", "eomt predict --model runs/video/", "eomt convert ", "eomt export ", "eomt configs"]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _commands() -> list[str]:
    """Every line of a bash block that calls `eomt` (comments and `pip` lines aside)."""
    lines = [line.strip() for block in _blocks("bash") for line in block.splitlines()]
    return [line for line in lines if re.search(r"(^|/|&& )eomt ", line) and not line.startswith("#")]


def _mode(command: str) -> str:
    if any(command.startswith(prefix) for prefix, _ in PARSE_ONLY):
        return "parse"
    if any(command.startswith(prefix) for prefix in RUN):
        return "run"
    raise AssertionError(f"README command not classified in tests/test_readme.py: {command}")


def _argv(command: str) -> list[str]:
    """The `eomt` arguments of a command line (after `eomt` or `.venv/bin/eomt`; comments dropped)."""
    words = shlex.split(command, comments=True)
    start = next(i for i, w in enumerate(words) if w == "eomt" or w.endswith("/eomt"))
    words = words[start + 1:]
    return words[: words.index("&&")] if "&&" in words else words


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder with tiny versions of the files the README names."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = eomt.EoMT(tiny_config(img_size=(128, 128), class_names=CLASS_NAMES, stuff_classes=(3, 4)))
    model.set_attn_mask_probs([0.0, 0.0])  # as the demo's model at the end of annealing
    eomt.save_model(model, Path("runs/demo/model.safetensors"))
    eomt.checkpoints.save_official(model, "pytorch_model.bin")
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(rgb).save("photo.jpg")
    for path in ("images/a.png", "more/b.jpg"):
        Path(path).parent.mkdir(exist_ok=True)
        Image.fromarray(rgb[:, ::-1].copy()).save(path)
    eomt.save_video_model(eomt.VidEoMT.from_image(model), Path("runs/video/model.safetensors"))
    with VideoWriter("clip.mp4", 10) as video:  # a 4-frame clip (PyAV: the dev extra has it)
        for t in range(4):
            video.write(np.roll(rgb, 4 * t, axis=1))
    return tmp_path


def test_readme_has_snippets_and_commands() -> None:
    assert _blocks("python") and len(_commands()) >= 10
    for command in _commands():
        _mode(command)  # every command is either run or parsed, with a reason


def test_python_snippets_run(stand_ins: Path) -> None:
    namespace: dict = {}
    for snippet in _blocks("python"):
        exec(compile(snippet, "README.md", "exec"), namespace)
    # What the README's comments say about the results.
    if "result" in namespace:
        assert isinstance(namespace["result"], PanopticResult)
    if "out" in namespace:
        assert namespace["out"].mask_logits.shape[-2:] == (32, 32)
        assert namespace["out"].class_logits.shape[-1] == len(CLASS_NAMES) + 1


@pytest.mark.parametrize("command", [c for c in _commands() if _mode(c) == "run"])
def test_command_runs(stand_ins: Path, command: str, capsys: pytest.CaptureFixture) -> None:
    argv = _argv(command)
    assert cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    if argv[0] == "predict" and "tracks/" in argv:  # the VidEoMT on the clip
        assert Path("tracks/clip_overlay.mp4").is_file() and Path("tracks/youtube_vis_results.json").is_file()
    elif argv[0] == "predict":
        assert Path("preds/a_overlay.png").is_file() and Path("preds/panoptic.json").is_file()
    if argv[0] == "export":
        assert Path("model.onnx").is_file()


def _parse(argv: list[str]) -> argparse.Namespace:
    """The namespace `eomt.cli.main` would run, without running it."""
    parser = cli.build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after options, as `cli.main` accepts them
        assert hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra), extra
        args.overrides = [*args.overrides, *extra]
    return args


@pytest.mark.parametrize("command", [c for c in _commands() if _mode(c) == "parse"])
def test_command_parses(command: str) -> None:
    args = _parse(_argv(command))
    assert getattr(args, "_run", None) is not None, command
    source = getattr(args, "config", None) or getattr(args, "source", None)
    if getattr(args, "overrides", None) and source:
        load_experiment(source, args.overrides)  # every override names a known key with a valid value
