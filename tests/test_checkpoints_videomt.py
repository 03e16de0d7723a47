"""VidEoMT checkpoints: our file and transformers folders round trip exactly, the official release
layout loads, an image EoMT checkpoint starts a VidEoMT with a fresh propagation layer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from eomt.checkpoints import (
    CheckpointError,
    load_model,
    load_video_model,
    save_model,
    save_video_model,
    save_video_transformers,
)
from eomt.checkpoints.videomt import video_state_dict
from eomt.config import tiny_config
from eomt.models import EoMT, VidEoMT


def _random(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _assert_same_weights(a: VidEoMT, b: VidEoMT) -> None:
    sa, sb = video_state_dict(a), video_state_dict(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]


def _official_release(model: VidEoMT, with_updater: bool = True) -> dict:
    """The detectron2 model's state dict of the official code, as its checkpointer saves it."""
    sd = {}
    for key, value in video_state_dict(model).items():
        if key.startswith("query_updater.") and not with_updater:
            continue
        vit = key.startswith("backbone.")
        sd["backbone." + ("encoder." + key if vit else key)] = value.clone()
    sd["criterion.empty_weight"] = torch.ones(model.config.num_classes + 1)
    return {"model": sd, "iteration": 1000}


def test_our_file_round_trips_exactly_and_says_it_is_a_video_model(tmp_path: Path) -> None:
    model = _random(VidEoMT(tiny_config(name="tiny-video"), norm_queries=True))
    path = save_video_model(model, tmp_path / "video.safetensors", extra={"step": 7})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["eomt_model"] == "videomt" and json.loads(meta["videomt"]) == {"norm_queries": True}
    loaded = load_video_model(path)
    assert loaded.config == model.config and loaded.norm_queries
    _assert_same_weights(model, loaded)
    clip = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(clip).mask_logits, model(clip).mask_logits)
    assert load_video_model(path, norm_queries=False).norm_queries is False  # the caller decides over the file


def test_transformers_folders_round_trip_exactly(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VideomtConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                                     num_queries=8, num_blocks=2, num_labels=5, layerscale_value=0.5)
    hf = transformers.VideomtForUniversalSegmentation(cfg)
    with torch.no_grad():  # all but the masked-modelling token, which we write as its initial zeros
        for name, p in hf.named_parameters():
            if not name.endswith("mask_token"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "a")
    ours = load_video_model(tmp_path / "a")
    save_video_transformers(ours, tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model_type"] == "videomt"
    again = transformers.VideomtForUniversalSegmentation.from_pretrained(tmp_path / "b").eval()
    clip = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(pixel_values_videos=clip).class_queries_logits,
                           hf.eval()(pixel_values_videos=clip).class_queries_logits)
    # Ours -> transformers -> ours.
    _assert_same_weights(load_video_model(tmp_path / "b"), ours)


def test_transformers_refuses_what_its_videomt_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model.backbone: transformers' VidEoMT has a DINOv2 backbone, "
                                              "found 'dinov3'"):
        save_video_transformers(VidEoMT(tiny_config(backbone="dinov3")), tmp_path / "v3")
    with pytest.raises(CheckpointError, match="norm_queries: .* before the final norm"):
        save_video_transformers(VidEoMT(tiny_config(), norm_queries=True), tmp_path / "normed")


@pytest.mark.parametrize("backbone", ["dinov2", "dinov3"])
def test_the_official_release_layout_loads(backbone: str, tmp_path: Path) -> None:
    # DINOv3 widths are read as D / 64 heads (every DINOv3 ViT), so that one is 128 wide.
    cfg = tiny_config() if backbone == "dinov2" else tiny_config(backbone="dinov3", embed_dim=128, layer_norm_eps=1e-5)
    model = _random(VidEoMT(cfg))
    release = _official_release(model)
    if backbone == "dinov3":  # in the official file, dropped here: recomputed / unused
        release["model"]["backbone.encoder.backbone.rope_embeddings.inv_freq"] = torch.ones(16)
        release["model"]["backbone.encoder.backbone.patch_embed.mask_token"] = torch.zeros(1, 1, 128)
    torch.save(release, tmp_path / "yt_2019_vit_small.pth")
    loaded = load_video_model(tmp_path / "yt_2019_vit_small.pth", config=cfg if backbone == "dinov3" else None)
    assert loaded.config.backbone == backbone and loaded.config.grid_size == cfg.grid_size
    _assert_same_weights(model, loaded)
    clip = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(clip).class_logits, model(clip).class_logits)


def test_an_official_dinov3_vspw_release_propagates_normed_queries(tmp_path: Path) -> None:
    cfg = tiny_config(backbone="dinov3", embed_dim=128, layer_norm_eps=1e-5)
    model = _random(VidEoMT(cfg))
    torch.save(_official_release(model), tmp_path / "vspw_dinov3_94.4_64.0.pth")  # its released name
    loaded = load_video_model(tmp_path / "vspw_dinov3_94.4_64.0.pth")
    assert loaded.norm_queries and loaded.config.img_size == (1280, 1280)  # its config's NORM_QUERIES, IMG_SIZE
    _assert_same_weights(model, loaded)


def _default_linear_init(linear: torch.nn.Linear) -> None:
    """What PyTorch's nn.Linear starts as: weight and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1 / math.sqrt(linear.in_features)
    w, b = linear.weight.detach(), linear.bias.detach()
    assert w.abs().max() <= bound and b.abs().max() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # the std of U(-bound, bound)


def test_an_image_checkpoint_starts_a_video_model_with_a_fresh_propagation_layer(tmp_path: Path) -> None:
    image = _random(EoMT(tiny_config()))
    image.set_attn_mask_probs([0.0, 0.0])
    path = save_model(image, tmp_path / "image.safetensors")
    video = load_video_model(path)
    assert video.config == image.config
    assert all(torch.equal(v, image.state_dict()[k]) for k, v in video.eomt.state_dict().items())
    _default_linear_init(video.query_updater)
    frames = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(video(frames).mask_logits[:, 0], image(frames[:, 0]).mask_logits, atol=1e-6, rtol=0)
    # The image loader's options apply: another label space keeps all but the class head.
    other = load_video_model(path, num_classes=3)
    assert other.eomt.class_head.out_features == 4
    assert torch.equal(other.eomt.q.weight, image.q.weight)


def test_official_segmenter_weights_start_a_video_model_too(tmp_path: Path) -> None:
    model = _random(VidEoMT(tiny_config()))
    torch.save(_official_release(model, with_updater=False), tmp_path / "yt_2019_small_segmenter.pth")
    video = load_video_model(tmp_path / "yt_2019_small_segmenter.pth")
    _default_linear_init(video.query_updater)
    image_part = video.eomt.state_dict()
    assert all(torch.equal(v, image_part[k]) for k, v in model.eomt.state_dict().items())


def test_video_checkpoint_misfits_are_named(tmp_path: Path) -> None:
    model = VidEoMT(tiny_config())
    path = save_video_model(model, tmp_path / "video.safetensors")
    with pytest.raises(ValueError, match="num_classes apply to image checkpoints only"):
        load_video_model(path, num_classes=3)
    release = _official_release(model)
    release["model"]["backbone.query_updater.weight"] = torch.zeros(64, 32)
    torch.save(release, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad.pth: the propagation layer does not fit the model: "
                                              r"query_updater.weight expected \(64, 64\) found \(64, 32\)"):
        load_video_model(tmp_path / "bad.pth")


def test_the_image_loader_points_a_video_model_to_the_video_loader(tmp_path: Path) -> None:
    model = VidEoMT(tiny_config())
    path = save_video_model(model, tmp_path / "video.safetensors")
    with pytest.raises(CheckpointError, match=r"video.safetensors: a VidEoMT \(video\) model; load it with "
                                              r"eomt.checkpoints.load_video_model"):
        load_model(path)
    save_video_transformers(model, tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"a transformers VidEoMT \(video\) model; load it with"):
        load_model(tmp_path / "hf")
