"""DINOv3 EoMT checkpoints: transformers (`EomtDinov3ForUniversalSegmentation`) folders both ways,
our own format, `eomt convert`, and the config.json settings the backbone refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eomt import EoMT
from eomt.checkpoints import CheckpointError, load_model, save_model, save_transformers
from eomt.checkpoints.hf_dinov3 import from_hf, to_hf
from eomt.checkpoints.infer import preset_from_repo
from eomt.checkpoints.pretrained import is_preset_name
from eomt.cli import main
from eomt.config import tiny_config
from eomt.models.eomt import IMAGENET_MEAN, IMAGENET_STD

NAMES = ("road", "car", "person", "sky", "grass")


def _model(**overrides: object) -> EoMT:
    torch.manual_seed(0)
    cfg = tiny_config(backbone="dinov3", layer_norm_eps=1e-5, class_names=NAMES, stuff_classes=(3, 4), **overrides)
    model = EoMT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.set_attn_mask_probs([0.0, 0.0])
    return model


def _assert_same(a: EoMT, b: EoMT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_key_table_is_one_to_one() -> None:
    sd = _model(gated_mlp=True).state_dict()
    hf = to_hf(sd)
    assert {"embeddings.cls_token", "embeddings.register_tokens", "embeddings.patch_embeddings.weight",
            "layers.0.attention.q_proj.bias", "layers.0.mlp.gate_proj.weight", "layers.3.layer_scale2.lambda1",
            "layernorm.weight", "query.weight", "class_predictor.bias", "mask_head.fc3.weight",
            "upscale_block.block.1.layernorm2d.bias", "upscale_block.block.0.conv2.weight"} <= set(hf)
    assert "layers.0.attention.k_proj.bias" not in hf and len(hf) == len(sd)
    back = from_hf(hf)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("gated", [False, True])
def test_transformers_round_trip_is_exact(tmp_path: Path, gated: bool) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model(gated_mlp=gated)
    save_transformers(model, tmp_path / "ours")
    hf, info = transformers.EomtDinov3ForUniversalSegmentation.from_pretrained(
        tmp_path / "ours", output_loading_info=True, attn_implementation="sdpa"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.use_gated_mlp == gated and hf.config.id2label[1] == "car"
    images = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = hf.eval()(pixel_values=(images - mean) / std)
        out = model(images)
    assert (out.class_logits - expected.class_queries_logits).abs().max() <= 1e-4
    assert (out.mask_logits - expected.masks_queries_logits).abs().max() <= 1e-4
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    assert loaded.config == model.config
    _assert_same(model, loaded)


def test_config_json_fields(tmp_path: Path) -> None:
    save_transformers(_model(rope_theta=50.0, rope_rescale=1.0), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "eomt_dinov3"
    assert config["architectures"] == ["EomtDinov3ForUniversalSegmentation"]
    assert (config["intermediate_size"], config["key_bias"], config["layer_norm_eps"]) == (256, False, 1e-5)
    assert config["rope_parameters"]["rope_theta"] == 50.0 and config["pos_embed_rescale"] is None
    assert "mlp_ratio" not in config and "backbone" not in config["eomt_extra"]
    cfg = load_model(tmp_path).config
    assert (cfg.backbone, cfg.rope_theta, cfg.rope_rescale) == ("dinov3", 50.0, 1.0)


@pytest.mark.parametrize("change,message", [
    ({"key_bias": True}, "'key_bias': True"),
    ({"hidden_act": "silu"}, "'hidden_act': 'silu'"),
    ({"pos_embed_jitter": 1.1}, "'pos_embed_jitter': 1.1"),
])
def test_unsupported_settings_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    save_transformers(_model(), tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=f"config.json: unsupported EoMT-DINOv3 settings .*{message}"):
        load_model(tmp_path)


def test_own_format_and_convert(tmp_path: Path) -> None:
    model = _model(gated_mlp=True)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    _assert_same(model, loaded)
    args = ["convert", str(tmp_path / "m.safetensors"), "--to", "transformers", "--out", str(tmp_path / "hf")]
    assert main(args) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "eomt_dinov3"
    _assert_same(model, load_model(tmp_path / "hf"))


def test_a_dinov3_preset_name_gives_random_weights(caplog: pytest.LogCaptureFixture) -> None:
    model = EoMT.from_pretrained("coco_panoptic_eomt_small_640_dinov3")
    assert model.config.backbone == "dinov3" and not model.training and not model.masked_attention_active
    assert model.config.name == "coco_panoptic_eomt_small_640_dinov3"
    assert "is a preset name" in caplog.text
    # The official hub spelling of the ADE20K row is a preset name too (not a hub download).
    assert is_preset_name("ade_semantic_eomt_large_512_dinov3") and preset_from_repo(
        "tue-mps/ade_semantic_eomt_large_512_dinov3") == "ade20k_semantic_eomt_large_512_dinov3"


def test_eomt_bench_runs_a_dinov3_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["bench", "--preset", "coco_panoptic_eomt_small_640_dinov3", "--img-size", "64", "96", "--iters", "1",
            "--warmup", "0", "--json", str(tmp_path / "b.json")]
    assert main(args) == 0
    record = json.loads((tmp_path / "b.json").read_text())
    assert "coco_panoptic_eomt_small_640_dinov3" in json.dumps(record)
