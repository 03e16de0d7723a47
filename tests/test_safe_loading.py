"""No loader runs code from the file it loads unless told to (`trust_pickle=True`, `--trust-pickle`).

Each payload file, un-pickled without restriction, creates a marker file; every loader must refuse
it and leave no marker, also with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` in the environment.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eomt.checkpoints import CheckpointError, init_from, load_model, save_model
from eomt.config import tiny_config
from eomt.export import export_model
from eomt.inference.exported import load_exported
from eomt.inference.predictor import Predictor
from eomt.models import EoMT
from eomt.training import rerun
from eomt.training.run import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Un-pickled without restriction, creates `marker` (stands in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def force_no_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's switch for "un-pickle everything unless the caller said otherwise": ours say so.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.fixture(scope="module")
def model() -> EoMT:
    m = EoMT(tiny_config())
    m.set_attn_mask_probs([0.0, 0.0])
    return m.eval()


def _payload_file(path: Path, marker: Path, state_dict: dict | None = None) -> Path:
    torch.save({"state_dict": state_dict or {}, "hyper_parameters": Payload(marker)}, path)
    return path


def _runs_unrestricted(path: Path, marker: Path) -> None:
    """The payload is real: an unrestricted load creates the marker (then it is removed)."""
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pth", "model.ckpt", "bare.pt"])
def test_load_model_and_init_from_refuse_a_pickle_payload(model: EoMT, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    path = _payload_file(tmp_path / name, marker, {f"network.{k}": v for k, v in model.state_dict().items()})
    _runs_unrestricted(path, marker)
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*--trust-pickle"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects"):
        init_from(EoMT(tiny_config()), path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects"):
        Predictor(path)
    assert not marker.exists()


def test_trust_pickle_loads_a_trusted_file_with_python_objects(model: EoMT, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    sd = {f"network.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_model(path)
    loaded = load_model(path, trust_pickle=True)
    assert torch.equal(loaded.class_head.weight, model.class_head.weight)


def _pt2_with_payload(model: EoMT, tmp_path: Path, marker: Path) -> Path:
    """A genuine .pt2 whose sample inputs member is replaced by a pickle payload."""
    good = export_model(model, tmp_path / "good.pt2", format="exported-program")
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = buffer.getvalue()
            dst.writestr(info, data)
    return bad


def test_exported_program_payload_is_refused(model: EoMT, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    bad = _pt2_with_payload(model, tmp_path, marker)
    assert isinstance(load_exported(tmp_path / "good.pt2"), object)  # a genuine file still loads
    with pytest.raises(CheckpointError, match=r"sample_inputs/model.pt holds pickled Python objects.*--trust-pickle"):
        load_exported(bad)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        Predictor(bad)
    assert not marker.exists()
    # The escape hatch: torch's own reader, which un-pickles the member (the payload is real).
    with pytest.raises(Exception):  # noqa: B017 - torch fails on the payload's result after running it
        load_exported(bad, trust_pickle=True)
    assert marker.exists()


def test_torchscript_needs_trust(model: EoMT, tmp_path: Path) -> None:
    path = export_model(model, tmp_path / "m.ts", format="torchscript")
    with pytest.raises(CheckpointError, match=r"TorchScript file holds code.*--trust-pickle"):
        load_exported(path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        Predictor(path)
    assert Predictor(path, trust_pickle=True).input_size == (64, 64)


def _eomt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "eomt.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_predict_cli_refuses_a_payload_and_trust_pickle_is_the_way_in(
    model: EoMT, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eomt.cli import main

    marker = tmp_path / "marker"
    bad = _pt2_with_payload(model, tmp_path, marker)
    ts = export_model(model, tmp_path / "m.ts", format="torchscript")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(bad), "--out", str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(ts), "--out", str(tmp_path / "o2")]) == 1
    assert "--trust-pickle" in capsys.readouterr().err and not marker.exists()
    proc = _eomt("predict", "a.png", "--model", str(ts), "--out", "o3", "--trust-pickle", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "o3" / "a_overlay.png").is_file()


@pytest.mark.parametrize("verb", ["predict", "eval", "export", "bench", "convert", "train"])
def test_every_loading_command_has_trust_pickle(verb: str) -> None:
    from eomt.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
    assert any("--trust-pickle" in a.option_strings for a in sub._actions)


def test_a_planted_last_ckpt_runs_nothing_on_resume(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 3, "hyper_parameters": {"config": Payload(marker)}, "state_dict": {}}, last)
    _runs_unrestricted(last, marker)
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    with pytest.raises(ValueError, match=r"last.ckpt: holds pickled Python objects.*--resume never"):
        rerun.plan_run(tmp_path / "run", {}, "auto", lambda: 10)  # the rerun check reads it first
    with pytest.raises(ValueError, match="pickled Python objects"):
        AtomicCheckpointIO().load_checkpoint(last)  # Lightning's own load on resume
    assert not marker.exists()


def test_our_training_checkpoint_content_loads_weights_only(tmp_path: Path) -> None:
    # What Lightning and EoMTModule put in last.ckpt: tensors, numbers, strings and plain containers.
    ckpt = {"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.x", "state_dict": {"w": torch.ones(2)},
            "loops": {"fit_loop": {"state_dict": {}}}, "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
            "hyper_parameters": {"config": {"model": {"name": "x"}}}, "rng_state": {"torch": torch.get_rng_state()}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_a_truncated_last_ckpt_is_one_line_naming_it(tmp_path: Path) -> None:
    model = EoMT(tiny_config())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 1, "state_dict": model.state_dict()}, last)
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"last.ckpt: unreadable training checkpoint.*truncated") as e:
        rerun.plan_run(tmp_path / "run", {}, "auto", lambda: 10)
    assert "\n" not in str(e.value)


def test_save_model_output_is_not_affected(model: EoMT, tmp_path: Path) -> None:
    # safetensors files never un-pickle: the environment variable changes nothing for them.
    assert load_model(save_model(model, tmp_path / "m.safetensors")).config == model.config
