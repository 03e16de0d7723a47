"""int8 CPU inference (`Predictor(dtype="int8")`, `eomt.models.fast.int8`): close to fp32 on a trained
model, the caller's model untouched, the CLI end to end, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eomt import EoMT, Predictor, load_model
from eomt.cli import main
from eomt.config import tiny_config
from eomt.errors import OptionError
from eomt.inference.predictor import resolve_dtype
from eomt.inference.quantize import panoptic_agreement, semantic_agreement, to_int8
from eomt.models.fast.int8 import Int8Linear, Int8Weight
from eomt.models.fast.linear import linear, linear_gelu

NUM_IMAGES = 8  # held-out scenes compared per task (128 px each)


def test_int8_linear_approximates_the_fp32_layer_in_every_calling_form() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 96)
    q = Int8Linear(layer)
    x = torch.randn(2, 50, 64)
    with torch.inference_mode():
        ref = layer(x)
        out = q(x)
        rel = (out - ref).norm() / ref.norm()
        assert out.shape == (2, 50, 96) and out.dtype == torch.float32
        assert 0 < rel < 0.02  # int8, so not exact, but within a couple of percent
        # The backbone's functional calls reach the int8 kernel through the weight.
        assert isinstance(q.weight, Int8Weight)
        assert torch.equal(linear(x, q.weight, q.bias), out)
        assert torch.equal(linear_gelu(x, q.weight, q.bias), torch.nn.functional.gelu(out))
        # Another bias than the packed one (or none) replaces it.
        other = torch.randn(96)
        torch.testing.assert_close(linear(x, q.weight, other), out - q.bias + other, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(x, q.weight, None), out - q.bias, rtol=1e-5, atol=1e-5)
    # The weight the kernel holds is the per-channel rounding of the fp32 one.
    step = layer.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    assert ((q.weight.dequantized() - layer.weight.detach()).abs() <= step / 2 + 1e-6).all()


def _results(model: EoMT, images: list, task: str, dtype: str) -> list:
    return Predictor(model, task=task, dtype=dtype)(images)


@pytest.mark.parametrize("task", ["panoptic", "semantic"])
def test_int8_agrees_with_fp32_on_a_trained_model(trained_synthetic_model: tuple[Path, object], task: str) -> None:
    path, val_set = trained_synthetic_model
    model = load_model(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [val_set[i][0] for i in range(NUM_IMAGES)]
    fp32 = _results(model, images, task, "fp32")
    int8 = _results(model, images, task, "int8")
    agree = panoptic_agreement if task == "panoptic" else semantic_agreement
    same, total = map(sum, zip(*(agree(a, b) for a, b in zip(int8, fp32))))
    assert same / total >= 0.99, f"{task}: {same / total:.4f} of pixels equal to fp32"
    # The caller's model is not modified: its layers stay fp32 nn.Linear with the same weights.
    assert type(model.backbone.blocks[0].attn.qkv) is nn.Linear
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_to_int8_quantises_the_vit_linear_layers_only() -> None:
    model = EoMT(tiny_config())
    q = to_int8(model)
    assert all(type(m) is not nn.Linear for m in q.backbone.blocks.modules())
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 4 * len(model.backbone.blocks)
    assert type(q.class_head) is nn.Linear and type(q.mask_head[0]) is nn.Linear  # the mask module is fp32
    assert type(model.backbone.blocks[0].mlp.fc1) is nn.Linear  # a copy was quantised


def test_predict_cli_runs_int8_end_to_end(trained_synthetic_model: tuple[Path, object], tmp_path: Path) -> None:
    path, val_set = trained_synthetic_model
    Image.fromarray(np.asarray(val_set[0][0])).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "scene.png"), "--model", str(path), "--out", str(out),
                 "--dtype", "int8"]) == 0
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert any(name.startswith("scene") for name in written), written


def test_int8_errors_name_the_option() -> None:
    with pytest.raises(OptionError, match=r"dtype: int8 runs on the CPU only \(got device 'cuda'\)"):
        resolve_dtype("int8", torch.device("cuda"))
    model = EoMT(tiny_config())
    model.set_attn_mask_probs([0.0, 0.0])
    with pytest.raises(OptionError, match="compile: int8 runs eager"):
        Predictor(model, dtype="int8", compile=True)
    with pytest.raises(OptionError, match="dtype: int8 needs an EoMT network, got Linear"):
        to_int8(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_predict_cli_refuses_int8_on_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", str(tmp_path / "a.png"), "--model", "no/such.safetensors", "--out", str(tmp_path / "o"),
                 "--dtype", "int8", "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "cuda" in err, err


def test_benchmark_runs_int8_on_a_copy_and_names_what_cannot_run() -> None:
    from eomt.benchmark import inference_forward, skip_reason

    model = EoMT(tiny_config()).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x).mask_logits
    out = inference_forward(model, x, "int8", "eager")().mask_logits
    assert out.shape == expected.shape and not torch.equal(out, expected)  # int8 ran, not fp32
    assert type(model.backbone.blocks[0].attn.qkv) is nn.Linear  # on a copy
    cpu = torch.device("cpu")
    assert skip_reason("int8", "eager", cpu) is None
    assert skip_reason("int8", "compile", cpu) == skip_reason("int8", "eager", torch.device("cuda")) == \
        "int8 runs eager on the CPU"
