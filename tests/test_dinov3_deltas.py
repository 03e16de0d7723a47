"""Official DINOv3 EoMT release files: backbone deltas detected, rebuilt with the base, never added twice.

A delta file is built as the official code writes one: official `network.*` key names, the backbone
as (fine-tuned - base), heads and queries absolute; the base is a random transformers
`DINOv3ViTModel` saved with `save_pretrained` (the layout of Meta's hub repos).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from eomt.checkpoints import CheckpointError, load_model, save_official, to_official_state_dict
from eomt.checkpoints.dinov3 import base_model_id, fit_dinov3
from eomt.checkpoints.official_dinov3 import delta_evidence, read_base
from eomt.config import tiny_config
from eomt.models.eomt import EoMT

transformers = pytest.importorskip("transformers")

CFG = dict(backbone="dinov3", num_heads=1, layer_norm_eps=1e-5)  # head dim 64, as every DINOv3 ViT


def _hf_base(folder: Path, d: int = 64, depth: int = 4, heads: int = 1) -> Path:
    """A random transformers DINOv3 ViT saved like Meta's hub repos; LayerNorm weights made non-trivial."""
    config = transformers.DINOv3ViTConfig(
        hidden_size=d, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * d,
        patch_size=16, num_register_tokens=4, layer_norm_eps=1e-5,
    )
    model = transformers.DINOv3ViTModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 1 or "token" in name:
                p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def _fine_tuned(base: Path, **overrides) -> EoMT:
    """A DINOv3 EoMT whose backbone is the base plus a small fine-tuning change, annealing finished."""
    model = EoMT(tiny_config(**{**CFG, **overrides}))
    fit_dinov3(model, read_base(base)[1], "base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("backbone."):
                p.add_(1e-3 * torch.randn_like(p))
    model.set_attn_mask_probs([0.0] * model.config.num_blocks)
    return model.eval()


def _delta_file(model: EoMT, base: Path, path: Path) -> Path:
    """`model` written as an official DINOv3 release: backbone minus base, the rest absolute."""
    base_sd = read_base(base)[1]
    out = {}
    for key, value in to_official_state_dict(model).items():
        if key.startswith("network.encoder.backbone."):
            value = value - base_sd["backbone." + key[len("network.encoder.backbone."):]]
        elif key.startswith("network.encoder.pixel_"):
            value = torch.zeros_like(value)  # the official code sums buffers too
        out[key] = value.detach().clone().contiguous()
    save_file(out, str(path))
    return path


def _same(a: EoMT, b: EoMT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=0, msg=k)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        oa, ob = a(x), b(x)
    torch.testing.assert_close(oa.mask_logits, ob.mask_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(oa.class_logits, ob.class_logits, atol=1e-5, rtol=0)


def test_delta_file_loads_with_its_base_and_equals_the_model(tmp_path: Path, caplog) -> None:
    base = _hf_base(tmp_path / "base")
    model = _fine_tuned(base)
    delta = _delta_file(model, base, tmp_path / "release.safetensors")
    with caplog.at_level(logging.INFO, logger="eomt.checkpoints.loader"):
        loaded = load_model(delta, backbone=base, img_size=64)
    _same(model, loaded)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded "))
    assert "backbone deltas + base" in line and "LayerNorm weight RMS" in line
    again = EoMT.from_pretrained(delta, backbone=str(base), img_size=64)  # the public entry point
    _same(model, again)
    # The Lightning form of a release: {"state_dict": ...} with the criterion's buffer beside the network.
    ckpt = tmp_path / "release.ckpt"
    torch.save({"state_dict": {**load_file(str(delta)), "criterion.empty_weight": torch.ones(6)}}, ckpt)
    _same(model, load_model(ckpt, backbone=base, img_size=64))


def test_delta_file_without_base_names_the_base_it_needs(tmp_path: Path) -> None:
    base = _hf_base(tmp_path / "base")
    delta = _delta_file(_fine_tuned(base), base, tmp_path / "release.safetensors")
    with pytest.raises(CheckpointError, match=r"deltas .*backbone="):
        load_model(delta)
    # A ViT-S sized release names Meta's hub repo of that size.
    small = EoMT(tiny_config(backbone="dinov3", embed_dim=384, num_heads=6, depth=1, num_blocks=1))
    sd = {k: (v * 1e-3 if ".backbone." in k else v).contiguous() for k, v in to_official_state_dict(small).items()}
    save_file(sd, str(tmp_path / "small.safetensors"))
    with pytest.raises(CheckpointError, match="facebook/dinov3-vits16-pretrain-lvd1689m"):
        load_model(tmp_path / "small.safetensors")
    assert base_model_id(768) == "facebook/dinov3-vitb16-pretrain-lvd1689m"
    assert base_model_id(1024) == "facebook/dinov3-vitl16-pretrain-lvd1689m"


def test_absolute_file_is_detected_and_loads_alone(tmp_path: Path, caplog) -> None:
    base = _hf_base(tmp_path / "base")
    model = _fine_tuned(base)
    written = save_official(model, tmp_path / "pytorch_model.bin")  # our own fine-tune, official layout
    with caplog.at_level(logging.INFO, logger="eomt.checkpoints.loader"):
        loaded = load_model(written)
    _same(model, loaded)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded "))
    assert "absolute backbone" in line and "official DINOv3 EoMT" in line


def test_absolute_file_with_a_base_is_not_added_twice(tmp_path: Path, caplog) -> None:
    base = _hf_base(tmp_path / "base")
    model = _fine_tuned(base)
    written = save_official(model, tmp_path / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="eomt.checkpoints.loader"):
        loaded = load_model(written, backbone=base)
    _same(model, loaded)
    assert any("backbone= is not used" in r.getMessage() for r in caplog.records)


def test_delta_statistic_separates_deltas_from_weights(tmp_path: Path) -> None:
    base = _hf_base(tmp_path / "base")
    ours = {k: v for k, v in _fine_tuned(base).state_dict().items()}
    deltas, evidence = delta_evidence(ours)
    assert not deltas and "RMS" in evidence
    base_sd = read_base(base)[1]
    diff = {k: (v - base_sd[k]) if k in base_sd else v for k, v in ours.items()}
    assert delta_evidence(diff)[0]
    fresh = EoMT(tiny_config(**CFG)).state_dict()  # untrained LayerNorms (ones) are weights, not deltas
    assert not delta_evidence(fresh)[0]


def test_init_from_refuses_a_delta_file(tmp_path: Path) -> None:
    from eomt.checkpoints import init_from

    base = _hf_base(tmp_path / "base")
    delta = _delta_file(_fine_tuned(base), base, tmp_path / "release.safetensors")
    with pytest.raises(CheckpointError, match="deltas"):
        init_from(EoMT(tiny_config(**CFG)), delta)


def test_convert_rebuilds_a_delta_file_once(tmp_path: Path, capsys) -> None:
    from eomt.cli import main

    base = _hf_base(tmp_path / "base")
    model = _fine_tuned(base)
    delta = _delta_file(model, base, tmp_path / "release.safetensors")
    out = tmp_path / "absolute.safetensors"
    assert main(["convert", str(delta), "--backbone", str(base), "--img-size", "64", "--to", "eomt",
                 "--out", str(out)]) == 0
    _same(model, load_model(out))  # our own file: absolute, loads alone
