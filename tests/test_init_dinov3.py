"""`train.init` / `init_from` with DINOv3 backbone weights in the transformers, Meta and timm layouts.

The transformers file is written by transformers' own `DINOv3ViTModel.save_pretrained`. The Meta and
timm files are written from a reference backbone with those projects' key names (fused q|k|v, Meta's
`storage_tokens`, `ls1.gamma`, `qkv.bias_mask`, `mlp.w1/w2/w3`; timm's `reg_token`, `gamma_1`,
`attn.q_bias`/`v_bias`, `mlp.fc1_g/fc1_x/fc2`); the network's backbone must then equal the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eomt.checkpoints import CheckpointError, init_from
from eomt.config import tiny_config
from eomt.models.eomt import EoMT

transformers = pytest.importorskip("transformers")

CFG = dict(backbone="dinov3", num_heads=1, layer_norm_eps=1e-5)


def _reference(**overrides) -> dict[str, torch.Tensor]:
    """A random DINOv3 backbone in our names (no `backbone.` prefix), every tensor non-trivial."""
    model = EoMT(tiny_config(**{**CFG, **overrides}))
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.dim() > 1 else 1.0))
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def _meta(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    d = ref["patch_embed.cls_token"].shape[-1]
    out = {"cls_token": ref["patch_embed.cls_token"], "storage_tokens": ref["patch_embed.register_tokens"],
           "mask_token": torch.zeros(1, d), "rope_embed.periods": torch.ones(d // 4),
           "patch_embed.proj.weight": ref["patch_embed.patch_embeddings.weight"],
           "patch_embed.proj.bias": ref["patch_embed.patch_embeddings.bias"],
           "norm.weight": ref["norm.weight"], "norm.bias": ref["norm.bias"]}
    mlp = {"up_proj": "fc1", "down_proj": "fc2"}
    if any(".gate_proj." in k for k in ref):
        mlp = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
    for i in range(len({k.split(".")[1] for k in ref if k.startswith("blocks.")})):
        b, a = f"blocks.{i}.", f"blocks.{i}.attention."
        out[b + "attn.qkv.weight"] = torch.cat([ref[a + f"{p}_proj.weight"] for p in "qkv"])  # (3D, D)
        out[b + "attn.qkv.bias"] = torch.cat([ref[a + "q_proj.bias"], torch.full((d,), 7.0), ref[a + "v_proj.bias"]])
        out[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])
        out[b + "attn.proj.weight"], out[b + "attn.proj.bias"] = ref[a + "o_proj.weight"], ref[a + "o_proj.bias"]
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = ref[b + "layer_scale1.lambda1"], ref[b + "layer_scale2.lambda1"]
        for n in ("norm1", "norm2"):
            out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = ref[f"{b}{n}.weight"], ref[f"{b}{n}.bias"]
        for ours, theirs in mlp.items():
            for kind in ("weight", "bias"):
                out[f"{b}mlp.{theirs}.{kind}"] = ref[f"{b}mlp.{ours}.{kind}"]
    return out


def _timm(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    meta = _meta(ref)
    out = {}
    for k, v in meta.items():
        if k in ("mask_token", "rope_embed.periods") or k.endswith(("bias_mask", "qkv.bias")):
            continue
        k = k.replace("storage_tokens", "reg_token").replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        k = k.replace("mlp.w1.", "mlp.fc1_g.").replace("mlp.w2.", "mlp.fc1_x.").replace("mlp.w3.", "mlp.fc2.")
        out[k] = v
    for k, v in meta.items():
        if k.endswith("qkv.bias"):
            q, _, vb = v.chunk(3)
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, vb
    return out


def _check(network: EoMT, fresh: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    sd = network.state_dict()
    for k, v in ref.items():
        torch.testing.assert_close(sd["backbone." + k], v, atol=0, rtol=0, msg=k)
    for k in ("q.weight", "class_head.weight", "mask_head.0.weight"):
        torch.testing.assert_close(sd[k], fresh[k], atol=0, rtol=0, msg=k)  # heads stay new


@pytest.mark.parametrize("layout,gated", [("meta", False), ("meta", True), ("timm", False), ("timm", True)])
def test_init_from_meta_and_timm_layouts(tmp_path: Path, layout: str, gated: bool) -> None:
    ref = _reference(gated_mlp=gated)
    weights = (_meta if layout == "meta" else _timm)(ref)
    path = tmp_path / "dinov3.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    network = EoMT(tiny_config(**CFG, gated_mlp=gated))
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    report = init_from(network, path)
    _check(network, fresh, ref)
    assert report.family == "dinov3" and layout in report.kind and report.loaded == len(ref)
    assert report.class_head == "DINOv3 weights have no heads"


def test_init_from_transformers_layout(tmp_path: Path) -> None:
    config = transformers.DINOv3ViTConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=1, intermediate_size=256, patch_size=16,
        num_register_tokens=4, layer_norm_eps=1e-5,
    )
    hf = transformers.DINOv3ViTModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    hf_sd = hf.state_dict()
    network = EoMT(tiny_config(**CFG))
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    report = init_from(network, tmp_path / "hf")
    sd = network.state_dict()
    torch.testing.assert_close(sd["backbone.patch_embed.register_tokens"], hf_sd["embeddings.register_tokens"])
    torch.testing.assert_close(sd["backbone.patch_embed.patch_embeddings.weight"],
                               hf_sd["embeddings.patch_embeddings.weight"])
    for i in range(4):
        for part in ("attention.q_proj.weight", "attention.k_proj.weight", "mlp.down_proj.bias",
                     "layer_scale2.lambda1"):
            torch.testing.assert_close(sd[f"backbone.blocks.{i}.{part}"], hf_sd[f"model.layer.{i}.{part}"])
    torch.testing.assert_close(sd["backbone.norm.weight"], hf_sd["norm.weight"])
    torch.testing.assert_close(sd["q.weight"], fresh["q.weight"])
    assert report.loaded == sum(1 for k in sd if k.startswith("backbone.")) and "transformers" in report.kind


def test_dinov3_weights_into_a_dinov2_network_or_wrong_width_fail(tmp_path: Path) -> None:
    ref = _reference()
    path = tmp_path / "dinov3.safetensors"
    save_file({k: v.contiguous() for k, v in _meta(ref).items()}, str(path))
    with pytest.raises(CheckpointError, match="backbone=dinov3"):
        init_from(EoMT(tiny_config()), path)
    with pytest.raises(CheckpointError, match="width 64"):
        init_from(EoMT(tiny_config(backbone="dinov3", embed_dim=128, num_heads=2)), path)
