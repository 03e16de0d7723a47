"""Export of the network (ONNX, TorchScript, ExportedProgram) and graph capture (compile, export)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from eomt import EoMT
from eomt.config import tiny_config
from eomt.export import ExportError, export_model
from eomt.inference.exported import OnnxNetwork, load_exported


def _model(probs: list[float]) -> EoMT:
    model = EoMT(tiny_config()).eval()
    model.set_attn_mask_probs(probs)
    # LayerScale 1 instead of 1e-5 so that every block changes the output (a stricter comparison).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    return model


@pytest.fixture
def model() -> EoMT:
    return _model([0.0, 0.0])


def _eager(model: EoMT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return out.mask_logits, out.class_logits


def _assert_close(out, ref, atol: float) -> None:
    for got, want in zip((out.mask_logits, out.class_logits), ref):
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= atol


def test_onnx_legacy_roundtrip_with_config_and_batch_chunks(model: EoMT, tmp_path) -> None:
    path = export_model(model, tmp_path / "net", format="onnx", batch=2, onnx_exporter="legacy")
    assert path.suffix == ".onnx" and path.is_file()
    net = OnnxNetwork(path)
    assert net.config == model.config
    assert net.input_shape == (2, 3, 64, 64)
    x = torch.rand(3, 3, 64, 64)  # 3 images through a batch-2 graph: two chunks, the last padded
    out = net(x)
    _assert_close(out, _eager(model, x), atol=1e-3)
    assert out.mask_logits_per_block == [] and out.class_logits_per_block == []
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 64, 64\), got \(1, 3, 32, 32\)"):
        net(torch.rand(1, 3, 32, 32))


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="onnxscript not installed")
def test_onnx_dynamo_exporter_matches_pytorch(model: EoMT, tmp_path) -> None:
    path = export_model(model, tmp_path / "net.onnx", onnx_exporter="dynamo", img_size=(48, 80))
    net = load_exported(path)
    assert isinstance(net, OnnxNetwork) and net.img_size == (48, 80)
    assert net.config == model.config.replace(img_size=(48, 80))  # the graph's size, for resizing
    x = torch.rand(1, 3, 48, 80)
    _assert_close(net(x), _eager(model, x), atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="onnxscript not installed")
@pytest.mark.parametrize("family", [dict(backbone="dinov3", layer_norm_eps=1e-5), dict(swiglu=True)])
def test_onnx_dynamo_graphs_of_every_block_kind_load_at_the_default_opset(family: dict, tmp_path) -> None:
    """DINOv3 (RoPE halves) and SwiGLU (packed halves) blocks: no opset-18 op in the default opset-17 graph."""
    model = EoMT(tiny_config(**family)).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    path = export_model(model, tmp_path / "net.onnx", onnx_exporter="dynamo")
    x = torch.rand(1, 3, 64, 64)
    _assert_close(load_exported(path)(x), _eager(model, x), atol=1e-3)


@pytest.mark.parametrize("probs", [[1.0, 1.0], [0.0, 0.5]])
def test_export_refuses_active_masked_attention(tmp_path, probs: list[float]) -> None:
    model = _model(probs)
    with pytest.raises(ExportError, match="masked attention is still active") as err:
        export_model(model, tmp_path / "net.ts", format="torchscript")
    assert "--force-unmasked" in str(err.value) and "mask annealing" in str(err.value)
    assert not (tmp_path / "net.ts").exists()


def test_force_unmasked_exports_the_plain_network_and_restores_the_model(tmp_path) -> None:
    model = _model([1.0, 1.0])
    path = export_model(model, tmp_path / "net.ts", format="torchscript", force_unmasked=True)
    assert model.attn_mask_probs.tolist() == [1.0, 1.0] and model.masked_attention_active
    x = torch.rand(1, 3, 64, 64)
    unmasked = _model([0.0, 0.0])
    unmasked.load_state_dict({k: v for k, v in model.state_dict().items() if k != "attn_mask_probs"}, strict=False)
    _assert_close(load_exported(path, trust_pickle=True)(x), _eager(unmasked, x), atol=1e-5)  # our own .ts
    # and the masked model really computes something else, so the check above is meaningful
    assert (_eager(model, x)[0] - _eager(unmasked, x)[0]).abs().max() > 1e-3


def test_torchscript_roundtrip(model: EoMT, tmp_path) -> None:
    path = export_model(model, tmp_path / "net.ts", format="torchscript")
    net = load_exported(path, trust_pickle=True)  # a TorchScript file is code: only trusted ones
    assert net.config == model.config
    x = torch.rand(1, 3, 64, 64)
    _assert_close(net(x), _eager(model, x), atol=1e-5)


def test_torch_export_of_the_masked_network_matches_eager() -> None:
    # The unmasked network goes through torch.export in the exported-program test below; with
    # masked attention (probs 1, no random draw) the graph also holds the per-block predictions.
    probs = [1.0, 1.0]
    model = _model(probs)
    x = torch.rand(2, 3, 64, 64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        out = program.module()(x)
    _assert_close(out, _eager(model, x), atol=1e-5)
    assert len(out.mask_logits_per_block) == 2


def test_exported_program_file_roundtrip(model: EoMT, tmp_path) -> None:
    path = export_model(model, tmp_path / "net", format="exported-program", img_size=(32, 48))
    assert path.suffix == ".pt2"
    net = load_exported(path)
    assert net.config == model.config.replace(img_size=(32, 48)) and net.input_shape == (1, 3, 32, 48)
    x = torch.rand(1, 3, 32, 48)
    _assert_close(net(x), _eager(model, x), atol=1e-5)


@pytest.mark.parametrize("probs", [[0.0, 0.0], [1.0, 1.0]])
def test_compile_fullgraph_matches_eager(probs: list[float]) -> None:
    # fullgraph=True fails on any graph break (e.g. a Python branch on a tensor value).
    # aot_eager traces forward through AOTAutograd without code generation, keeping the test quick;
    # benchmarks/inference.py --modes compile runs the inductor backend.
    torch._dynamo.reset()
    model = _model(probs)
    x = torch.rand(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(x)
    _assert_close(out, _eager(model, x), atol=1e-4)


def test_export_rejects_bad_requests(model: EoMT, tmp_path) -> None:
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        export_model(model, tmp_path / "x", format="tflite")
    with pytest.raises(ExportError, match=r"img_size \(30, 64\) must be two positive multiples of the patch size 16"):
        export_model(model, tmp_path / "x", format="torchscript", img_size=(30, 64))
    with pytest.raises(ValueError, match="unknown exported format '.bin'"):
        (tmp_path / "m.bin").write_bytes(b"")
        load_exported(tmp_path / "m.bin")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxNetwork(tmp_path / "missing.onnx")


def test_cli_export_writes_file_and_reports_refusal(model: EoMT, tmp_path, capsys) -> None:
    from eomt.checkpoints import save_model
    from eomt.cli import main

    ckpt = save_model(model, tmp_path / "model.safetensors")
    out = tmp_path / "net.ts"
    assert main(["export", "--model", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    masked = save_model(_model([1.0, 1.0]), tmp_path / "masked.safetensors")
    assert main(["export", "--model", str(masked), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 1
    assert "masked attention is still active" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".ts"), ("exported-program", ".pt2"), ("onnx", ".onnx")])
def test_export_files_are_written_atomically_with_the_umask(model: EoMT, tmp_path, monkeypatch, fmt, suffix) -> None:
    import os

    from eomt import export as export_module
    from eomt.files import write_atomic

    old = os.umask(0o027)
    try:
        path = export_model(model, tmp_path / "net", format=fmt, onnx_exporter="legacy")
    finally:
        os.umask(old)
    assert path.name == f"net{suffix}" and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporaries
    assert path.stat().st_mode & 0o777 == 0o640
    assert load_exported(path, trust_pickle=True).config == model.config

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # A failure while writing keeps the earlier file as it was and leaves nothing else behind.
    before = path.read_bytes()
    monkeypatch.setattr(export_module, "write_atomic",
                        lambda target, data: write_atomic(target, lambda tmp: (tmp.write_bytes(b"partial"), fail())))
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, tmp_path / "net", format=fmt, onnx_exporter="legacy")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
