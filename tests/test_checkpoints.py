"""Checkpoints: official, transformers, own-format and Lightning round trips; DINOv2 backbone
loading with patch/pos-embed resampling; error messages; `eomt convert` end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from eomt import EoMT
from eomt.checkpoints import (
    CheckpointError,
    load_dinov2_backbone,
    load_model,
    read_metadata,
    resample_patch_embed,
    save_model,
    save_transformers,
    to_official_state_dict,
)
from eomt.checkpoints.infer import infer_config, with_label_space
from eomt.cli import main
from eomt.config import PRESET_NAMES, preset, tiny_config

NAMES = ("road", "car", "person", "sky", "grass")


def _model(**overrides: object) -> EoMT:
    """A tiny model whose every tensor is random, so a swapped or dropped tensor shows."""
    cfg = tiny_config(class_names=NAMES, stuff_classes=(3, 4), **overrides)
    model = EoMT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    model.set_attn_mask_probs([0.25, 0.0])
    return model


def _assert_same(a: EoMT, b: EoMT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _official_file(model: EoMT, path: Path) -> Path:
    sd = to_official_state_dict(model)
    sd["criterion.empty_weight"] = torch.ones(model.config.num_classes + 1)
    torch.save(sd, path)
    return path


# ----------------------------------------------------------------------------- official layout
def _official_keys(depth: int, num_upscale: int) -> set[str]:
    """The key table of the official release files (reference, section 2.7)."""
    b = "network.encoder.backbone."
    keys = {"network.attn_mask_probs", "network.encoder.pixel_mean", "network.encoder.pixel_std",
            b + "cls_token", b + "reg_token", b + "pos_embed", b + "patch_embed.proj.weight",
            b + "patch_embed.proj.bias", b + "norm.weight", b + "norm.bias", "network.q.weight",
            "network.class_head.weight", "network.class_head.bias"}
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                 "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"]
    keys |= {f"{b}blocks.{i}.{n}" for i in range(depth) for n in per_block}
    keys |= {f"network.mask_head.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    keys |= {f"network.upscale.{i}.{n}" for i in range(num_upscale)
             for n in ("conv1.weight", "conv1.bias", "conv2.weight", "norm.weight", "norm.bias")}
    return keys


def test_official_key_table_matches_the_release_layout() -> None:
    with torch.device("meta"):
        large = EoMT(preset("coco_panoptic_eomt_large_640"))
    sd = to_official_state_dict(large)
    assert set(sd) == _official_keys(24, 2) and len(sd) == 365
    assert sd["network.encoder.backbone.pos_embed"].shape == (1, 1600, 1024)
    assert sd["network.upscale.0.conv1.weight"].shape == (1024, 1024, 2, 2)
    assert sd["network.upscale.0.conv2.weight"].shape == (1024, 1, 3, 3)
    assert sd["network.encoder.pixel_mean"].shape == (1, 3, 1, 1)


def test_official_file_round_trips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    path = _official_file(model, tmp_path / "pytorch_model.bin")
    with caplog.at_level(logging.INFO):
        loaded = load_model(path)
    assert "official EoMT release" in caplog.text
    _assert_same(model, loaded)
    assert loaded._mask_active == (True, False)
    back = to_official_state_dict(loaded)
    original = torch.load(path, weights_only=True)
    del original["criterion.empty_weight"]
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_official_lightning_ckpt_without_config(tmp_path: Path) -> None:
    model = _model()
    sd = {k.replace("network.", "network._orig_mod.", 1): v for k, v in to_official_state_dict(model).items()}
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": {"lr": 1e-4}}, tmp_path / "last.ckpt")
    _assert_same(model, load_model(tmp_path / "last.ckpt"))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_is_inferred_from_shapes(name: str) -> None:
    cfg = preset(name)
    with torch.device("meta"):  # shapes only, no memory
        sd = EoMT(cfg).state_dict()
    # A RoPE backbone stores no grid: its input size is 640 unless told (the 1280 rows are told).
    size = tuple(cfg.img_size) if cfg.backbone == "dinov3" and cfg.img_size != (640, 640) else None
    assert with_label_space(infer_config(sd, name, img_size=size)) == cfg


def test_label_space_from_counts_for_another_architecture(tmp_path: Path) -> None:
    model = EoMT(tiny_config(num_classes=80, num_queries=200))  # COCO instance counts, tiny ViT
    loaded = load_model(_official_file(model, tmp_path / "m.bin"))
    coco = preset("coco_instance_eomt_large_640")
    assert (loaded.config.task, loaded.config.class_names) == ("instance", coco.class_names)
    assert loaded.config.name == ""  # not claimed to be the paper model


# ----------------------------------------------------------------------------- own formats
def test_own_format_round_trip_keeps_config_and_extra(tmp_path: Path) -> None:
    model = _model(task="semantic", name="mine")
    path = tmp_path / "ckpt" / "model.safetensors"
    save_model(model, path, extra={"step": 12, "pq": 0.5})
    save_model(model, path, extra={"step": 13})  # overwrite in place
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.config.class_names == NAMES
    _assert_same(model, loaded)
    assert read_metadata(path)["extra"] == {"step": 13}
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no temp files left


def test_run_folder_with_own_file_keeps_config(tmp_path: Path) -> None:
    model = _model(task="instance")
    save_model(model, tmp_path / "model.safetensors")
    (tmp_path / "config.yaml").write_text("model: {}\n")  # a run folder holds more than weights
    assert load_model(tmp_path).config == model.config


def test_own_lightning_ckpt_uses_stored_config(tmp_path: Path) -> None:
    model = _model(task="instance")
    sd = {"network." + k: v for k, v in model.state_dict().items()}
    sd["criterion.empty_weight"] = torch.ones(6)
    ckpt = {"state_dict": sd, "hyper_parameters": {"model_config": model.config.to_dict()}, "global_step": 7}
    torch.save(ckpt, tmp_path / "epoch=1.ckpt")
    loaded = load_model(tmp_path / "epoch=1.ckpt")
    assert loaded.config == model.config
    _assert_same(model, loaded)


def test_bare_state_dict_is_accepted(tmp_path: Path) -> None:
    model = _model()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    _assert_same(model, load_model(tmp_path / "weights.pt"))


# ----------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("swiglu", [False, True])
def test_transformers_round_trip_is_exact(tmp_path: Path, swiglu: bool) -> None:
    transformers = pytest.importorskip("transformers")
    model = _model(swiglu=swiglu)
    save_transformers(model, tmp_path / "ours")
    hf, info = transformers.EomtForUniversalSegmentation.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    names = set(hf.state_dict())
    assert ("layers.0.mlp.gate_proj.weight" in names) == swiglu
    assert hf.config.id2label[1] == "car"
    hf.save_pretrained(tmp_path / "hf", max_shard_size="50KB")  # sharded: index + several files
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    loaded = load_model(tmp_path / "hf")
    assert loaded.config == model.config
    _assert_same(model, loaded)


def test_transformers_legacy_swiglu_names(tmp_path: Path) -> None:
    model = _model(swiglu=True)
    save_transformers(model, tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    for i in range(model.config.depth):
        p = f"layers.{i}.mlp."
        for s in ("weight", "bias"):
            sd[p + "weights_in." + s] = torch.cat([sd.pop(p + "gate_proj." + s), sd.pop(p + "up_proj." + s)])
            sd[p + "weights_out." + s] = sd.pop(p + "down_proj." + s)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _assert_same(model, load_model(tmp_path))


def test_transformers_config_labels(tmp_path: Path) -> None:
    save_transformers(_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["image_size"]) == (64, 4, 64)
    assert config["id2label"] == {str(i): n for i, n in enumerate(NAMES)}


# ----------------------------------------------------------------------------- mismatches
def test_another_size_lists_shape_mismatches(tmp_path: Path) -> None:
    path = _official_file(_model(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        load_model(path, config=tiny_config(embed_dim=96, num_heads=3))
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "shape mismatch" in msg and "\n" not in msg
    assert "backbone.cls_token expected (1, 1, 96) found (1, 1, 64)" in msg


def test_missing_keys_are_listed(tmp_path: Path) -> None:
    sd = to_official_state_dict(_model())
    del sd["network.q.weight"], sd["network.encoder.backbone.blocks.1.ls2.gamma"]
    torch.save(sd, tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\):.*backbone\.blocks\.1\.ls2\.gamma"):
        load_model(tmp_path / "m.bin", config=tiny_config())


def test_non_strict_loads_what_fits(tmp_path: Path) -> None:
    model = _model()
    sd = to_official_state_dict(model)
    del sd["network.q.weight"]
    torch.save(sd, tmp_path / "m.bin")
    loaded = load_model(tmp_path / "m.bin", config=model.config, strict=False)
    assert torch.equal(loaded.backbone.pos_embed, model.backbone.pos_embed)


def test_class_head_of_another_size(tmp_path: Path) -> None:
    model = _model()
    path = _official_file(model, tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match="class_head.weight expected .8, 64. found .6, 64.*load_class_head=False"):
        load_model(path, config=tiny_config(num_classes=7))
    for loaded in (load_model(path, config=tiny_config(num_classes=7), load_class_head=False),
                   load_model(path, num_classes=7)):
        assert loaded.class_head.weight.shape == (8, 64)
        assert loaded.config.num_classes == 7 and loaded.config.class_names == ()
        assert torch.equal(loaded.q.weight, model.q.weight)
        assert torch.equal(loaded.mask_head[4].weight, model.mask_head[4].weight)


def test_pos_embed_resampled_only_when_img_size_is_given(tmp_path: Path) -> None:
    model = _model()
    path = _official_file(model, tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match="pos_embed.*img_size"):
        load_model(path, config=tiny_config(img_size=(96, 96)))
    loaded = load_model(path, img_size=96)
    grid = model.backbone.pos_embed.reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    assert loaded.config.img_size == (96, 96)
    torch.testing.assert_close(loaded.backbone.pos_embed, want.permute(0, 2, 3, 1).reshape(1, 36, 64))
    assert loaded(torch.rand(1, 3, 96, 96)).mask_logits.shape == (1, 8, 24, 24)


def test_text_file_named_bin(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a PyTorch or safetensors checkpoint") as e:
        load_model(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    whole, cut = tmp_path / f"whole{suffix}", tmp_path / f"cut{suffix}"
    if suffix == ".bin":
        _official_file(_model(), whole)
    else:
        save_model(_model(), whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cut{suffix}") as e:
        load_model(cut)
    assert "\n" not in str(e.value)


def test_missing_path_and_hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nowhere" / "pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(CheckpointError, match="could not reach the Hugging Face hub.*local path") as e:
        load_model("tue-mps/coco_panoptic_eomt_large_640")
    assert "\n" not in str(e.value)


def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(CheckpointError, match="could not reach the Hugging Face hub.*ConnectionError.*local path"):
        load_model("tue-mps/coco_panoptic_eomt_large_640")


# ----------------------------------------------------------------------------- DINOv2
D, GRID14 = 64, 37  # tiny width; 518 px / patch 14 = 37 x 37 tokens


def _smooth(n: int, d: int) -> torch.Tensor:
    """A smooth (1, n*n, d) position embedding, like trained ones."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    freqs = torch.arange(1, d + 1) / d * 3
    grid = torch.sin(ys[..., None] * freqs + xs[..., None] * freqs.flip(0))  # (n, n, d)
    return grid.reshape(1, n * n, d)


def _dinov2_blocks(depth: int, hidden: int, fc1_rows: int, fc1: str, fc2: str, index: object) -> dict:
    sd = {}
    for i in range(depth):
        p = f"blocks.{index(i)}."
        shapes = {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
                  "attn.proj.weight": (D, D), "attn.proj.bias": (D,), "ls1.gamma": (D,), "norm2.weight": (D,),
                  "norm2.bias": (D,), f"mlp.{fc1}.weight": (fc1_rows, D), f"mlp.{fc1}.bias": (fc1_rows,),
                  f"mlp.{fc2}.weight": (D, hidden), f"mlp.{fc2}.bias": (D,), "ls2.gamma": (D,)}
        sd.update({p + k: torch.randn(s) for k, s in shapes.items()})
    return sd


def _stem(pos_tokens: int) -> dict:
    return {"cls_token": torch.randn(1, 1, D), "pos_embed": _smooth(GRID14, D)[:, -pos_tokens:] if pos_tokens == GRID14**2
            else torch.cat([torch.randn(1, 1, D), _smooth(GRID14, D)], 1),
            "patch_embed.proj.weight": torch.randn(D, 3, 14, 14), "patch_embed.proj.bias": torch.randn(D),
            "norm.weight": torch.randn(D), "norm.bias": torch.randn(D)}


def _expected_pos(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    x = patch_pos.reshape(1, GRID14, GRID14, D).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, D)


def test_dinov2_timm_layout(tmp_path: Path) -> None:
    model = EoMT(tiny_config())
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    sd = {**_stem(GRID14**2), "reg_token": torch.randn(1, 4, D), "head.weight": torch.randn(10, D),
          **_dinov2_blocks(4, 4 * D, 4 * D, "fc1", "fc2", lambda i: i)}
    save_file(sd, tmp_path / "model.safetensors")
    report = load_dinov2_backbone(model, tmp_path / "model.safetensors")
    assert report.layout == "timm" and report.missing == [] and report.unexpected == ["head.weight"]
    assert torch.equal(model.backbone.blocks[2].mlp.fc1.weight, sd["blocks.2.mlp.fc1.weight"])
    assert torch.equal(model.backbone.cls_token, sd["cls_token"])
    torch.testing.assert_close(model.backbone.pos_embed.data, _expected_pos(sd["pos_embed"], 4))
    assert model.backbone.patch_embed.proj.weight.shape == (D, 3, 16, 16)
    for k, v in heads.items():  # heads, queries and buffers keep their initialisation
        assert torch.equal(model.state_dict()[k], v), k


def test_dinov2_torch_hub_layout_giant_style() -> None:
    model = EoMT(tiny_config(swiglu=True))
    hidden = model.config.mlp_hidden
    sd = {**_stem(1 + GRID14**2), "register_tokens": torch.randn(1, 4, D), "mask_token": torch.randn(1, D),
          **_dinov2_blocks(4, hidden, 2 * hidden, "w12", "w3", lambda i: f"{i // 2}.{i}")}  # 2 block chunks
    report = load_dinov2_backbone(model, sd)
    assert report.layout == "torch-hub" and report.missing == [] and report.unexpected == []
    b = model.backbone
    assert torch.equal(b.cls_token, sd["cls_token"] + sd["pos_embed"][:, :1])  # cls position folded in
    assert torch.equal(b.reg_token, sd["register_tokens"])
    assert torch.equal(b.blocks[3].mlp.fc1.weight, sd["blocks.1.3.mlp.w12.weight"])
    assert torch.equal(b.blocks[3].mlp.fc2.weight, sd["blocks.1.3.mlp.w3.weight"])
    torch.testing.assert_close(b.pos_embed.data, _expected_pos(sd["pos_embed"][:, 1:], 4))


def test_patch_embed_pinv_resample_preserves_tokens() -> None:
    """FlexiViT: the 16x16 kernel on an upsampled patch gives the 14x14 kernel's token."""
    w14 = torch.randn(8, 3, 14, 14, dtype=torch.float64)
    w16 = resample_patch_embed(w14, (16, 16))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 14), torch.linspace(-1, 1, 14), indexing="ij")
    patch = torch.stack([torch.sin(2 * xs + ys), torch.cos(3 * ys), xs * ys])[None].double()  # smooth (1, 3, 14, 14)
    up = F.interpolate(patch, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(F.conv2d(up, w16), F.conv2d(patch, w14), rtol=1e-6, atol=1e-6)
    naive = F.interpolate(w14, size=(16, 16), mode="bicubic", align_corners=False)
    assert (F.conv2d(up, naive) - F.conv2d(patch, w14)).abs().max() > 1e-2  # plain resizing does not


def test_dinov2_of_another_width_is_an_error() -> None:
    sd = {"cls_token": torch.randn(1, 1, 32), "reg_token": torch.randn(1, 4, 32), "pos_embed": torch.randn(1, 16, 32)}
    with pytest.raises(CheckpointError, match=r"cls_token expected \(1, 1, 64\) found \(1, 1, 32\)"):
        load_dinov2_backbone(EoMT(tiny_config()), sd)


def test_dinov2_weights_are_not_a_model(tmp_path: Path) -> None:
    save_file({**_stem(GRID14**2), **_dinov2_blocks(1, 4 * D, 4 * D, "fc1", "fc2", lambda i: i)}, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="load_dinov2_backbone"):
        load_model(tmp_path / "d.safetensors")


# ----------------------------------------------------------------------------- CLI
def test_convert_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model()
    src = save_model(model, tmp_path / "src.safetensors")
    assert main(["convert", str(src), "--to", "transformers", "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", str(tmp_path / "hf"), "--to", "eomt", "--out", str(tmp_path / "m.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "m.safetensors"), "--to", "official", "--out", str(tmp_path / "off")]) == 0
    assert "-> " in capsys.readouterr().out
    for out in (tmp_path / "hf", tmp_path / "m.safetensors", tmp_path / "off" / "pytorch_model.bin"):
        _assert_same(model, load_model(out))
    assert load_model(tmp_path / "m.safetensors").config == model.config  # labels and task survive transformers
    assert main(["convert", str(tmp_path / "none.bin"), "--to", "eomt", "--out", str(tmp_path / "x")]) == 1
    assert "none.bin: no such file" in capsys.readouterr().err
