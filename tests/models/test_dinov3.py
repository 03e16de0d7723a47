"""The DINOv3 backbone: parity with transformers' EomtDinov3ForUniversalSegmentation, RoPE rules,
the training-time RoPE rescale, graph capture (compile, ONNX), FLOP counting and the Predictor.

A random transformers model (tiny configs, one with the gated MLP) is saved with `save_pretrained`
and loaded with `EoMT.from_pretrained`; both run on the same images (transformers on ImageNet-
normalised pixels, ours on [0, 1]) with attn_mask_probs = 0 (plain ViT) and = 1 (masked attention in
every query block). transformers runs SDPA: its eager attention applies the mask after the softmax.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eomt import EoMT
from eomt.benchmark.flops import count_flops, meta_model
from eomt.config import ConfigError, tiny_config
from eomt.inference.predictor import Predictor
from eomt.models.backbones.dinov3 import DINOv3, apply_rope, patch_coordinates, rope_cos_sin
from eomt.models.eomt import IMAGENET_MEAN, IMAGENET_STD
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

TOL = 1e-4
SIZES = [(64, 64), (48, 80)]  # square, and non-square (transformers' grid set per case)
CASES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128),
    "tiny-gated": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, intermediate_size=80,
                       use_gated_mlp=True),
}


def dinov3_config(**overrides):
    """A tiny DINOv3 EoMT config (LayerNorm eps 1e-5 as DINOv3)."""
    return tiny_config(backbone="dinov3", layer_norm_eps=1e-5, **overrides)


def _hf_model(case: str, prob: float, size: tuple[int, int]) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.EomtDinov3Config(
        **CASES[case], image_size=size[0], num_queries=8, num_blocks=2, num_labels=5, layerscale_value=0.5,
        layer_norm_eps=1e-5,
    )
    cfg._attn_implementation = "sdpa"
    model = transformers.EomtDinov3ForUniversalSegmentation(cfg).eval()
    model.grid_size = (size[0] // 16, size[1] // 16)  # transformers reads the grid from image_size
    with torch.no_grad():
        # Perturb every parameter so that initialisation constants cannot hide a mis-mapped tensor.
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.attn_mask_probs.fill_(prob)
    return model


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("prob", [0.0, 1.0])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case: str, prob: float, size: tuple[int, int], tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = _hf_model(case, prob, size)
    hf.save_pretrained(tmp_path)
    ours = EoMT.from_pretrained(tmp_path)
    assert ours.config.backbone == "dinov3"
    assert ours.config.gated_mlp == CASES[case].get("use_gated_mlp", False)
    assert ours.config.mlp_hidden == CASES[case]["intermediate_size"]
    images = torch.rand(2, 3, *size)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = hf(pixel_values=(images - mean) / std)
        out = ours(images)
    assert out.mask_logits.shape == expected.masks_queries_logits.shape == (2, 8, size[0] // 4, size[1] // 4)
    diff_class = (out.class_logits - expected.class_queries_logits).abs()
    diff_mask = (out.mask_logits - expected.masks_queries_logits).abs()
    if prob == 0.0:
        assert diff_class.max() <= TOL and diff_mask.max() <= TOL
    else:  # a logit near 0 may flip a mask entry: the bulk must agree
        assert (diff_class <= 1e-3).float().mean() >= 0.99 and (diff_mask <= 1e-3).float().mean() >= 0.99
    assert len(out.mask_logits_per_block) == (2 if prob > 0 else 0)


def test_loading_says_dinov3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _hf_model("tiny", 0.0, (64, 64)).save_pretrained(tmp_path)
    with caplog.at_level("INFO", logger="eomt.checkpoints.loader"):
        EoMT.from_pretrained(tmp_path)
    assert "(transformers EoMT-DINOv3)" in caplog.text


def test_rope_touches_only_the_trailing_patch_tokens() -> None:
    cos, sin = rope_cos_sin(patch_coordinates((3, 5)), head_dim=16, theta=100.0)
    assert cos.shape == sin.shape == (15, 16) and cos.dtype == torch.float32
    x = torch.randn(2, 2, 8 + 5 + 15, 16)  # [queries | cls, 4 registers | patches]
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., :13, :], x[..., :13, :])
    assert not torch.allclose(y[..., 13:, :], x[..., 13:, :])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    # Moving a query, cls or register token changes no patch token's rotation: relative to the end.
    assert torch.equal(apply_rope(x[..., 8:, :], cos, sin), y[..., 8:, :])


def test_rope_coordinates_and_frequencies() -> None:
    coords = patch_coordinates((2, 4))
    assert coords[:, 0].tolist() == [-0.5] * 4 + [0.5] * 4  # rows: centres of 2 patches in [-1, 1]
    assert coords[:4, 1].tolist() == [-0.75, -0.25, 0.25, 0.75]
    cos, sin = rope_cos_sin(torch.tensor([[0.5, -0.25]]), head_dim=8, theta=100.0)
    inv = torch.tensor([1.0, 0.1])  # 100 ** -(0, 1/2): head_dim / 4 frequencies per axis
    angles = 2 * torch.pi * torch.cat([0.5 * inv, -0.25 * inv])
    assert torch.allclose(sin[0], torch.sin(angles).tile(2)) and torch.allclose(cos[0], torch.cos(angles).tile(2))


def test_rope_rescale_in_training_only_and_switchable() -> None:
    backbone = DINOv3(dinov3_config())
    backbone.eval()
    assert torch.equal(backbone.block_inputs((4, 6))["sin"], backbone.block_inputs((4, 6))["sin"])
    eval_sin = backbone.block_inputs((4, 6))["sin"]
    backbone.train()
    torch.manual_seed(0)
    assert not torch.allclose(backbone.block_inputs((4, 6))["sin"], eval_sin)
    off = DINOv3(dinov3_config(rope_rescale=1.0)).train()
    assert torch.equal(off.block_inputs((4, 6))["sin"], eval_sin)


def test_config_rules() -> None:
    assert tiny_config().rope_rescale == 2.0 and tiny_config().mlp_hidden == 256  # DINOv2 unchanged
    with pytest.raises(ConfigError, match="model.gated_mlp: not a dinov2 option"):
        tiny_config(gated_mlp=True)
    with pytest.raises(ConfigError, match="model.swiglu: not a dinov3 option"):
        dinov3_config(swiglu=True)


def _model(probs: list[float]) -> EoMT:
    torch.manual_seed(0)
    model = EoMT(dinov3_config(task="panoptic", stuff_classes=(3, 4))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.fill_(1.0)  # every block changes the output: a stricter comparison
    model.set_attn_mask_probs(probs)
    return model


def test_compile_fullgraph_matches_eager() -> None:
    torch._dynamo.reset()
    model = _model([1.0, 0.0])  # one masked query block, one plain: both paths in one graph
    x = torch.rand(1, 3, 48, 80)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out, ref = compiled(x), model(x)
    assert (out.mask_logits - ref.mask_logits).abs().max() <= 1e-4
    assert (out.class_logits - ref.class_logits).abs().max() <= 1e-4


def test_onnx_legacy_export_matches(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from eomt.export import export_model
    from eomt.inference.exported import OnnxNetwork

    model = _model([0.0, 0.0])
    path = export_model(model, tmp_path / "net", format="onnx", batch=1, onnx_exporter="legacy", img_size=(48, 80))
    net = OnnxNetwork(path)
    x = torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        ref = model(x)
    out = net(x)
    assert (out.mask_logits - ref.mask_logits).abs().max() <= 1e-3
    assert (out.class_logits - ref.class_logits).abs().max() <= 1e-3


def test_flops_counted_on_meta_and_cpu() -> None:
    cfg = dinov3_config()
    meta = count_flops(meta_model(cfg), (1, 3, 64, 64))
    cpu = count_flops(_model([0.0, 0.0]), (1, 3, 64, 64))
    assert meta.flops == cpu.flops > 0


@pytest.mark.parametrize("task,kind", [("panoptic", PanopticResult), ("instance", InstanceResult),
                                       ("semantic", SemanticResult)])
def test_predictor_all_tasks(task: str, kind: type) -> None:
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = Predictor(_model([0.0, 0.0]), task=task).predict_one(image)
    assert isinstance(result, kind)


def test_bf16_model_follows_fp32() -> None:
    model = _model([0.0, 0.0])
    x = torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        ref = model(x).mask_logits
        out = model.to(torch.bfloat16)(x).mask_logits  # the fused CPU linears where the CPU has them
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_training_forward_and_backward() -> None:
    model = _model([1.0, 1.0]).train()
    out = model(torch.rand(2, 3, 64, 48))
    (out.mask_logits.mean() + out.class_logits.mean()).backward()
    assert len(out.mask_logits_per_block) == 2
    assert model.backbone.blocks[0].attention.k_proj.weight.grad is not None
    assert model.backbone.patch_embed.register_tokens.grad is not None
