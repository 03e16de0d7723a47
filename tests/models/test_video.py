"""VidEoMT: parity with transformers' VideomtForUniversalSegmentation, streaming == clip, the image
model as frame 0, DINOv3 through the backbone seam.

Streaming is compared with `torch.equal` (bitwise), on CPU: `step` is the clip call on a clip of one
frame, so a frame takes the same operations in both paths; what differs is only the batch size of
the first blocks and of the mask module (B*T frames against B), and every operation here (linear
layers, SDPA, LayerNorm, convolutions) computes each image of a batch on its own. Measured bitwise
equal with 1 and 2 threads, tiny and small configs, B up to 3, T up to 5. (A GPU may pick another
kernel for another batch size; there a tolerance of float rounding would be due.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eomt.checkpoints import load_video_model
from eomt.config import tiny_config
from eomt.models import EoMT, VidEoMT, VideoState
from eomt.models.eomt import IMAGENET_MEAN, IMAGENET_STD

TOL = 1e-4
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)

# transformers' VidEoMT takes a square image_size (its mask module reshapes to image_size // patch).
CASES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                 num_queries=8, num_blocks=2, num_labels=5, layerscale_value=0.5),
    "small": dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, image_size=96,
                  num_queries=10, num_blocks=3, num_labels=7, layerscale_value=0.5, use_swiglu_ffn=True),
}


def _perturbed(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Every parameter moved off its initial value, so that no constant of an initialisation
    (LayerNorm ones, zero registers, constant LayerScale) can hide a mis-mapped tensor."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(skip):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _stream(model: VidEoMT, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, VideoState]:
    state = model.init_state()
    classes, masks = [], []
    for t in range(clip.shape[1]):
        out, state = model.step(clip[:, t], state)
        classes.append(out.class_logits)
        masks.append(out.mask_logits)
    return torch.stack(classes, 1), torch.stack(masks, 1), state


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_videomt(case: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = CASES[case]
    hf = transformers.VideomtForUniversalSegmentation(transformers.VideomtConfig(**cfg))
    hf = _perturbed(hf, skip=("mask_token",)).to(torch.float32)
    assert hf.config._attn_implementation == "sdpa"
    hf.save_pretrained(tmp_path)
    ours = load_video_model(tmp_path)
    assert ours.config.swiglu == cfg.get("use_swiglu_ffn", False) and not ours.norm_queries

    b, t, size = 2, 3, cfg["image_size"]
    clip = torch.rand(b, t, 3, size, size)
    with torch.no_grad():
        expected = hf(pixel_values_videos=(clip - MEAN) / STD)
        out = ours(clip)
    k = cfg["num_queries"]
    # transformers concatenates the frames on the batch axis, frame-major: row t * B + b.
    hf_classes = expected.class_queries_logits.unflatten(0, (t, b)).transpose(0, 1)
    hf_masks = expected.masks_queries_logits.unflatten(0, (t, b)).transpose(0, 1)
    assert out.class_logits.shape == hf_classes.shape == (b, t, k, cfg["num_labels"] + 1)
    assert out.mask_logits.shape == hf_masks.shape == (b, t, k, size // 4, size // 4)
    class_diff = (out.class_logits - hf_classes).abs().max().item()
    mask_diff = (out.mask_logits - hf_masks).abs().max().item()
    assert class_diff <= TOL and mask_diff <= TOL, (class_diff, mask_diff)
    # The propagation matters: without it frame 2 would differ from transformers by far more.
    static = ours.eomt(clip[:, 2])
    assert (static.class_logits - hf_classes[:, 2]).abs().max() > 100 * TOL


def test_streaming_equals_the_clip_call_bitwise() -> None:
    model = _perturbed(VidEoMT(tiny_config()))
    clip = torch.rand(2, 4, 3, 64, 96)  # non-square frames
    with torch.no_grad():
        out = model(clip)
        classes, masks, state = _stream(model, clip)
        # A video in two chunks continues from the state of the first.
        first = model(clip[:, :1])
        rest = model(clip[:, 1:], first.state)
    assert out.mask_logits.shape == (2, 4, 8, 16, 24)
    assert torch.equal(classes, out.class_logits) and torch.equal(masks, out.mask_logits)
    assert torch.equal(state.queries, out.state.queries) and state.frame == out.state.frame == 4
    assert torch.equal(torch.cat([first.mask_logits, rest.mask_logits], 1), out.mask_logits)
    assert torch.equal(torch.cat([first.class_logits, rest.class_logits], 1), out.class_logits)


def test_frame_zero_is_the_image_model_and_later_frames_use_the_previous_queries() -> None:
    image = _perturbed(EoMT(tiny_config()))
    image.set_attn_mask_probs([0.0, 0.0])  # a trained image model: no masked attention
    video = VidEoMT.from_image(image)
    assert video.eomt is image  # shared, not copied
    clip = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        out = video(clip)
        alone = image(clip[:, 0])
        # Frame 0 reaches frame 2 only through the queries propagated to frames 1 and 2.
        other = video(torch.cat([torch.rand(1, 1, 3, 64, 64), clip[:, 1:]], 1))
    # The same operations on the same frame (measured: bitwise equal on CPU).
    assert torch.allclose(out.class_logits[:, 0], alone.class_logits, atol=1e-6, rtol=0)
    assert torch.allclose(out.mask_logits[:, 0], alone.mask_logits, atol=1e-6, rtol=0)
    assert (other.class_logits[:, 2] - out.class_logits[:, 2]).abs().max() > 1e-3
    # The propagated queries are the block outputs before the final norm (official NORM_QUERIES False).
    normed = VidEoMT(image, norm_queries=True)
    normed.query_updater.load_state_dict(video.query_updater.state_dict())
    with torch.no_grad():
        assert torch.equal(normed(clip[:, :1]).class_logits, out.class_logits[:, :1])
        assert (normed(clip).class_logits[:, 1] - out.class_logits[:, 1]).abs().max() > 1e-3


def test_a_dinov3_videomt_runs_and_streams_like_the_clip() -> None:
    cfg = tiny_config(backbone="dinov3", embed_dim=64, num_heads=2, layer_norm_eps=1e-5)
    model = _perturbed(VidEoMT(cfg))
    clip = torch.rand(1, 3, 3, 64, 80)
    with torch.no_grad():
        out = model(clip)
        classes, masks, _ = _stream(model, clip)
    assert out.class_logits.shape == (1, 3, 8, 6) and out.mask_logits.shape == (1, 3, 8, 16, 20)
    assert torch.isfinite(out.mask_logits).all()
    assert torch.equal(classes, out.class_logits) and torch.equal(masks, out.mask_logits)


def test_a_clip_of_the_wrong_shape_is_refused_with_the_expected_one() -> None:
    model = VidEoMT(tiny_config())
    with pytest.raises(ValueError, match=r"expected a \(B, T, 3, H, W\) tensor with H and W multiples of 16"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"frame: expected a \(B, 3, H, W\) tensor"):
        model.step(torch.rand(1, 2, 3, 64, 64), model.init_state())
    with torch.no_grad():
        _, state = model.step(torch.rand(2, 3, 64, 64))
        with pytest.raises(ValueError, match="state: queries of 2 videos, the clip has 1"):
            model.step(torch.rand(1, 3, 64, 64), state)


def test_uint8_frames_equal_float_frames_and_gradients_reach_the_propagation_layer() -> None:
    model = VidEoMT(tiny_config())
    frames = torch.randint(0, 256, (1, 2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(frames).mask_logits, model(frames.float() / 255).mask_logits)
    model.train()
    out = model(frames.float() / 255)
    out.class_logits[:, 1].sum().backward()
    assert model.query_updater.weight.grad is not None and model.query_updater.weight.grad.abs().sum() > 0
