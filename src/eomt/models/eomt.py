"""EoMT: a plain ViT whose last L2 blocks also process K learnable queries.

Token order after query injection: [queries (K) | cls | registers (R) | patches (N)].
The mask module (class head, 3-layer MLP, two 2x upscale blocks, dot product) turns the query tokens
into class logits (B, K, C+1) and mask logits (B, K, H/4, W/4).

Masked attention (training, and inference while annealing is unfinished): before each of the last
L2 blocks an intermediate prediction is made from the shared final norm, and each query may attend
only to the patches where its bilinearly downsampled mask logits are > 0. Block j lifts the mask of
each query with probability 1 - p_j (`attn_mask_probs`). When every p_j is 0 (a trained model),
inference is a plain ViT: no intermediate prediction is made and no mask is built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from eomt.config import ModelConfig
from eomt.models.kernels import cpu_inference, linear_gelu
from eomt.models.vit import ViT

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EoMTOutput(NamedTuple):
    """Predictions of one forward pass.

    mask_logits: (B, K, H/4, W/4) and class_logits: (B, K, C+1) of the final prediction.
    mask_logits_per_block / class_logits_per_block: the intermediate predictions made before each
    query block where masked attention ran (first query block first); empty for a plain forward.
    """

    mask_logits: Tensor
    class_logits: Tensor
    mask_logits_per_block: list[Tensor]
    class_logits_per_block: list[Tensor]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a map (kept for the parameter layout `upscale.i.norm`)."""


class ScaleBlock(nn.Module):
    """2x upscale: ConvTranspose 2x2/2 -> GELU -> depthwise 3x3 (no bias) -> LayerNorm2d.

    Works channels-last: (B, H, W, C) -> (B, 2H, 2W, C). The 2x2/2 transposed convolution has
    non-overlapping outputs, so it is one matmul per pixel with the outputs ordered (dy, dx, C),
    followed by the GELU (elementwise, so it commutes with the shuffle and fuses into the matmul on
    the bf16 CPU path) and a pixel shuffle that moves whole (dx, C) rows. The depthwise convolution
    runs on a channels-last view and the norm needs no permute copy. Parameters keep the official
    layout (`conv1` is a ConvTranspose2d, `conv2` a Conv2d).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.depthwise(self.expand(x, *self.expand_params())))

    def expand_params(self) -> tuple[Tensor, Tensor]:
        """conv1 as a linear layer: weight (dy, dx, C_out, C_in) flattened to rows, bias per row."""
        c_in = self.conv1.weight.shape[0]
        weight = self.conv1.weight.permute(2, 3, 1, 0).reshape(-1, c_in)
        return weight, self.conv1.bias.repeat(4)

    @staticmethod
    def expand(x: Tensor, weight: Tensor, bias: Tensor, out: Tensor | None = None) -> Tensor:
        """Transposed convolution + GELU + pixel shuffle: (B, H, W, C) -> (B, 2H, 2W, C_out).

        `out`, if given, is a (B, 2H, 2W, C_out) view (rows may be strided) that receives the result.
        """
        b, h, w, _ = x.shape
        y = linear_gelu(x, weight, bias).view(b, h, w, 2, 2, -1)  # (B, H, W, dy, dx, C_out)
        if out is None:
            return y.transpose(2, 3).reshape(b, 2 * h, 2 * w, -1)
        out.view(b, h, 2, w, 2, -1).copy_(y.transpose(2, 3))
        return out

    def depthwise(self, y: Tensor) -> Tensor:
        """The depthwise 3x3 convolution on a channels-last (B, H, W, C) map (zero padding)."""
        return self.conv2(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _banded_mask_logits(block: ScaleBlock, x: Tensor, embed_t: Tensor, band_bytes: int = 2 << 20) -> Tensor:
    """The last upscale block and the mask product, computed in bands of rows (CPU inference).

    x: (B, H, W, C) input of `block`; embed_t: (B, C, K) mask embeddings. Returns the mask logits
    (B, 2H, 2W, K), equal to `block(x).flatten(1, 2) @ embed_t`. The full-resolution features
    (the largest activation of the network) never exist at once: each band's temporaries stay
    around `band_bytes`, in cache and free of page faults. The depthwise convolution needs one row
    either side, so the last two expanded rows of a band are carried into the next one, and a band
    emits the rows whose neighbours it has (the last band emits the rest). Every band is written
    into one reused buffer, after the two rows it carries.
    """
    b, h, w, _ = x.shape
    k = embed_t.shape[-1]
    weight, bias = block.expand_params()
    out = x.new_empty(b, 2 * h, 2 * w, k)
    step = max(1, band_bytes // max(1, b * w * weight.shape[0] * x.element_size()))
    # Rows 0-1 of the band buffer hold the last two expanded rows of the previous band.
    buf = x.new_empty(b, 2 * step + 2, 2 * w, weight.shape[0] // 4)
    done = 0  # output rows written
    for a in range(0, h, step):
        e = min(a + step, h)
        n = 2 * (e - a)
        if a:  # every band but the last holds 2 * step expanded rows
            buf[:, :2] = buf[:, 2 * step : 2 * step + 2]
        block.expand(x[:, a:e], weight, bias, out=buf[:, 2 : 2 + n])  # expanded rows [2a, 2e)
        start, top = (2, 2 * a) if a == 0 else (0, 2 * a - 2)
        z = block.depthwise(buf[:, start : 2 + n])  # rows [top, 2e); the first and last lack a neighbour
        stop = z.shape[1] if e == h else z.shape[1] - 1  # unless at the image border
        z = block.norm(z[:, done - top : stop])  # rows [done, top + stop)
        torch.matmul(z.flatten(1, 2), embed_t, out=out[:, done : done + z.shape[1]].flatten(1, 2))
        done += z.shape[1]
    return out


class EoMT(nn.Module):
    """The Encoder-only Mask Transformer.

    `forward(images)` takes RGB in [0, 1] as a float tensor (B, 3, H, W), H and W multiples of the
    patch size (uint8 in [0, 255] is accepted too); ImageNet normalisation happens inside.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, k = config.embed_dim, config.num_queries
        self.backbone = ViT(config)
        self.q = nn.Embedding(k, d)
        self.class_head = nn.Linear(d, config.num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)
        )
        self.upscale = nn.Sequential(*(ScaleBlock(d) for _ in range(config.num_upscale)))
        self.register_buffer("attn_mask_probs", torch.ones(config.num_blocks))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Which query blocks mask attention (p_j > 0), kept as Python bools so that the forward has
        # no data-dependent branch on a tensor (torch.compile / torch.export friendly).
        self._mask_active: tuple[bool, ...] = (True,) * config.num_blocks
        # Recompute each block's activations in the backward pass instead of keeping them
        # (training memory for compute; the forward is unchanged).
        self.gradient_checkpointing = False
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_mask_active())

    # ------------------------------------------------------------------ annealing state
    def set_attn_mask_probs(self, probs: Tensor | list[float] | tuple[float, ...]) -> None:
        """Set the per-block masking probabilities p_j (1 = always masked, 0 = never)."""
        probs = torch.as_tensor(probs, dtype=self.attn_mask_probs.dtype)
        if probs.shape != self.attn_mask_probs.shape:
            raise ValueError(
                f"attn_mask_probs: expected {self.config.num_blocks} values, got {tuple(probs.shape)}"
            )
        with torch.no_grad():
            self.attn_mask_probs.copy_(probs)
        # Read the flags from the CPU input: no device-to-host sync per training step.
        self._mask_active = tuple(bool(p > 0) for p in probs.tolist())

    def _sync_mask_active(self) -> None:
        self._mask_active = tuple(bool(p > 0) for p in self.attn_mask_probs.tolist())

    @property
    def masked_attention_active(self) -> bool:
        """True while any query block still masks attention (annealing unfinished)."""
        return any(self._mask_active)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, lift_noise: Tensor | None = None) -> EoMTOutput:
        """Images (B, 3, H, W), RGB uint8 or float in [0, 1] -> `EoMTOutput`.

        lift_noise: optional (B, L2, K) uniform [0, 1) draws for masked attention: query k of block
        j is unmasked where lift_noise[:, j, k] > attn_mask_probs[j]. Training passes draws from
        per-image generators so the result does not depend on how a batch is split over
        processes; without it each masked block draws from the global RNG.
        """
        cfg = self.config
        h, w = images.shape[-2:]
        p = cfg.patch_size
        if images.ndim != 4 or images.shape[1] != 3 or h % p or w % p:
            raise ValueError(
                f"images: expected a (B, 3, H, W) tensor with H and W multiples of {p}, "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        x = (images - self.pixel_mean) / self.pixel_std
        x = x.to(self.backbone.patch_embed.proj.weight.dtype)  # a bf16 model takes fp32 images too
        x, grid = self.backbone.embed(x)  # (B, 1+R+N, D)
        first = cfg.depth - cfg.num_blocks
        masks_per_block: list[Tensor] = []
        classes_per_block: list[Tensor] = []
        for i, block in enumerate(self.backbone.blocks):
            if i == first:
                queries = self.q.weight[None].expand(x.shape[0], -1, -1).to(x.dtype)  # (B, K, D)
                x = torch.cat([queries, x], dim=1)
            attn_mask = None
            if i >= first:
                j = i - first
                if self.training or self._mask_active[j]:
                    mask_logits, class_logits = self._predict(self.backbone.norm(x), grid)
                    masks_per_block.append(mask_logits)
                    classes_per_block.append(class_logits)
                    if self._mask_active[j]:
                        noise = lift_noise[:, j] if lift_noise is not None else None
                        attn_mask = self._attn_mask(mask_logits, grid, self.attn_mask_probs[j], x.shape[1], noise)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        mask_logits, class_logits = self._predict(self.backbone.norm(x), grid)
        return EoMTOutput(mask_logits, class_logits, masks_per_block, classes_per_block)

    def _predict(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Mask module on normed tokens (B, K+1+R+N, D) -> mask (B, K, 4h, 4w), class (B, K, C+1)."""
        k = self.config.num_queries
        q = x[:, :k]  # (B, K, D)
        class_logits = self.class_head(q)
        patches = x[:, k + self.backbone.num_prefix_tokens :]  # (B, N, D)
        patches = patches.reshape(x.shape[0], grid[0], grid[1], -1)  # (B, h, w, D) channels-last
        embed_t = self.mask_head(q).transpose(1, 2)  # (B, D, K)
        # One (4h*4w, D) x (D, K) matmul per image; the result is returned as a (B, K, 4h, 4w) view
        # with channels-last strides, which the resizing and per-pixel argmax downstream prefer.
        if len(self.upscale) and cpu_inference(x):
            *first, last = self.upscale
            for block in first:
                patches = block(patches)
            mask_logits = _banded_mask_logits(last, patches, embed_t)  # (B, 4h, 4w, K)
        else:
            features = self.upscale(patches)  # (B, 4h, 4w, D)
            mask_logits = (features.flatten(1, 2) @ embed_t).unflatten(1, features.shape[1:3])
        # (B, K, 4h, 4w) with channels-last strides, in training too: grid_sample over all
        # queries (the matcher) is about 5x faster on this layout than on a contiguous one.
        mask_logits = mask_logits.permute(0, 3, 1, 2)
        return mask_logits, class_logits

    def _attn_mask(
        self, mask_logits: Tensor, grid: tuple[int, int], prob: Tensor, n: int, noise: Tensor | None = None
    ) -> Tensor:
        """Boolean (B, 1, N, N) attention mask: query->patch allowed where the mask logit > 0.

        Each query's restriction is lifted with probability 1 - prob: where `noise` (B, K) uniform
        draws exceed prob (a fresh global-RNG draw when not given).
        """
        b, k = mask_logits.shape[:2]
        start = k + self.backbone.num_prefix_tokens
        inside = F.interpolate(mask_logits, size=grid, mode="bilinear").flatten(2) > 0  # (B, K, N_p)
        if noise is None:
            noise = torch.rand(b, k, device=mask_logits.device)
        lifted = noise > prob  # (B, K)
        inside = inside | lifted[..., None]
        mask = torch.ones(b, n, n, dtype=torch.bool, device=mask_logits.device)
        mask[:, :k, start:] = inside
        return mask[:, None]  # (B, 1, N, N), broadcast over heads

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, config: ModelConfig | str, **overrides: Any) -> "EoMT":
        """A randomly initialised model from a `ModelConfig` or a preset name."""
        from eomt.config import preset

        cfg = preset(config) if isinstance(config, str) else config
        if overrides:
            cfg = cfg.replace(**overrides)
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> "EoMT":
        """Load weights from any supported source (see `eomt.checkpoints.load_model`).

        A preset name (`coco_panoptic_eomt_small_640`, or short `eomt_small_640`) that is not a
        local path gives a randomly initialised model of that configuration, in eval mode with mask
        annealing finished (as a trained model: it predicts and exports), with a one-line warning;
        `num_classes`, `img_size` and `map_location` apply to it too. `from_config` gives the
        training start instead.
        """
        from eomt.config import PRESET_NAMES

        name = str(source)
        is_preset = "/" not in name and (name in PRESET_NAMES or f"coco_panoptic_{name}" in PRESET_NAMES)
        if not is_preset or Path(name).exists():
            from eomt.checkpoints import load_model

            return load_model(source, **kwargs)
        overrides: dict[str, Any] = {}
        if kwargs.get("num_classes") is not None:
            overrides.update(num_classes=int(kwargs["num_classes"]), class_names=(), stuff_classes=())
        if kwargs.get("img_size") is not None:
            size = kwargs["img_size"]
            overrides["img_size"] = (size, size) if isinstance(size, int) else tuple(size)
        log.warning("%s is a preset name: the model has its configuration and random weights", name)
        model = cls.from_config(name, **overrides)
        model.set_attn_mask_probs([0.0] * model.config.num_blocks)  # an inference model: annealed
        return model.to(kwargs.get("map_location", "cpu")).eval()
