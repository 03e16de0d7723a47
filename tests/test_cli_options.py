"""Paths, names and options: a mistyped path is missing (never a hub id), a bad option is one line
naming it, a mistyped option gets a suggestion, an unannealed model warns, and the official layout
keeps the label space."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eomt.checkpoints import CheckpointError, hub, load_model, save_model
from eomt.cli import main
from eomt.config import tiny_config
from eomt.inference.predictor import Predictor
from eomt.models import EoMT

ROOT = Path(__file__).resolve().parents[1]


def _eomt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "eomt.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records hub downloads instead of making them."""
    asked: list[str] = []

    def download(repo_id: str, revision: str | None = None) -> Path:
        asked.append(repo_id)
        raise CheckpointError(f"{repo_id}: hub (test stand-in)")

    monkeypatch.setattr(hub, "download", download)
    return asked


def test_a_mistyped_local_path_is_missing_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  no_hub: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"runs/dmeo: no such file or folder.*did you mean runs/demo\?"):
        load_model("runs/dmeo")
    for missing in ("elsewhere/model.safetensors", "a/b.pt2", "x/y.ckpt", "w/m.bin", "q/r.onnx"):
        with pytest.raises(CheckpointError, match="no such file or folder"):
            load_model(missing)
    assert no_hub == []  # nothing local could be meant only for a bare owner/name:
    with pytest.raises(CheckpointError, match="test stand-in"):
        load_model("tue-mps/some_model")
    assert no_hub == ["tue-mps/some_model"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = EoMT(tiny_config(task="panoptic", stuff_classes=(3, 4), class_names=("a", "b", "c", "d", "e")))
    model.set_attn_mask_probs([0.0, 0.0])
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.mark.parametrize("option, message", [
    (["--top-k", "0"], "--top-k: 0 must be at least 1"),
    (["--compile", "bogus"], "--compile: unknown mode 'bogus'"),
    (["--compile", "max-autotun"], "did you mean 'max-autotune'?"),
    (["--threshold", "2"], r"--threshold: 2 is not a score; expected a number in [0, 1]"),
    (["--mask-threshold", "-0.1"], "--mask-threshold: -0.1 is not a score"),
    (["--batch-size", "0"], "--batch-size: 0 must be at least 1"),
    (["--max-pixels", "-1"], "--max-pixels: -1 must be >= 0 (0 = no limit)"),
])
def test_predict_option_errors_name_the_option(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               option: list[str], message: str) -> None:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "a.png"), "--model", str(checkpoint), "--out", str(tmp_path / "o"), *option])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()  # refused before anything was loaded or written


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 2.0}, r"threshold: 2 is not a score"), ({"top_k": 0}, "top_k: 0 must be at least 1"),
    ({"compile": "bogus"}, "compile: unknown mode 'bogus'"), ({"mask_threshold": 1.5}, "mask_threshold: 1.5"),
])
def test_predictor_options_are_checked_before_loading(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Predictor("no/such/model.safetensors", **kwargs)  # the option, not the missing file


def test_predict_refuses_an_out_that_is_a_file(checkpoint: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("mine")
    proc = _eomt("predict", "a.png", "--model", str(checkpoint), "--out", "notes.txt", cwd=tmp_path)
    assert proc.returncode == 1 and "--out: notes.txt is a file" in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_mistyped_option_gets_a_suggestion(tmp_path: Path) -> None:
    proc = _eomt("predict", "a.png", "--model", "m", "--out", "o", "--treshold", "0.5", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "unrecognized" in lines[0] and "'--treshold' (did you mean '--threshold'?)" in lines[0]


def test_predict_missing_model_path_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, no_hub: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", "a.png", "--model", "runs/dmeo", "--out", "o"]) == 1
    assert "runs/dmeo: no such file or folder" in capsys.readouterr().err and no_hub == []


def test_an_unannealed_checkpoint_warns_when_predicting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = EoMT(tiny_config())
    model.set_attn_mask_probs([0.0, 0.5])
    path = save_model(model, tmp_path / "unfinished.safetensors")
    with caplog.at_level(logging.WARNING):
        Predictor(path)
    lines = [r.getMessage() for r in caplog.records if "not fully annealed" in r.getMessage()]
    assert len(lines) == 1 and "unfinished.safetensors" in lines[0] and "[0.0, 0.5]" in lines[0]
    caplog.clear()
    model.set_attn_mask_probs([0.0, 0.0])
    with caplog.at_level(logging.WARNING):
        Predictor(save_model(model, tmp_path / "annealed.safetensors"))
        Predictor(EoMT(tiny_config()))  # a network passed in: the caller's (validation during training)
    assert not [r for r in caplog.records if "not fully annealed" in r.getMessage()]


def test_official_round_trip_keeps_the_label_space(checkpoint: Path, tmp_path: Path) -> None:
    proc = _eomt("convert", str(checkpoint), "--to", "official", "--out", "off", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pytorch_model.eomt.json" in proc.stdout
    assert main(["convert", str(tmp_path / "off"), "--to", "eomt", "--out", str(tmp_path / "back.safetensors")]) == 0
    original, back = load_model(checkpoint).config, load_model(tmp_path / "back.safetensors").config
    assert back.class_names == original.class_names == ("a", "b", "c", "d", "e")
    assert back.stuff_classes == original.stuff_classes == (3, 4) and back == original


def test_command_help_comes_from_the_docstring_and_defaults_are_shown(capsys: pytest.CaptureFixture[str]) -> None:
    from eomt import cli

    assert cli.command_help("`eomt x A`: do one thing.\n\nMore.") == "do one thing"
    assert cli.command_help("`eomt d a`: check.\n`eomt d b`: write.") == "check; write"
    parser = cli.build_parser()
    assert set(parser.commands) == set(cli.VERBS)
    assert "--threshold" in parser.commands["predict"].options  # our record, for did-you-mean hints
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "untimed calls first (default: 2)" in out and out.count("(default: 2)") == 1
    assert "latency, throughput, FLOPs and peak memory" in out  # the module docstring


def test_only_the_error_family_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from eomt.commands import configs
    from eomt.errors import EomtError, OptionError

    def user_error(args: object) -> int:
        raise OptionError("--thing: 3 must be at most 2")

    def bug(args: object) -> int:
        raise KeyError("internal")

    monkeypatch.setattr(configs, "run", user_error)
    assert main(["configs"]) == 1
    assert capsys.readouterr().err.strip() == "eomt configs: error: --thing: 3 must be at most 2"
    assert issubclass(OptionError, EomtError) and issubclass(OptionError, ValueError)
    monkeypatch.setattr(configs, "run", bug)
    with pytest.raises(KeyError, match="internal"):
        main(["configs"])


def test_a_system_refusal_is_one_line_naming_the_path(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from eomt.commands import configs

    def refused(args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "x.png"))

    monkeypatch.setattr(configs, "run", refused)
    assert main(["configs"]) == 1
    assert capsys.readouterr().err.strip() == f"eomt configs: error: [Errno 13] Permission denied: '{tmp_path}/out/x.png'"
    monkeypatch.setattr(configs, "run", lambda args: (_ for _ in ()).throw(OSError("no errno: a bug")))
    with pytest.raises(OSError, match="no errno"):
        main(["configs"])
