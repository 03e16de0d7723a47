"""The DINOv3 backbone of EoMT: a ViT with 2-D rotary position embedding (RoPE), no absolute one.

Implements `eomt.models.backbones.Backbone` (registered as "dinov3"). Patch 16 embedding, cls + 4
register tokens, pre-norm blocks with separate q/k/v/o projections (k without bias), LayerScale, a
GELU MLP (up -> down) or a gated GELU MLP (`gated_mlp`: gelu(gate) * up -> down), and a final
LayerNorm. Parameter names are those of the official DINOv3 EoMT code under `network.encoder.`
(transformers' DINOv3 module names, the block list renamed `blocks`, the embeddings `patch_embed`).

RoPE (transformers `dinov3_vit`, the official DINOv3 rule): patch-centre coordinates
(i + 0.5) / n * 2 - 1 in [-1, 1], separately for rows (y) and columns (x); head_dim / 4
frequencies per axis, inv_freq = theta ** -(arange(0, 1, 4 / head_dim)); angle = 2 pi coord
inv_freq; the (y, x) angles are flattened to head_dim / 2 and tiled twice; rotate_half convention.
It rotates the trailing N patch tokens of q and k only (queries, cls and registers never), and
follows the grid of the actual input. In training mode the coordinates are multiplied by one
log-uniform factor in [1 / r, r] (r = `ModelConfig.rope_rescale`; r <= 1 switches it off).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eomt.config import ModelConfig
from eomt.models.fast.linear import linear, linear_gelu


def patch_coordinates(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Patch-centre (y, x) coordinates in [-1, 1] of a (h, w) grid, row-major: (h * w, 2) fp32."""
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)  # (N, 2)
    return coords * 2.0 - 1.0


def rope_cos_sin(coords: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin (N, head_dim), fp32, of patch coordinates (N, 2) in [-1, 1]."""
    inv_freq = theta ** -torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=coords.device)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq  # (N, 2, head_dim / 4)
    angles = angles.flatten(1, 2).tile(2)  # (N, head_dim)
    return torch.cos(angles), torch.sin(angles)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension split in halves."""
    half = x.shape[-1] // 2
    # Two slices, not `chunk`: the dynamo ONNX exporter writes `chunk` as an opset-18 Split, which an
    # opset-17 graph (`eomt export`'s default) cannot hold.
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the trailing N tokens of x (B, heads, T, head_dim) by cos / sin (N, head_dim), or
    per image (B, 1, N, head_dim) (merged tokens).

    The leading T - N tokens (queries, cls, registers) are returned unchanged. The rotation runs
    in fp32 and is cast back to x's dtype.
    """
    n = cos.shape[-2]
    prefix, patches = x[..., : x.shape[-2] - n, :], x[..., x.shape[-2] - n :, :]
    p = patches.float()
    rotated = (p * cos + rotate_half(p) * sin).to(x.dtype)
    return torch.cat((prefix, rotated), dim=-2)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections (no k bias), RoPE and SDPA.

    `mask` is a boolean (B, 1, T, T) or (B, heads, T, T) tensor, True where attention is allowed,
    or an additive float mask in x's dtype, e.g. (B, 1, 1, T) (proportional attention).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, d = x.shape

        def heads(proj: nn.Linear) -> Tensor:
            y = linear(x, proj.weight, proj.bias)
            return y.reshape(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, h, T, d/h)

        q = apply_rope(heads(self.q_proj), cos, sin)
        k = apply_rope(heads(self.k_proj), cos, sin)
        x = F.scaled_dot_product_attention(q, k, heads(self.v_proj), attn_mask=mask)
        x = x.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return linear(x, self.o_proj.weight, self.o_proj.bias)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.lambda1


class Mlp(nn.Module):
    """up -> exact GELU -> down."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = linear_gelu(x, self.up_proj.weight, self.up_proj.bias)
        return linear(x, self.down_proj.weight, self.down_proj.bias)


class GatedMlp(nn.Module):
    """down(gelu(gate(x)) * up(x)): transformers' DINOv3 gated MLP (`use_gated_mlp`) with its EoMT
    activation, hidden_act "gelu" (transformers' EoMT heads take the same activation)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate = linear_gelu(x, self.gate_proj.weight, self.gate_proj.bias)
        x = gate * linear(x, self.up_proj.weight, self.up_proj.bias)
        return linear(x, self.down_proj.weight, self.down_proj.bias)


class Block(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x), rope)), then x + ls2(mlp(norm2(x))).

    `mask`: boolean (B, 1, T, T), True where attention is allowed, or None; `cos` / `sin`: the
    (N, head_dim) RoPE tables of this forward (`DINOv3.block_inputs`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attention = Attention(d, cfg.num_heads)
        self.layer_scale1 = LayerScale(d, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = GatedMlp(d, cfg.mlp_hidden) if cfg.gated_mlp else Mlp(d, cfg.mlp_hidden)
        self.layer_scale2 = LayerScale(d, cfg.layerscale_init)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, cos: Tensor, sin: Tensor) -> Tensor:
        x = torch.addcmul(x, self.layer_scale1.lambda1, self.attention(self.norm1(x), mask, cos, sin))
        return torch.addcmul(x, self.layer_scale2.lambda1, self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Images (B, 3, H, W) -> tokens [cls | registers | patches] (B, 1 + R + N, D); no position added."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
        self.patch_embeddings = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.patch_embeddings(x)  # (B, D, H/p, W/p)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        b = x.shape[0]
        prefix = torch.cat([self.cls_token, self.register_tokens], dim=1).expand(b, -1, -1)  # (B, 1+R, D)
        return torch.cat([prefix, x], dim=1), grid


class DINOv3(nn.Module):
    """DINOv3-style ViT backbone with RoPE. `embed` gives tokens [cls | registers | patches]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.grid_size = cfg.grid_size
        self.num_prefix_tokens = 1 + cfg.num_register_tokens
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.rope_theta = float(cfg.rope_theta)
        self.rope_rescale = float(cfg.rope_rescale)
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.patch_embed.cls_token, std=0.02)
        nn.init.trunc_normal_(self.patch_embed.register_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights: the images are cast to it before the patch embedding."""
        return self.patch_embed.patch_embeddings.weight.dtype

    def block_inputs(self, grid: tuple[int, int]) -> dict[str, Tensor]:
        """RoPE tables for a (h, w) token grid: {"cos", "sin"}, each (h * w, head_dim), fp32.

        In training mode (and `rope_rescale` > 1) the coordinates are first scaled by one factor
        drawn log-uniformly from [1 / rope_rescale, rope_rescale] (global RNG), as DINOv3 trains.
        """
        device = self.patch_embed.patch_embeddings.weight.device
        coords = patch_coordinates(grid, device)
        if self.training and self.rope_rescale > 1:
            r = math.log(self.rope_rescale)
            coords = coords * torch.empty(1, device=device).uniform_(-r, r).exp()
        cos, sin = rope_cos_sin(coords, self.head_dim, self.rope_theta)
        return {"cos": cos, "sin": sin}

    def block_inputs_at(self, coords: Tensor) -> dict[str, Tensor]:
        """RoPE tables of per-image token coordinates (B, M, 2) in [-1, 1] (merged tokens: the
        size-weighted mean patch centre): {"cos", "sin"}, each (B, 1, M, head_dim), fp32."""
        b, m, _ = coords.shape
        cos, sin = rope_cos_sin(coords.reshape(b * m, 2), self.head_dim, self.rope_theta)
        return {"cos": cos.reshape(b, 1, m, -1), "sin": sin.reshape(b, 1, m, -1)}  # (B, 1, M, hd)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> tokens (B, 1 + R + N, D) and the token grid (H/p, W/p)."""
        return self.patch_embed(x)
